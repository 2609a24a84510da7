"""report.md: the study's report as text, from report.json's dict (study/report.py)."""

from . import columns as cols
from . import pretrain
from .findings import STABLE
from .plan import Plan

# report.md's tables, as report.json keys (headers and formats: columns.py)
COLUMNS = cols.columns(["test_accuracy", "test_f1", "best_val_loss", "best_step", "last_val_loss"])
COLUMNS += cols.columns(["gap_best", "gap_last", "tokens_per_s", "peak_gb", "max_rss_gb", "wall_s"])
CHECKPOINT_COLUMNS = cols.columns(["cell", "checkpoint", "method", "step", "val_loss", "gap"])
CHECKPOINT_COLUMNS += cols.columns(["probe_accuracy", "comprehensiveness", "random_comprehensiveness"])
CHECKPOINT_COLUMNS += cols.columns(["sufficiency", "random_sufficiency", "drift_previous", "drift_last"])
CHECKPOINT_COLUMNS += cols.columns(["non_predictive_share", "membership_auc", "ece"])
AGREEMENT_COLUMNS = cols.columns(["a", "b", "method", "spearman", "kendall", "top_k_overlap", "texts"])
STABILITY_COLUMNS = cols.columns(cols.STABILITY)
DATA_MAP_COLUMNS = cols.columns(cols.DATA_MAPS)
NOTES = {
    "cells": "*gap* = validation loss − train loss at the same evaluation (train loss on a fixed train "
    "subset as large as validation, scored like it): the overfitting measure. *best* = the evaluation "
    "with the lowest validation loss, the checkpoint scored on test. tokens/s: train.py's training "
    "speed in the cell's last session (evaluations included); MLX peak: the highest peak_gb in "
    "metrics.jsonl; max RSS: the cell process's peak resident memory; wall: the cell's train.py "
    "processes, as the study saw them end.",
    "checkpoints": "Every saved checkpoint on the dataset's probe texts (held out, the same for every "
    "model), explained towards the gold label with each method of the study (TF-IDF: its exact "
    "linear contributions; the figures show the first method). iter-0 is the starting point (no "
    "evaluation there). comp./suff.: ERASER AOPC over k = 1, 5, 10, 20, 50 % of the words, next "
    "to random rankings. ρ: Spearman correlation of the word attributions with the previous "
    "checkpoint's and with last's. Non-predictive mass: the share of |attribution| on words the "
    "dataset's TF-IDF model finds non-predictive. Membership AUC: loss-threshold membership "
    "inference, training examples against as many held-out ones (0.5 = chance). ECE: expected "
    "calibration error on the held-out examples (15 bins).",
    "agreement": "At each model's best checkpoint, on the same probe texts, over the words both see.",
    "stability": "The first saved step from which every later checkpoint's attributions keep Spearman "
    f"ρ ≥ {STABLE} with last's (the checkpoint saved with last does not count); –: none before the end, "
    "or a single fit (TF-IDF).",
    "data_maps": "Dataset cartography over the cell's checkpoints, per training example: confidence "
    "(mean probability of the gold label), variability (its standard deviation); ambiguous: "
    "variability ≥ 0.2; else easy (confidence ≥ 0.5) or hard to learn. Shares of the examples. "
    "Step 0 is left out; TF-IDF has one fit, so no variability.",
}


def table(rows: list[dict], columns: list[tuple[str, str, str | None]]) -> list[str]:
    """A markdown table; numbers right-aligned."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |"]
    lines.append("|" + "".join("---|" if f is None else "---:|" for k, _, f in columns))
    lines += ["| " + " | ".join(cols.show(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return lines


def markdown(plan: Plan, report: dict) -> str:
    lines = [
        f"# Study `{plan.name}`",
        "",
        f"`python train.py --study {plan.name}`: models {', '.join(plan.models)}; datasets "
        f"{', '.join(plan.datasets)}; profile `{plan.profile or 'none'}`. Each cell is one train.py run "
        "(commands below). Browse it all in [index.html](index.html).",
        "",
        *cells_section(plan, report["cells"]),
        *pretrain.markdown_section(report.get("pretraining", [])),
        *analysis_section(report),
        "## Cells",
        "",
    ]
    lines += [f"- `{r['cell']}`: `{r['command']}`" for r in report["cells"]]
    return "\n".join(lines) + "\n"


def cells_section(plan: Plan, rows: list[dict]) -> list[str]:
    names = {c.id: c.name + (" (pretrained by this study)" if c.pretrained else "") for c in plan.cells}
    columns = [("name", "model", None), *cols.columns(["dataset", "status"]), *COLUMNS, ("link", "run", None)]
    lines = table([r | {"name": names[r["cell"]], "link": run_link(r)} for r in rows], columns)
    lines += ["", NOTES["cells"], ""]
    failed = [r for r in rows if r["status"] == "failed" or r.get("analysis") == "failed"]
    if failed:
        lines += ["## Failed cells", ""]
        lines += [
            f"- `{r['cell']}`: {r['reason'] or 'analysis: ' + str(r['analysis_reason'])}" for r in failed
        ]
        lines.append("")
    return [*lines, "![train and validation curves per dataset](comparison.png)", ""]


def run_link(row: dict) -> str | None:
    """The run directory and its curves, when they exist."""
    if not row["run"]:
        return None
    curves = f" ([curves]({row['curves']}))" if row.get("curves") else ""
    return f"[{row['run']}]({row['run']}/){curves}"


def analysis_section(report: dict) -> list[str]:
    if not report.get("checkpoints"):
        return []
    lines = []
    for dataset, figs in report["figures"].items():
        rows = [r for r in report["checkpoints"] if r["dataset"] == dataset]
        if not rows:
            continue
        lines += [
            f"## {dataset}: every checkpoint",
            "",
            NOTES["checkpoints"],
            "",
            *table(rows, CHECKPOINT_COLUMNS),
        ]
        lines += [
            "",
            f"![drift and faithfulness]({figs['drift']})",
            f"![membership]({figs['membership']})",
            "",
        ]
        agree = [r for r in report["agreement"] if r["dataset"] == dataset]
        lines += [
            f"### {dataset}: agreement across models",
            "",
            NOTES["agreement"],
            "",
            *table(agree, AGREEMENT_COLUMNS),
            "",
        ]
    lines += ["## When attributions stabilise", "", NOTES["stability"], ""]
    lines += [*table(report["stability"], STABILITY_COLUMNS), ""]
    lines += ["## Data maps", "", NOTES["data_maps"], "", *table(report["data_maps"], DATA_MAP_COLUMNS), ""]
    lines += [f"![data map of {r['cell']}]({r['figure']})" for r in report["data_maps"]]
    return [*lines, ""]
