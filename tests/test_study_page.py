"""The study's index.html (mlx_models/study/page.py) opened in headless Chromium (tests/browser.py):
a synthetic report.json with every section, nulls, a failed analysis and an HTML-hostile cell id,
with real PNGs and cell pages on disk. The page loads clean, every image renders, every link
resolves, every number it shows is report.json's; and the checks catch a page that is wrong."""

import io
import json
import shutil
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from browser import assert_page_matches, open_page
from mlx_models.study.page import INDEX_FILE, index_html, write_index

HOSTILE = '<b>&"x'  # a cell id that would inject an element if a string went unescaped
CELL_PAGE = "<!DOCTYPE html><html><head><title>attributions</title></head><body><p>{}</p></body></html>"


def _cell(cell: str, dataset: str, **values) -> dict:
    row = {"cell": cell, "model": cell.rsplit("-", 1)[0], "dataset": dataset, "run": f"runs/{cell}"}
    row |= {"command": f"python train.py --out runs/{cell}", "status": "finished", "reason": None}
    row |= {"curves": f"runs/{cell}/curves.png", "analysis": "done", "analysis_reason": None}
    return row | {"page": f"analysis/{cell}/index.html"} | values


def _checkpoint(cell: str, dataset: str, step: int, **values) -> dict:
    row = {"cell": cell, "dataset": dataset, "checkpoint": f"iter-{step}", "step": step}
    row |= {"val_loss": 0.6931471805599453 - step / 1e4, "train_loss": 0.5 - step / 1e3, "gap": 0.19314718}
    row |= {"probe_accuracy": 0.8125, "comprehensiveness": 0.31415926, "sufficiency": -0.0271828}
    row |= {"random_comprehensiveness": 0.05, "random_sufficiency": 0.2, "drift_previous": 0.123456789}
    row |= {"drift_last": 0.0, "non_predictive_share": 0.4, "membership_auc": 0.5123, "ece": 0.0456}
    return row | {"member_loss": 0.41, "heldout_loss": 0.69} | values


def synthetic_report() -> dict:
    metrics = {"test_accuracy": 0.8765432, "test_f1": 0.87, "test_loss": 0.3312, "best_val_loss": 0.29876}
    metrics |= {"best_step": 120, "last_val_loss": 0.3456, "gap_best": 0.0123, "gap_last": -0.0456}
    metrics |= {"accuracy_gap_best": 0.01, "accuracy_gap_last": 0.05, "tokens_per_s": 1234.567}
    metrics |= {"peak_gb": 1.2345, "max_rss_gb": 2.5, "wall_s": 61.7, "attempts": 1}
    failed = dict.fromkeys(metrics) | {"status": "failed", "reason": "exit 2: <i>out of memory</i>"}
    failed |= {"wall_s": 3.2, "attempts": 2, "curves": None, "page": None, "analysis": "failed"}
    failed["analysis_reason"] = 'no checkpoint to analyse: runs/<b>&"x has no iter-*/'
    cells = [
        _cell("minilm-l6-imdb", "imdb", **metrics),
        _cell(HOSTILE, "sst2", **failed),
        _cell("tfidf-imdb", "imdb", **(metrics | {"test_f1": None, "analysis": "not run", "page": None})),
    ]
    not_run = dict.fromkeys(metrics) | {"status": "not run", "analysis": "not run", "page": None}
    cells.append(_cell("tfidf-sst2", "sst2", **not_run))  # no run directory: no link to one
    cells[2]["epochs_done"] = 3  # a number no column names: the page adds a column for it
    pretraining = {"model": "minilm-l6", "dataset": "imdb", "run": "pretrain/minilm-l6-imdb"}
    pretraining |= {"parameters": 22_713_216, "tokens": 1_048_576, "max_length": 128, "status": "finished"}
    pretraining |= {"mlm_val_loss": 4.321, "description": "MLM from scratch <b>on</b> 200 reviews & more"}
    maps = [
        {"cell": "minilm-l6-imdb", "dataset": "imdb", "examples": 200, "checkpoints": 5, "easy": 120},
        {"cell": HOSTILE, "dataset": "sst2", "examples": 64, "checkpoints": 3, "easy": None},
    ]
    for row in maps:
        row |= {"ambiguous": 50, "hard": 30, "mean_confidence": 0.7, "mean_variability": 0.1}
        row["figure"] = f"figures/{row['cell']}-datamap.png"
    agreement = {"dataset": "imdb", "a": "occlusion", "b": "integrated_gradients", "method": "words"}
    agreement |= {"spearman": 0.61, "kendall": 0.45, "top_k_overlap": 0.8, "k": 5, "texts": 12}
    return {
        "plan": {"study": "demo", "models": ["minilm-l6", "tfidf"], "datasets": ["imdb", "sst2"]}
        | {"profile": None, "cells": {c["cell"]: ["--model", c["model"]] for c in cells}},
        "cells": cells,
        "pretraining": [pretraining],
        "checkpoints": [
            _checkpoint("minilm-l6-imdb", "imdb", 40),
            _checkpoint("minilm-l6-imdb", "imdb", 120, drift_previous=None, membership_auc=1e-05),
            _checkpoint(HOSTILE, "sst2", 10, probe_accuracy=None, val_loss=None, gap=None),
        ],
        "data_maps": maps,
        "agreement": [agreement, agreement | {"method": "tokens", "spearman": None, "k": 10}],
        "stability": [
            {"cell": "minilm-l6-imdb", "dataset": "imdb", "stable_step": 80, "best_val_step": 120}
            | {"threshold": 0.9},
            {
                "cell": HOSTILE,
                "dataset": "sst2",
                "stable_step": None,
                "best_val_step": None,
                "threshold": 0.9,
            },
        ],
        "figures": {
            "imdb": {k: f"figures/imdb-{k}.png" for k in ("curves", "drift", "membership")},
            "sst2": {"curves": "figures/sst2-curves.png", "drift": None},
        },
    }


def _png() -> bytes:
    fig = Figure(figsize=(2, 1.5))
    fig.subplots().plot([0, 1, 2], [1, 0.5, 0.4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def write_study(study, report: dict) -> None:
    """Every file the report names: the PNGs, run directories and the cells' attribution pages."""
    png = _png()
    images = [f for d in report["figures"].values() for f in d.values() if f]
    ran = [r for r in report["cells"] if r["status"] != "not run"]
    images += [r["figure"] for r in report["data_maps"]] + [r["curves"] for r in ran if r["curves"]]
    for name in [*images, "comparison.png"]:
        (study / name).parent.mkdir(parents=True, exist_ok=True)
        (study / name).write_bytes(png)
    for row in ran + report["pretraining"]:
        (study / row["run"]).mkdir(parents=True, exist_ok=True)
    for row in report["cells"]:
        if row["page"]:
            (study / row["page"]).parent.mkdir(parents=True, exist_ok=True)
            (study / row["page"]).write_text(CELL_PAGE.format(row["cell"]))
    (study / "report.json").write_text(json.dumps(report, indent=2))
    (study / "report.md").write_text("# Study `demo`\n")
    write_index(study, report)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    report = synthetic_report()
    study = tmp_path_factory.mktemp("study") / "demo"
    study.mkdir()
    write_study(study, report)
    return study, report


def test_page_matches_report(study):
    study, report = study
    check = assert_page_matches(study / INDEX_FILE, json.loads((study / "report.json").read_text()))
    # 3 + 1 dataset figures, 2 data maps, comparison.png; all rendered (else a problem above)
    assert len(check.images) == 7
    keys = {key: text for key, _, text in check.values}
    assert keys["cells.0.test_accuracy"] == "0.8765" and keys["cells.0.gap_last"] == "-0.0456"
    assert keys["cells.2.test_f1"] == "–" and keys["cells.2.epochs_done"] == "3"
    assert keys["pretraining.0.parameters"] == "22,713,216"
    assert keys["checkpoints.1.membership_auc"] == "0.000" and keys["checkpoints.2.val_loss"] == "–"
    # the hostile id and reasons are shown as text; nothing they hold became an element
    assert HOSTILE in check.text and "exit 2: <i>out of memory</i>" in check.text
    assert report["cells"][1]["analysis_reason"] in check.text
    assert "b" not in check.tags and "i" not in check.tags and "script" not in check.tags
    targets = {link.path.relative_to(study).as_posix() for link in check.links if link.path}
    assert {
        f"runs/{HOSTILE}",
        f"figures/{HOSTILE}-datamap.png",
        "analysis/minilm-l6-imdb/index.html",
    } <= targets
    assert [link.href for link in check.links if link.href.startswith("#")] == [
        "#pretraining",
        "#cells",
        "#dataset-0",
        "#dataset-1",
    ]  # each resolves to an element of the page (else a problem above)


def test_sparse_report(tmp_path):
    """Missing sections and keys, nulls everywhere: the page still loads clean and shows "–"."""
    report = {
        "plan": {"study": "sparse"},
        "cells": [{"cell": "a-b", "status": "not run", "test_accuracy": None}],
    }
    for name in ("report.json", "report.md", "comparison.png"):  # what a study writes beside it
        (tmp_path / name).write_bytes(_png())
    write_index(tmp_path, report)
    check = assert_page_matches(tmp_path / INDEX_FILE, report)
    assert ("cells.0.test_accuracy", "None", "–") in check.values
    assert [src for src, _ in check.images] == ["comparison.png"] and "None" not in check.text
    assert index_html({}).count("<table>") == 0  # nothing at all: headings and "–" only


def test_checks_catch_a_broken_page(study, tmp_path):
    """The browser checks can fail: a missing image, a dead link, a linked page with a script
    error, a value that differs from report.json and a number the page does not show."""
    study, report = study
    broken = tmp_path / "demo"
    shutil.copytree(study, broken)
    (broken / "figures" / "imdb-drift.png").unlink()
    shutil.rmtree(broken / "runs" / HOSTILE)
    (broken / "analysis" / "minilm-l6-imdb" / "index.html").write_text(
        "<html><body><script>undefined_function()</script></body></html>"
    )
    problems = "\n".join(open_page(broken / INDEX_FILE).problems)
    assert "image does not render: figures/imdb-drift.png" in problems
    assert "link to nothing: runs/%3Cb%3E%26%22x/" in problems
    assert "linked page analysis/minilm-l6-imdb/index.html: page error" in problems
    assert "console error: Failed to load resource" in problems

    changed = json.loads(json.dumps(report))
    changed["checkpoints"][0]["val_loss"] += 1e-12  # the exact value, not the rounded text, is compared
    with pytest.raises(AssertionError, match="checkpoints.0.val_loss"):
        assert_page_matches(study / INDEX_FILE, changed)
    changed = json.loads(json.dumps(report))
    changed["stability"][0]["new_number"] = 7
    with pytest.raises(AssertionError, match=r"does not show: \['stability.0.new_number'\]"):
        assert_page_matches(study / INDEX_FILE, changed)


def test_console_errors_and_dead_fragments_are_caught(tmp_path):
    page = tmp_path / "p.html"
    script = "<script>console.warn('careful'); console.error('bad')</script>"
    links = '<p id="here"><a href="#here">a</a> <a href="#nowhere">b</a></p>'
    page.write_text(f"<html><body>{links}{script}</body></html>")
    assert open_page(page).problems == [
        "console warning: careful",
        "console error: bad",
        "link to nothing: #nowhere (None)",
    ]


def test_committed_embedded_study_page_is_whole():
    """docs/study/ (the embedded study as the README quotes it): its index.html loads clean, every
    image renders, every link resolves (each cell's attribution page loads clean too) and every
    number it shows is its report.json's."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "study"
    report = json.loads((docs / "report.json").read_text())
    check = assert_page_matches(docs / INDEX_FILE, report)
    pages = [link.path for link in check.links if link.path and link.path.name == INDEX_FILE]
    assert len(pages) == len(report["cells"]) == 4
    assert len(check.values) > 300 and sum(width > 0 for _, width in check.images) == 8
