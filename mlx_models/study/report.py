"""A study's report: results/study/NAME/report.md, report.json and comparison.png.

Every number is read from a cell's run (metrics.jsonl, as train.py wrote it) or from the study's
status.json (how each cell's process ended, its wall time and peak RSS). The overfitting measure
is the gap: validation loss minus train loss at the same evaluation (the train loss is scored on
a fixed train subset as large as validation, in eval mode, so both are measured alike).
"""

import dataclasses
import json
import shlex
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text, read_json
from ..train.metrics import read_metrics
from . import figures, pretrain
from . import findings as f
from .analysis import read_probe
from .markdown import COLUMNS, markdown
from .page import write_index
from .plan import Cell, Plan


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
    run = f"runs/{cell.id}" if run_dir.is_dir() else None
    row = {"cell": cell.id, "model": cell.model, "dataset": cell.dataset, "run": run}
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
    """report.json, report.md, index.html and the figures, from the study's files."""
    status = read_state(study_dir / "status.json") or {}
    rows = [cell_summary(study_dir, cell, status.get(cell.id)) for cell in plan.cells]
    sections, analyses, points = analysis_sections(study_dir, plan)
    for row in rows:
        row |= analysis_status(study_dir, row["cell"], status.get(row["cell"]), row["cell"] in analyses)
    report = {"plan": plan.describe(), "cells": rows} | sections | pretraining(study_dir, plan, status)
    report["figures"] = write_figures(study_dir, plan, report, points)
    report = json.loads(json.dumps(report))  # plain JSON values: what every reader of report.json sees
    atomic_write_json(study_dir / "report.json", report)
    atomic_write_text(study_dir / "report.md", markdown(plan, report))
    write_index(study_dir, report)


def pretraining(study_dir: Path, plan: Plan, status: dict) -> dict:
    """report.json's "pretraining" (study/pretrain.py), when the study pretrains a model."""
    phases = []
    for stage in plan.stages:
        run_dir = study_dir / stage.run
        test = next((r for r in reversed(read_metrics(run_dir)) if r["split"] == "test"), None)
        outcome = status.get(stage.key)
        phases.append(pretrain.summary(run_dir, stage, status_of(run_dir, test, outcome), outcome))
    return {"pretraining": pretrain.report_rows(study_dir, phases)} if phases else {}


def analysis_status(study_dir: Path, cell: str, outcome: dict | None, found: bool) -> dict:
    """How a cell's analysis ended (status.json), and its attribution page when written."""
    ended = (outcome or {}).get("analysis") or {}
    page = study_dir / "analysis" / cell / "index.html"
    state = ended.get("status") or ("partial" if found else "not run")
    return {
        "analysis": "done" if state == "finished" else state,
        "analysis_reason": ended.get("reason"),
        "page": f"analysis/{cell}/index.html" if page.is_file() else None,
        "curves": f"runs/{cell}/curves.png" if (study_dir / "runs" / cell / "curves.png").is_file() else None,
    }


def analysis_sections(study_dir: Path, plan: Plan) -> tuple[dict, dict, dict]:
    """(report.json's checkpoints, data_maps, agreement and stability; the cells' analyses; the
    data maps' points) from the analysis files."""
    analyses = {}
    for cell in plan.cells:
        probe = study_dir / "probes" / f"{cell.dataset}.jsonl"
        found = probe.is_file() and f.read_analysis(
            study_dir / "analysis" / cell.id, cell.id, cell.dataset, read_probe(probe)
        )
        if found:
            analyses[cell.id] = found
    tfidf = {a.dataset: a for a in analyses.values() if "non_predictive" in f.first_result(a)["probe"][0]}
    sections, points = {"checkpoints": [], "data_maps": [], "stability": []}, {}
    for cell, a in analyses.items():
        run_dir = study_dir / "runs" / cell
        rows = f.checkpoint_rows(a, run_dir, f.non_predictive_flags(tfidf.get(a.dataset)))
        row, points[cell] = f.data_map(a)
        sections["checkpoints"] += rows
        sections["data_maps"].append(row | {"figure": f"figures/{cell}-datamap.png"})
        sections["stability"].append(f.stability(a, rows, run_dir) | {"threshold": f.STABLE})
    sections["agreement"] = f.agreement(list(analyses.values()))
    return sections, analyses, points


def write_figures(study_dir: Path, plan: Plan, report: dict, points: dict) -> dict:
    """figures/: per dataset the curves, drift and membership figures; a data map per cell. Also
    comparison.png (every dataset's curves in one). Returns report.json's "figures"."""
    out = {}
    figures.save_png(figures.comparison_figure(study_dir, plan), study_dir / "comparison.png")
    for dataset in dict.fromkeys(c.dataset for c in plan.cells):
        one = dataclasses.replace(plan, cells=[c for c in plan.cells if c.dataset == dataset])
        names = {k: f"figures/{dataset}-{k}.png" for k in ("curves", "drift", "membership")}
        figures.save_png(figures.comparison_figure(study_dir, one), study_dir / names["curves"])
        if any(r["dataset"] == dataset for r in report["checkpoints"]):
            figures.save_png(figures.drift_figure(report["checkpoints"], dataset), study_dir / names["drift"])
            membership = figures.membership_figure(report["checkpoints"], dataset)
            figures.save_png(membership, study_dir / names["membership"])
        else:
            names |= {"drift": None, "membership": None}
        out[dataset] = names
    for row in report["data_maps"]:
        figures.save_png(figures.data_map_figure(points[row["cell"]], row["cell"]), study_dir / row["figure"])
    return out
