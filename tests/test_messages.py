"""Messages that must be true (issue: hostile input, round two): a run announces the bits of its
quantized base, a trained run reloaded (export, explain, --eval-only) does not call its trained head
new, a checkpoint without its head is refused instead, and explain on a model directory is one
short line."""

import shutil

import mlx.core as mx
import pytest

from mlx_models.cli import run_cli
from mlx_models.explain.cli import main as explain
from mlx_models.export.cli import main as export
from mlx_models.train.config import load_train_config
from mlx_models.train.trainer import run as train_run
from sentiment import sentiment_splits, write_splits

QUICK = ["--max-length", "32", "--batch-size", "8", "--max-steps", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("d") / "data", sentiment_splits())


@pytest.fixture(scope="module")
def bert_run(tiny, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bert"
    train_run(
        load_train_config(
            ["--model", str(tiny("bert", "classify")[1]), "--data-dir", str(data), "--out", str(out), *QUICK]
        )
    )
    return out


@pytest.mark.parametrize("bits", [4, 8])
def test_the_announcement_names_the_bits_of_the_base(tiny, data, tmp_path, capsys, bits):
    model = tiny("llama", "classify")[1]
    argv = [
        "--model",
        str(model),
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "r"),
        "--lora",
        "--quantize",
        str(bits),
    ]
    train_run(load_train_config([*argv, *QUICK]))
    assert f"(LoRA, {bits}-bit base)" in capsys.readouterr().err


def test_a_trained_head_is_not_called_new(bert_run, tmp_path, capsys):
    capsys.readouterr()
    assert run_cli(export, [str(bert_run), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert run_cli(explain, [str(bert_run), "--n", "2", "--steps", "2", "--out", str(tmp_path / "x")]) == 0
    assert "newly initialised" not in capsys.readouterr().err


def test_a_checkpoint_without_its_head_is_refused(bert_run, tmp_path, capsys):
    run = shutil.copytree(bert_run, tmp_path / "run")
    for name in ("best", "last"):
        f = run / name / "model.safetensors"
        if f.exists():
            kept = {k: v for k, v in mx.load(str(f)).items() if not k.startswith("classifier.")}
            mx.save_safetensors(str(f), kept, metadata={"format": "mlx"})
    assert run_cli(export, [str(run), "--to", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing weights classifier." in err[0], err
    assert not (tmp_path / "hf").exists()


def test_explain_on_a_model_directory_is_one_short_line(tiny, tmp_path, capsys):
    model = tiny("bert", "classify")[1]
    assert run_cli(explain, [str(model), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) < 300 and "is a model directory, not a run" in err[0], err
