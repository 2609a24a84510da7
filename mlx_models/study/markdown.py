"""report.md: the study's report as text, from report.json's dict (study/report.py)."""

import math

from . import pretrain
from .plan import Plan

COLUMNS = [  # (report.json key, report.md header, format)
    ("test_accuracy", "test acc", "{:.4f}"),
    ("test_f1", "test F1", "{:.4f}"),
    ("best_val_loss", "best val loss", "{:.4f}"),
    ("best_step", "best step", "{}"),
    ("last_val_loss", "last val loss", "{:.4f}"),
    ("gap_best", "gap at best", "{:+.4f}"),
    ("gap_last", "gap at last", "{:+.4f}"),
    ("tokens_per_s", "tokens/s", "{:.0f}"),
    ("peak_gb", "MLX peak GB", "{:.2f}"),
    ("max_rss_gb", "max RSS GB", "{:.2f}"),
    ("wall_s", "wall", "{:.0f} s"),
]
CHECKPOINT_COLUMNS = [
    ("cell", "cell", "{}"),
    ("checkpoint", "checkpoint", "{}"),
    ("method", "method", "{}"),
    ("step", "step", "{}"),
    ("val_loss", "val loss", "{:.3f}"),
    ("gap", "gap", "{:+.3f}"),
    ("probe_accuracy", "probe acc", "{:.3f}"),
    ("comprehensiveness", "comp. ↑", "{:.3f}"),
    ("random_comprehensiveness", "random comp.", "{:.3f}"),
    ("sufficiency", "suff. ↓", "{:.3f}"),
    ("random_sufficiency", "random suff.", "{:.3f}"),
    ("drift_previous", "ρ vs previous", "{:.3f}"),
    ("drift_last", "ρ vs last", "{:.3f}"),
    ("non_predictive_share", "non-predictive mass", "{:.3f}"),
    ("membership_auc", "membership AUC", "{:.3f}"),
    ("ece", "ECE", "{:.3f}"),
]
AGREEMENT_COLUMNS = [
    ("a", "model a", "{}"),
    ("b", "model b", "{}"),
    ("method", "methods", "{}"),
    ("spearman", "Spearman ρ", "{:.3f}"),
    ("kendall", "Kendall τ", "{:.3f}"),
    ("top_k_overlap", "top-5 overlap", "{:.3f}"),
    ("texts", "texts", "{}"),
]
STABILITY_COLUMNS = [
    ("cell", "cell", "{}"),
    ("stable_step", "attributions stable from step", "{}"),
    ("best_val_step", "lowest validation loss at step", "{}"),
]
DATA_MAP_COLUMNS = [
    ("cell", "cell", "{}"),
    ("examples", "examples", "{}"),
    ("checkpoints", "checkpoints", "{}"),
    ("easy", "easy", "{:.2f}"),
    ("ambiguous", "ambiguous", "{:.2f}"),
    ("hard", "hard", "{:.2f}"),
    ("mean_confidence", "mean confidence", "{:.3f}"),
    ("mean_variability", "mean variability", "{:.3f}"),
]
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
    "data_maps": "Dataset cartography over the cell's checkpoints, per training example: confidence "
    "(mean probability of the gold label), variability (its standard deviation); ambiguous: "
    "variability ≥ 0.2; else easy (confidence ≥ 0.5) or hard to learn. Shares of the examples. "
    "Step 0 is left out; TF-IDF has one fit, so no variability.",
}


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return spec.format(value)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    """A markdown table; numbers right-aligned."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |"]
    lines.append("|" + "".join("---|" if f == "{}" and k != "step" else "---:|" for k, _, f in columns))
    lines += ["| " + " | ".join(fmt(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
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
    columns = [("name", "model", "{}"), ("dataset", "dataset", "{}"), ("status", "status", "{}"), *COLUMNS]
    columns.append(("link", "run", "{}"))
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
    lines += ["## When attributions stabilise", "", *table(report["stability"], STABILITY_COLUMNS), ""]
    lines += ["## Data maps", "", NOTES["data_maps"], "", *table(report["data_maps"], DATA_MAP_COLUMNS), ""]
    lines += [f"![data map of {r['cell']}]({r['figure']})" for r in report["data_maps"]]
    return [*lines, ""]
