"""One seed, one run: the LoRA matrices, the new head, the dropout masks and the data order depend
on --seed alone, not on how the base is stored. QLoRA on SmolLM2's GGUF blocks (kept exactly, 4-bit)
and LoRA on the same weights dequantized to float32 then train step for step alike."""

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_models.train.build import build
from mlx_models.train.config import load_train_config
from mlx_models.train.metrics import read_metrics
from mlx_models.train.trainer import run as train_run
from sentiment import sentiment_splits, write_splits

STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("data") / "sentiment", sentiment_splits())


def argv(model, data, out, *extra):
    args = ["--model", str(model), "--data-dir", str(data), "--out", str(out), "--lora", "--seed", "3"]
    args += ["--max-length", "32", "--batch-size", "4", "--max-steps", str(STEPS), "--eval-every", "1"]
    return [*args, "--learning-rate", "1e-3", "--lora-dropout", "0.1", *extra]


def test_the_adapters_start_alike_on_a_kept_and_a_dense_base(smollm2, smollm2_q4, data, tmp_path):
    dense, _, _ = build(load_train_config(argv(smollm2, data, tmp_path / "a")), 2)
    kept, _, _ = build(load_train_config(argv(smollm2_q4, data, tmp_path / "b")), 2)
    a, b = dict(tree_flatten(dense.trainable_parameters())), dict(tree_flatten(kept.trainable_parameters()))
    assert a.keys() == b.keys() and any(k.endswith("lora_a") for k in a)
    assert all(mx.array_equal(a[k], b[k]).item() for k in a), [
        k for k in a if not mx.array_equal(a[k], b[k]).item()
    ][:3]


def test_qlora_on_kept_blocks_trains_as_lora_on_their_dequantized_weights(
    smollm2, smollm2_q4, data, tmp_path
):
    runs = {name: tmp_path / name for name in ("lora", "qlora")}
    results = {
        "lora": train_run(load_train_config(argv(smollm2, data, runs["lora"]))),
        "qlora": train_run(load_train_config(argv(smollm2_q4, data, runs["qlora"]))),
    }
    curves = {
        n: [(r["running_loss"], r["loss"]) for r in read_metrics(p) if r["split"] == "train"]
        for n, p in runs.items()
    }
    assert len(curves["lora"]) == STEPS
    for (a_train, a_probe), (b_train, b_probe) in zip(curves["lora"], curves["qlora"], strict=True):
        assert b_train == pytest.approx(a_train, rel=1e-4) and b_probe == pytest.approx(a_probe, rel=1e-4)
    for k in ("loss", "accuracy", "f1"):
        assert results["qlora"][k] == pytest.approx(results["lora"][k], rel=1e-4), k
