"""What a study found, read from its files: per checkpoint (overfitting, faithfulness, drift,
memorization, calibration), per cell (data map, when attributions stabilise) and across the
models of a dataset (agreement of their attributions). Every number is computed here from the
analysis files (study/analysis.py) and the runs' metrics.jsonl, nothing else.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..explain import report as explain_report
from ..explain.cli import checkpoint_order
from ..explain.drift import rank_agreement, top_k_overlap
from ..explain.report import explained_from
from ..explain.runner import Column, Example
from ..io import read_json
from ..train.metrics import read_metrics
from . import memorization as mem
from .analysis import columns_of

STABLE = 0.8  # attributions are stable from the first iter-N whose Spearman rho with last stays >= it
TOP_K = 5


@dataclass
class CellAnalysis:
    cell: str
    dataset: str
    results: dict[str, dict]  # checkpoint name -> its analysis file, in training order
    probe: list[Example]

    def distinct(self) -> list[dict]:
        """One result per step (best or last saved at an iter-N's step hold its weights), by step."""
        by_step = {}
        for r in self.results.values():
            by_step.setdefault(r["step"], r)
        return [by_step[s] for s in sorted(by_step)]

    def columns(self) -> list[Column]:
        return columns_of(self.cell, self.results)

    def scores(self, checkpoint: str) -> list[np.ndarray]:
        r = self.results[checkpoint]
        return [explained_from(p).scores[r["methods"][0]] for p in r["probe"]]


def read_analysis(folder: Path, cell: str, dataset: str, probe: list[Example]) -> CellAnalysis | None:
    """A cell's complete analysis (its last checkpoint's included), or None: an analysis stopped
    half-way is not compared (its drift would be measured against another checkpoint than last)."""
    files = {p.stem: p for p in folder.glob("*.json")} if folder.is_dir() else {}
    files = {n: p for n, p in files.items() if n in ("best", "last") or n.startswith("iter-")}
    if "last" not in files:
        return None
    results = {n: read_json(p, ConfigError, f"remove {p} and run the study again") for n, p in files.items()}
    order = sorted(results, key=lambda n: checkpoint_order((n, None, results[n]["step"])))
    return CellAnalysis(cell, dataset, {n: results[n] for n in order}, probe)


# ---- per checkpoint ---------------------------------------------------------------------------


def membership(result: dict) -> dict:
    """Membership AUC, expected calibration error (held out), mean losses of one checkpoint."""
    losses = {}
    for name in ("members", "heldout"):
        proba, labels = np.array(result[name]["proba"]), np.array(result[name]["labels"])
        losses[name] = mem.gold_loss(proba, labels)
    held = result["heldout"]
    return {
        "membership_auc": mem.membership_auc(losses["members"], losses["heldout"]),
        "ece": mem.expected_calibration_error(np.array(held["proba"]), np.array(held["labels"])),
        "member_loss": float(losses["members"].mean()),
        "heldout_loss": float(losses["heldout"].mean()),
    }


def faithfulness(result: dict, method: str) -> dict:
    """Mean comprehensiveness and sufficiency of ``method`` on the probe, and of random rankings."""
    f = [p["faithfulness"] for p in result["probe"]]
    mean = lambda m, k: float(np.mean([x[m][k] for x in f]))  # noqa: E731
    return {
        "probe_accuracy": float(np.mean([p["prediction"] == p["label"] for p in result["probe"]])),
        "comprehensiveness": mean(method, "comprehensiveness"),
        "sufficiency": mean(method, "sufficiency"),
        "random_comprehensiveness": mean("random", "comprehensiveness"),
        "random_sufficiency": mean("random", "sufficiency"),
    }


def losses_at(run_dir: Path, step: int) -> dict:
    """Validation and train loss of the evaluation at ``step`` (None when there was none)."""
    at = {r["split"]: r["loss"] for r in read_metrics(run_dir) if r.get("step") == step and "loss" in r}
    val, train = at.get("validation"), at.get("train")
    gap = val - train if val is not None and train is not None else None
    return {"val_loss": val, "train_loss": train, "gap": gap}


def checkpoint_rows(a: CellAnalysis, run_dir: Path, flags: list[np.ndarray] | None) -> list[dict]:
    """A row per checkpoint and method, in training order."""
    rows, columns = [], a.columns()
    for method in first_result(a)["methods"]:
        drift = explain_report.drift_table(a.probe, columns, method, flags)[1] if len(columns) > 1 else []
        drift = {d["checkpoint"]: d for d in drift}
        for name, r in a.results.items():
            where = {"cell": a.cell, "dataset": a.dataset, "checkpoint": name, "step": r["step"]}
            rows.append(
                where
                | {"method": method}
                | losses_at(run_dir, r["step"])
                | faithfulness(r, method)
                | drift_of(drift.get(name, {}))
                | membership(r)
            )
    return rows


def drift_of(d: dict) -> dict:
    """A checkpoint's drift row (explain's drift_table) as report fields: Spearman's rho."""
    spearman = lambda key: (d.get(key) or {}).get("spearman")  # noqa: E731
    share = (d.get("non_predictive") or {}).get("mass_share")
    return {
        "drift_previous": spearman("vs_previous"),
        "drift_last": spearman("vs_last"),
        "non_predictive_share": share,
    }


# ---- per cell ---------------------------------------------------------------------------------


def data_map(a: CellAnalysis) -> tuple[dict, dict]:
    """The data map of the cell's training examples over its trained checkpoints (one per step,
    step 0 left out): its report row, and the per-example points (memorization.data_map)."""
    results = [r for r in a.distinct() if r["step"] > 0] or a.distinct()
    labels = np.array(results[0]["members"]["labels"])
    proba = np.stack([np.array(r["members"]["proba"]) for r in results])  # (K, N, C)
    gold = proba[:, np.arange(len(labels)), labels]
    found = mem.data_map(gold, proba.argmax(-1) == labels)
    row = {
        "cell": a.cell,
        "dataset": a.dataset,
        "examples": len(labels),
        "checkpoints": len(results),
        **found["share"],
        "mean_confidence": float(found["confidence"].mean()),
        "mean_variability": float(found["variability"].mean()),
    }
    return row, found


def stability(a: CellAnalysis, rows: list[dict], run_dir: Path) -> dict:
    """The first iter-N step from which the attributions stay within STABLE of last's, next to the
    step of the lowest validation loss. An iter-N saved with last (rho 1 by definition) does not
    count: a run that never settles has no stable step."""
    end = a.results["last"]["step"]
    iters = [
        r
        for r in rows
        if r["checkpoint"].startswith("iter-") and r["method"] == rows[0]["method"] and r["step"] != end
    ]
    stable = None
    for r in reversed(sorted(iters, key=lambda r: r["step"])):
        if r["drift_last"] is None or r["drift_last"] < STABLE:
            break
        stable = r["step"]
    val = [r for r in read_metrics(run_dir) if r["split"] == "validation"]
    best = min(val, key=lambda r: r["loss"])["step"] if val else None
    return {"cell": a.cell, "dataset": a.dataset, "stable_step": stable, "best_val_step": best}


# ---- across models ----------------------------------------------------------------------------


def agreement(analyses: list[CellAnalysis]) -> list[dict]:
    """Per pair of models of a dataset, at their best checkpoints: rank correlation and top-k
    overlap of their word attributions on the probe texts (TF-IDF: its exact contributions)."""
    rows = []
    for i, a in enumerate(analyses):
        for b in analyses[i + 1 :]:
            if a.dataset != b.dataset:
                continue
            sa, sb = a.scores(best_of(a)), b.scores(best_of(b))
            ranks, top = rank_agreement(sa, sb), top_k_overlap(sa, sb, TOP_K)
            rows.append(
                {"dataset": a.dataset, "a": a.cell, "b": b.cell}
                | {"method": f"{first_method(a)} / {first_method(b)}"}
                | {"spearman": ranks["spearman"], "kendall": ranks["kendall"], "texts": ranks["n"]}
                | {"top_k_overlap": top["top_k_overlap"], "k": TOP_K, "top_k_texts": top["n"]}
            )
    return rows


def best_of(a: CellAnalysis) -> str:
    """The checkpoint scored on test: best/ (a run without validation has only last/)."""
    return "best" if "best" in a.results else "last"


def first_result(a: CellAnalysis) -> dict:
    return next(iter(a.results.values()))


def first_method(a: CellAnalysis) -> str:
    return first_result(a)["methods"][0]


def non_predictive_flags(tfidf: CellAnalysis | None) -> list[np.ndarray] | None:
    """Per probe text, the words the dataset's TF-IDF cell finds non-predictive."""
    if tfidf is None:
        return None
    probe = tfidf.results[best_of(tfidf)]["probe"]
    return [np.array(p["non_predictive"], dtype=bool) for p in probe]
