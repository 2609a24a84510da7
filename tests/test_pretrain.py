"""Masked-LM pretraining (RoBERTa) and causal-LM training (Llama) learn from plain text."""

import json
import math

import pytest

import train
from mlx_models.train.metrics import read_metrics
from sentiment import CORPUS


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    split = {"train": CORPUS[::2] + CORPUS[1::4], "validation": CORPUS[1::4], "test": CORPUS[3::4]}
    for name, rows in split.items():
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return d


@pytest.mark.parametrize("model_type,task,lr", [("roberta", "mlm", "3e-3"), ("llama", "lm", "3e-3")])
def test_language_modelling_learns(tiny, text_dir, tmp_path, capsys, model_type, task, lr):
    _, mlx_dir = tiny(model_type, "mlm" if task == "mlm" else "lm")
    out = tmp_path / "run"
    argv = [f"--model={mlx_dir}", f"--data-dir={text_dir}", f"--task={task}", f"--out={out}"]
    argv += [
        "--max-steps=40",
        "--eval-every=10",
        "--batch-size=8",
        f"--learning-rate={lr}",
        "--max-length=32",
    ]
    assert train.main(argv) in (None, 0)
    val = [r for r in read_metrics(out) if r["split"] == "validation"]
    assert len(val) == 4
    losses = [r["loss"] for r in val]
    vocab = json.loads((mlx_dir / "config.json").read_text())["vocab_size"]
    # Falls across evaluations, and far below chance (a uniform guess scores ln(vocab)).
    assert losses[-1] < losses[0] and losses[-1] < 0.65 * math.log(vocab), losses
    test = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert test["split"] == "test" and test["perplexity"] > 1
