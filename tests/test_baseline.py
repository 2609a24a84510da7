"""The tfidf baseline through the real `python train.py` command line."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_models.cli import run_cli
from mlx_models.errors import DataError
from mlx_models.train.config import TrainConfig
from mlx_models.train.data import Split, Splits
from mlx_models.train.metrics import read_metrics
from mlx_models.train.tfidf import run_tfidf

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--model", "tfidf", "--dataset", "imdb", "--max-samples", "2000"]


def train_main():
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def snapshot(path: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tfidf-imdb"
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "train.py", *ARGS, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    return out, proc


def test_tfidf_run_writes_the_run_layout(tfidf_run):
    out, proc = tfidf_run
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["split"] == "test" and result["n"] == 2000
    assert result["accuracy"] > 0.75 and 0 < result["f1"] <= 1
    splits = [r["split"] for r in read_metrics(out)]
    assert splits == ["train", "validation", "test"]
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "best" / "model.joblib").is_file() and (out / "last" / "model.joblib").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert (saved["model"], saved["max_samples"], saved["out"]) == ("tfidf", 2000, str(out))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_existing_out_is_an_error_and_nothing_changes(tfidf_run, capsys, monkeypatch):
    out, _ = tfidf_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = snapshot(out)
    assert run_cli(train_main(), [*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "already exists" in err and "\n" not in err
    assert snapshot(out) == before


def test_unknown_model_exits_2(capsys):
    assert run_cli(train_main(), ["--model", "tfidff"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'tfidff'") and "tfidf" in err


def test_failed_fit_writes_nothing(tmp_path):
    one_class = Split([f"text {i}" for i in range(10)], [0] * 10)
    splits = Splits(one_class, one_class, one_class, 2, None, "test data")
    out = tmp_path / "run"
    with pytest.raises(DataError, match="single class"):
        run_tfidf(TrainConfig(model="tfidf", out=str(out)), splits)
    assert list(tmp_path.iterdir()) == []


def test_tfidf_run_answers_the_trained_run_interface(tfidf_run, tmp_path, capsys):
    """load_trained reads a TF-IDF run as it reads the others; export and fuse refuse it in one line."""
    from mlx_models.export import fuse
    from mlx_models.export.cli import main as export_main
    from mlx_models.train.trained import TfidfTrained, load_trained, locate

    out, _ = tfidf_run
    t = load_trained(out)
    assert isinstance(t, TfidfTrained) and t.path == out / "best" and t.task == "classify"
    assert t.num_labels == 2 and t.pipeline.predict_proba(["a fine film"]).shape == (1, 2)
    assert locate(out / "last").tfidf and locate(out, "last").path == out / "last"
    for main, argv, says in (
        (export_main, [str(out), "--to", "hf", "--out", str(tmp_path / "x")], "is a TF-IDF baseline run"),
        (fuse.main, [str(out), "--out", str(tmp_path / "x")], "is a TF-IDF baseline run"),
    ):
        capsys.readouterr()
        assert run_cli(main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
        assert not (tmp_path / "x").exists()


def test_tfidf_run_evaluates_again_with_eval_only(tfidf_run, tmp_path, capsys):
    """--eval-only scores a TF-IDF run's pipeline on the test split as it does a model's best/."""
    import shutil

    out, _ = tfidf_run
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    before = read_metrics(run)
    assert run_cli(train_main(), ["--eval-only", str(run)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    after = read_metrics(run)
    assert len(after) == len(before) + 1 and after[-1] == record
    assert record["split"] == "test" and record["checkpoint"] == "best"
    assert record["accuracy"] == before[-1]["accuracy"]
    assert record["loss"] == pytest.approx(before[-1]["loss"])
    assert run_cli(train_main(), ["--resume", str(run)]) == 2  # one fit: nothing to continue
    assert "does not apply" in capsys.readouterr().err
