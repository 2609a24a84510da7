"""A study's report: results/study/NAME/report.md, report.json and comparison.png.

Every number is read from a cell's run (metrics.jsonl, as train.py wrote it) or from the study's
status.json (how each cell's process ended, its wall time and peak RSS). The overfitting measure
is the gap: validation loss minus train loss at the same evaluation (the train loss is scored on
a fixed train subset as large as validation, in eval mode, so both are measured alike).
"""

import io
import math
import shlex
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from ..train.metrics import read_metrics
from . import pretrain
from .plan import Cell, Plan

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


def read_state(path: Path) -> dict | None:
    """plan.json or status.json of a study; None before the study wrote it."""
    return (
        read_json(path, ConfigError, f"remove {path.parent} and run the study again")
        if path.exists()
        else None
    )


def cell_summary(study_dir: Path, cell: Cell, outcome: dict | None) -> dict:
    """One row of the report: the cell's numbers from its metrics.jsonl, and how it ended."""
    run_dir = study_dir / "runs" / cell.id
    records = read_metrics(run_dir)
    test = next((r for r in reversed(records) if r["split"] == "test"), None)
    val = [r for r in records if r["split"] == "validation"]
    train = {r["step"]: r for r in records if r["split"] == "train"}
    row = {"cell": cell.id, "model": cell.model, "dataset": cell.dataset, "run": f"runs/{cell.id}"}
    row |= {"pretrained_by_study": cell.pretrained}  # the stage (pretrain/<id>) it finetunes, if any
    row |= {"status": status_of(run_dir, test, outcome), "reason": (outcome or {}).get("reason")}
    row |= {"command": shlex.join(["python", "train.py", *cell.train_args(run_dir)])} | dict.fromkeys(
        k for k, _, _ in COLUMNS
    )
    if test:
        row |= {"test_accuracy": test.get("accuracy"), "test_f1": test.get("f1"), "test_loss": test["loss"]}
    if val:
        best = min(val, key=lambda r: r["loss"])  # the first minimum: the trainer's best/ checkpoint
        row |= {"best_val_loss": best["loss"], "best_step": best["step"], "last_val_loss": val[-1]["loss"]}
        row |= {"gap_best": gap(best, train), "gap_last": gap(val[-1], train)}
        row |= {
            "accuracy_gap_best": gap(best, train, "accuracy"),
            "accuracy_gap_last": gap(val[-1], train, "accuracy"),
        }
    speeds = [r["tokens_per_s"] for r in train.values() if "tokens_per_s" in r]
    peaks = [r["peak_gb"] for r in records if "peak_gb" in r]
    row |= {"tokens_per_s": speeds[-1] if speeds else None, "peak_gb": max(peaks) if peaks else None}
    if outcome:
        row |= {k: outcome.get(k) for k in ("wall_s", "max_rss_gb", "attempts")}
    return row


def gap(val: dict, train: dict[int, dict], key: str = "loss") -> float | None:
    """Validation minus train loss (train minus validation accuracy) at val's evaluation."""
    other = train.get(val["step"])
    if other is None or key not in other or key not in val:
        return None
    return val[key] - other[key] if key == "loss" else other[key] - val[key]


def status_of(run_dir: Path, test: dict | None, outcome: dict | None) -> str:
    if test is not None:
        return "finished"
    if outcome and outcome.get("status") in ("failed", "interrupted"):
        return outcome["status"]
    return "interrupted" if run_dir.exists() else "not run"


def write_report(study_dir: Path, plan: Plan) -> None:
    status = read_state(study_dir / "status.json") or {}
    rows = [cell_summary(study_dir, cell, status.get(cell.id)) for cell in plan.cells]
    phases = [stage_summary(study_dir, stage, status.get(stage.key)) for stage in plan.stages]
    stages = pretrain.report_rows(study_dir, phases)
    report = {"plan": plan.describe(), "cells": rows} | ({"pretraining": stages} if stages else {})
    atomic_write_json(study_dir / "report.json", report)
    atomic_write_text(study_dir / "report.md", markdown(plan, rows, stages))
    buf = io.BytesIO()
    comparison_figure(study_dir, plan).savefig(buf, format="png", dpi=90)
    atomic_write_bytes(study_dir / "comparison.png", buf.getvalue())


def stage_summary(study_dir: Path, stage: Cell, outcome: dict | None) -> dict:
    """A pretraining stage's row (pretrain.summary), with its status as a cell's."""
    run_dir = study_dir / stage.run
    test = next((r for r in reversed(read_metrics(run_dir)) if r["split"] == "test"), None)
    return pretrain.summary(run_dir, stage, status_of(run_dir, test, outcome), outcome)


def markdown(plan: Plan, rows: list[dict], stages: list[dict] = ()) -> str:
    cells = {c.id: c for c in plan.cells}
    lines = [
        f"# Study `{plan.name}`",
        "",
        f"`python train.py --study {plan.name}`: models {', '.join(plan.models)}; datasets "
        f"{', '.join(plan.datasets)}; profile `{plan.profile or 'none'}`. Each cell is one train.py run "
        "(commands below).",
        "",
        "| model | dataset | status | " + " | ".join(h for _, h, _ in COLUMNS) + " | run |",
        "|---|---|---|" + "---:|" * len(COLUMNS) + "---|",
    ]
    for row in rows:
        values = [_fmt(row[key], fmt) for key, _, fmt in COLUMNS]
        link = f"[{row['run']}]({row['run']}/) ([curves]({row['run']}/curves.png))"
        name = cells[row["cell"]].name + (" (pretrained by this study)" if row["pretrained_by_study"] else "")
        first = [name, row["dataset"], row["status"]]
        lines.append("| " + " | ".join([*first, *values, link]) + " |")
    lines += [
        "",
        "*gap* = validation loss − train loss at the same evaluation (train loss on a fixed train "
        "subset as large as validation, scored like it): the overfitting measure. *best* = the "
        "evaluation with the lowest validation loss, the checkpoint scored on test. tokens/s: "
        "train.py's training speed in the cell's last session (evaluations included); MLX peak: "
        "the highest peak_gb in metrics.jsonl; max RSS: the cell process's peak resident memory; "
        "wall: the cell's train.py processes, as the study saw them end.",
    ]
    lines += pretrain.markdown_section(stages)
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed cells", ""] + [f"- `{r['cell']}`: {r['reason']}" for r in failed]
    lines += ["", "![train and validation curves per dataset](comparison.png)", "", "## Cells", ""]
    lines += [f"- `{r['cell']}`: `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt.format(value)


def comparison_figure(study_dir: Path, plan: Plan):
    """Per dataset, loss and accuracy against epoch: every model's train (dashed, open markers) and
    validation (solid) curves on shared axes; one legend for the figure."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or GUI state
    from matplotlib.lines import Line2D

    datasets = list(dict.fromkeys(c.dataset for c in plan.cells))
    colors = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(c.name for c in plan.cells))}
    fig = Figure(figsize=(12, 3.6 * len(datasets) + 0.6), layout="constrained")
    for row, dataset in zip(fig.subplots(len(datasets), 2, squeeze=False), datasets, strict=True):
        for cell in (c for c in plan.cells if c.dataset == dataset):
            records = read_metrics(study_dir / "runs" / cell.id)
            for ax, key in zip(row, ("loss", "accuracy"), strict=True):
                for split, style, face in (("train", "--", "none"), ("validation", "-", colors[cell.name])):
                    points = [(r["epoch"], r[key]) for r in records if r["split"] == split and key in r]
                    if points:
                        x, y = zip(*points, strict=True)
                        ax.plot(x, y, style, marker="o", color=colors[cell.name], markerfacecolor=face)
        for ax, key in zip(row, ("loss", "accuracy"), strict=True):
            ax.set(title=f"{dataset}: {key}", xlabel="epoch", ylabel=key)
            ax.grid(alpha=0.3)
            if not ax.has_data():
                ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)
    handles = [Line2D([], [], color=color, marker="o", label=name) for name, color in colors.items()]
    handles += [
        Line2D(
            [], [], color="gray", ls="--", marker="o", markerfacecolor="none", label="train (fixed subset)"
        ),
        Line2D([], [], color="gray", ls="-", marker="o", label="validation"),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle(f"study {plan.name}: train vs validation, every model on shared axes per dataset")
    return fig
