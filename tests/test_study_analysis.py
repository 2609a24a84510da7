"""The study's analysis of every checkpoint: a tiny BERT memorising random training labels and the
TF-IDF baseline, one dataset. Every number of report.json is recomputed here from the cells' own
files by other means (scipy's Mann-Whitney U for the membership AUC, a histogram for the ECE,
scipy's Spearman rho for drift and agreement); the membership AUC is chance at step 0 and high
once the model memorised; a killed analysis resumes without redoing a checkpoint; a failed one is
recorded and the report still written."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from browser import assert_page_matches
from mlx_models.cli import run_cli
from mlx_models.registry import SHIPPED_CONFIG
from mlx_models.study import cli as study
from mlx_models.study import memorization as mem
from mlx_models.train.metrics import read_metrics
from sentiment import sentiment_splits, write_splits

# 32 training examples with random labels, memorised in 80 steps (as test_train's overfit test).
TRAIN = {"max_samples": 32, "batch_size": 4, "epochs": 10, "learning_rate": 2e-3, "max_length": 32}
TRAIN |= {"save_points": 4}
ANALYSIS = {"probe": 8, "members": 32, "steps": 4}


@pytest.fixture(scope="module")
def memo(tiny, tmp_path_factory):
    """The study `memo` run once: (exit code, stderr, project directory, study directory)."""
    root = tmp_path_factory.mktemp("memo")
    model = shutil.copytree(tiny("bert", "classify", num_labels=2)[1], root / "tiny-bert")
    splits = sentiment_splits()
    labels = np.random.default_rng(1).permutation([r["label"] for r in splits["train"]])
    splits["train"] = [
        {"text": r["text"], "label": int(y)} for r, y in zip(splits["train"], labels, strict=True)
    ]
    data = write_splits(root / "noisy", splits)
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    entry = {"models": [str(model), "tfidf"], "datasets": [str(data)], "profile": "overfit"}
    config["model_selection"]["studies"] = {"memo": entry | {"overrides": TRAIN, "analysis": ANALYSIS}}
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    log = root / "memo.log"
    with pytest.MonkeyPatch.context() as mp, log.open("w") as f:
        mp.chdir(root)
        mp.setattr(sys, "stderr", f)
        code = run_cli(lambda a: study.main(a, config_path=root / "config.yaml"), ["memo"])
    return code, log.read_text(), root, root / "results" / "study" / "memo"


def analysis_file(study_dir: Path, cell: str, checkpoint: str) -> dict:
    return json.loads((study_dir / "analysis" / cell / f"{checkpoint}.json").read_text())


def losses(result: dict, name: str) -> np.ndarray:
    proba, labels = np.array(result[name]["proba"]), result[name]["labels"]
    return np.array([-np.log(p[y]) for p, y in zip(proba, labels, strict=True)])


def auc(member: np.ndarray, heldout: np.ndarray) -> float:
    """P(a member's loss < a held-out one's), ties half: Mann-Whitney U / (n m)."""
    u = stats.mannwhitneyu(-member, -heldout).statistic
    return u / (len(member) * len(heldout))


def ece(proba: np.ndarray, labels: list[int]) -> float:
    confidence, correct = proba.max(1), proba.argmax(1) == np.array(labels)
    edges = np.linspace(0, 1, 16)
    which = np.digitize(confidence, edges[1:-1], right=True)  # (0, 1/15] -> 0, ...
    return sum(
        (which == b).mean() * abs(correct[which == b].mean() - confidence[which == b].mean())
        for b in range(15)
        if (which == b).any()
    )


def word_scores(result: dict) -> list[np.ndarray]:
    m = result["methods"][0]
    return [np.array([np.nan if v is None else v for v in p["scores"][m]]) for p in result["probe"]]


def mean_rho(a: list[np.ndarray], b: list[np.ndarray]) -> float | None:
    rhos = []
    for x, y in zip(a, b, strict=True):
        both = ~(np.isnan(x) | np.isnan(y))
        if both.sum() >= 3 and np.ptp(x[both]) > 0 and np.ptp(y[both]) > 0:
            rhos.append(stats.spearmanr(x[both], y[both]).statistic)
    return float(np.mean(rhos)) if rhos else None


def close(a, b, tol=1e-9) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol)


def test_the_study_analyses_every_checkpoint(memo):
    code, err, _, study_dir = memo
    assert code == 0, err[-3000:]
    bert = sorted(
        p.name for p in (study_dir / "runs" / "tiny-bert-noisy").iterdir() if p.name.startswith("iter-")
    )
    assert bert == ["iter-0", "iter-20", "iter-40", "iter-60", "iter-80"]  # --save-points 4 over 80 steps
    for cell, names in (("tiny-bert-noisy", [*bert, "best", "last"]), ("tfidf-noisy", ["best", "last"])):
        assert sorted(p.stem for p in (study_dir / "analysis" / cell).glob("*.json")) == sorted(names)
        assert (study_dir / "analysis" / cell / "index.html").stat().st_size > 1000
    probe = (study_dir / "probes" / "noisy.jsonl").read_text().splitlines()
    assert len(probe) == 8 and all(json.loads(line)["text"] for line in probe)
    report = json.loads((study_dir / "report.json").read_text())
    assert {r["cell"]: r["analysis"] for r in report["cells"]} == {
        "tiny-bert-noisy": "done",
        "tfidf-noisy": "done",
    }
    for name in ("curves", "drift", "membership"):
        assert (study_dir / report["figures"]["noisy"][name]).stat().st_size > 10_000
    for row in report["data_maps"]:
        assert (study_dir / row["figure"]).stat().st_size > 10_000


def test_the_study_page_loads_in_a_browser_and_shows_report_json(memo):
    """index.html in headless Chromium: no console error, every image and link (the cells'
    attribution pages included) resolves, and every number shown is report.json's."""
    _, _, _, study_dir = memo
    report = json.loads((study_dir / "report.json").read_text())
    check = assert_page_matches(study_dir / "index.html", report)
    keys = {key for key, _, _ in check.values}
    assert {"checkpoints.0.membership_auc", "data_maps.0.mean_variability", "agreement.0.spearman"} <= keys
    assert any(link.href.endswith("analysis/tiny-bert-noisy/index.html") for link in check.links)


def test_membership_auc_is_chance_at_step_0_and_high_once_memorised(memo):
    _, _, _, study_dir = memo
    rows = {r["checkpoint"]: r for r in json.loads((study_dir / "report.json").read_text())["checkpoints"]}
    first = analysis_file(study_dir, "tiny-bert-noisy", "iter-0")
    assert abs(rows["iter-0"]["membership_auc"] - 0.5) < 0.2, rows["iter-0"]  # 32 vs 32: sd ~0.07
    aucs = [rows[f"iter-{s}"]["membership_auc"] for s in (0, 20, 40, 60, 80)]
    assert aucs == sorted(aucs) and aucs[-1] > 0.75 and aucs[-1] - aucs[0] > 0.25, aucs  # labels memorised
    assert rows["iter-80"]["member_loss"] < 0.3 < 0.6 < rows["iter-80"]["heldout_loss"]
    assert len(first["members"]["labels"]) == len(first["heldout"]["labels"]) == 32
    # The function on its own: the same losses on both sides give 0.5; separated ones 1.
    same = np.linspace(0.1, 2, 20)
    assert mem.membership_auc(same, same) == pytest.approx(0.5) and mem.membership_auc(same, same + 5) == 1.0


def test_every_number_in_report_json_is_recomputed_from_the_cells_files(memo):
    _, _, _, study_dir = memo
    report = json.loads((study_dir / "report.json").read_text())
    for row in report["checkpoints"]:
        check_checkpoint_row(study_dir, row)
    for row in report["data_maps"]:
        check_data_map(study_dir, row)
    (pair,) = report["agreement"]
    a, b = (analysis_file(study_dir, pair[k], "best") for k in ("a", "b"))
    assert close(pair["spearman"], mean_rho(word_scores(a), word_scores(b)))
    (stable,) = [r for r in report["stability"] if r["cell"] == "tiny-bert-noisy"]
    val = [r for r in read_metrics(study_dir / "runs" / "tiny-bert-noisy") if r["split"] == "validation"]
    assert stable["best_val_step"] == min(val, key=lambda r: r["loss"])["step"]
    rows = [
        r
        for r in report["checkpoints"]
        if r["cell"] == "tiny-bert-noisy" and r["checkpoint"].startswith("iter")
    ]
    later = [
        r["drift_last"] >= stable["threshold"] for r in rows if r["step"] >= (stable["stable_step"] or 1e9)
    ]
    assert all(later) and (stable["stable_step"] is None or len(later) < len(rows) or rows[0]["step"] == 0)


def check_checkpoint_row(study_dir: Path, row: dict) -> None:
    result = analysis_file(study_dir, row["cell"], row["checkpoint"])
    assert row["step"] == result["step"]
    member, heldout = losses(result, "members"), losses(result, "heldout")
    assert close(row["membership_auc"], auc(member, heldout)), row
    assert close(row["member_loss"], member.mean(), 1e-6) and close(row["heldout_loss"], heldout.mean(), 1e-6)
    assert close(row["ece"], ece(np.array(result["heldout"]["proba"]), result["heldout"]["labels"])), row
    records = result["probe"]
    m = row["method"]
    assert close(
        row["comprehensiveness"], np.mean([p["faithfulness"][m]["comprehensiveness"] for p in records])
    )
    assert close(
        row["random_sufficiency"], np.mean([p["faithfulness"]["random"]["sufficiency"] for p in records])
    )
    assert close(row["probe_accuracy"], np.mean([p["prediction"] == p["label"] for p in records]))
    at = {
        r["split"]: r["loss"]
        for r in read_metrics(study_dir / "runs" / row["cell"])
        if r.get("step") == row["step"]
    }
    assert row["val_loss"] == at.get("validation") and row["train_loss"] == at.get("train")
    if row["checkpoint"] != "last":
        last = analysis_file(study_dir, row["cell"], "last")
        assert close(row["drift_last"], mean_rho(word_scores(result), word_scores(last))), row


def check_data_map(study_dir: Path, row: dict) -> None:
    """Confidence and variability over the trained checkpoints (one per step, step 0 left out)."""
    folder = study_dir / "analysis" / row["cell"]
    results = {}
    for path in folder.glob("*.json"):
        r = json.loads(path.read_text())
        results.setdefault(r["step"], r)
    steps = [s for s in sorted(results) if s > 0]
    labels = results[steps[0]]["members"]["labels"]
    gold = np.array(
        [[p[y] for p, y in zip(results[s]["members"]["proba"], labels, strict=True)] for s in steps]
    )
    confidence, variability = gold.mean(0), gold.std(0)
    assert row["checkpoints"] == len(steps) and row["examples"] == len(labels)
    assert close(row["mean_confidence"], confidence.mean()) and close(
        row["mean_variability"], variability.mean()
    )
    ambiguous = variability >= 0.2
    assert close(row["ambiguous"], ambiguous.mean())
    assert close(row["easy"], (~ambiguous & (confidence >= 0.5)).mean())
    assert close(row["hard"], (~ambiguous & (confidence < 0.5)).mean())


def test_a_killed_analysis_resumes_without_redoing_a_checkpoint(memo, tmp_path):
    _, _, root, study_dir = memo
    out = tmp_path / "analysis"
    command = [sys.executable, "-m", "mlx_models.study.analysis", str(study_dir / "runs" / "tiny-bert-noisy")]
    command += [str(out), "--probe-file", str(study_dir / "probes" / "noisy.jsonl"), "--probe", "8"]
    command += ["--members", "32", "--steps", "4"]
    env = study.cell_environment(root / "config.yaml")
    proc = subprocess.Popen(command, env=env, cwd=root, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob("iter-*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert 2 <= len(kept) < 7, kept
    subprocess.run(command, env=env, cwd=root, check=True, capture_output=True)
    assert all((out / name).stat().st_mtime_ns == t for name, t in kept.items())  # not redone
    for path in (study_dir / "analysis" / "tiny-bert-noisy").glob("*.json"):
        assert json.loads((out / path.name).read_text()) == json.loads(path.read_text()), path.name


def test_a_failed_analysis_is_recorded_and_the_report_still_written(memo, tmp_path, capsys):
    _, _, root, study_dir = memo
    copy = tmp_path / "project"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("tiny-bert", "noisy"))
    os.symlink(root / "tiny-bert", copy / "tiny-bert")
    os.symlink(root / "noisy", copy / "noisy")
    done = copy / "results" / "study" / "memo"
    shutil.rmtree(done / "analysis" / "tfidf-noisy")
    for pipeline in (done / "runs" / "tfidf-noisy").glob("*/model.joblib"):
        pipeline.write_bytes(b"not a pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(copy)
        code = run_cli(lambda a: study.main(a, config_path=copy / "config.yaml"), ["memo"])
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    status = json.loads((done / "status.json").read_text())["tfidf-noisy"]["analysis"]
    assert status["status"] == "failed" and status["reason"] and "\n" not in status["reason"]
    report = json.loads((done / "report.json").read_text())
    row = next(r for r in report["cells"] if r["cell"] == "tfidf-noisy")
    assert (row["analysis"], row["analysis_reason"]) == ("failed", status["reason"])
    assert "tiny-bert-noisy: analysed earlier, skipped" in err
    assert f"`tfidf-noisy`: analysis: {status['reason']}" in (done / "report.md").read_text()


def test_other_analysis_settings_for_the_same_study_exit_2(memo, capsys):
    """The cells as before, the analysis not: one line naming it, nothing changed."""
    _, _, root, study_dir = memo
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["model_selection"]["studies"]["memo"]["analysis"] = ANALYSIS | {"steps": 6}
    (root / "other.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = {p: p.stat().st_mtime_ns for p in study_dir.rglob("*")}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        code = run_cli(lambda a: study.main(a, config_path=root / "other.yaml"), ["memo"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert (
        "was run with a different selection: analysis {" in err
        and "'steps': 4" in err
        and "'steps': 6" in err
    )
    assert {p: p.stat().st_mtime_ns for p in study_dir.rglob("*")} == before
