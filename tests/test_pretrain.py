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


def test_a_step_with_no_masked_token_updates_nothing(tiny, text_dir, tmp_path):
    """Masked-LM steps in which no token is masked (a tiny --mlm-probability here; a short last
    batch or MLM finetuning on short texts elsewhere) have no gradient: the step is taken without
    an update instead of dividing by zero, and the run finishes."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_models.train.trained import load_trained

    _, mlx_dir = tiny("roberta", "mlm")
    out = tmp_path / "run"
    argv = [f"--model={mlx_dir}", f"--data-dir={text_dir}", "--task=mlm", f"--out={out}", "--max-steps=3"]
    assert train.main([*argv, "--mlm-probability=1e-9", "--batch-size=4", "--max-length=16"]) in (None, 0)
    train_records = [r for r in read_metrics(out) if r["split"] == "train"]
    assert train_records and all(r["running_loss"] is None for r in train_records)
    before = dict(tree_flatten(load_trained(mlx_dir).model.parameters()))
    after = dict(tree_flatten(load_trained(out, "last").model.parameters()))
    assert all(mx.array_equal(before[k], v).item() for k, v in after.items())  # no update was made
