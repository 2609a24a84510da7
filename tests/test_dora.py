"""DoRA (--dora): our layer's output and gradients equal peft's ``use_dora`` layer for the same
weights (a float32 base and a 4-bit one, which peft sees dequantized); a DoRA run trains the
magnitudes, resumes and fuses; its bad inputs are one line. The round trips through PEFT and mlx-lm
(export and import) are in test_export.py and test_adapter_import.py."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import peft
import pytest
import torch

from mlx_models.cli import run_cli
from mlx_models.models.lora import DoRALinear, fuse_lora
from mlx_models.models.quant import QuantizedLinear
from mlx_models.train.config import load_train_config
from mlx_models.train.trainer import run as train_run
from sentiment import sentiment_splits, write_splits

IN, OUT, R, ALPHA = 64, 48, 4, 8.0


class Holder(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.proj = linear


def layers(quantized: bool):
    """(ours, peft's) DoRA layers with the same base, A, B and magnitudes (all non-trivial)."""
    mx.random.seed(0)
    base = nn.Linear(IN, OUT, bias=True)
    base.bias = 0.1 * mx.random.normal((OUT,))
    if quantized:
        base = QuantizedLinear.from_linear(base, group_size=64, bits=4)
    ours = DoRALinear.from_base(base, r=R, dropout=0.0, scale=ALPHA / R)
    assert type(ours) is DoRALinear and type(ours.linear) is type(base)
    ours.lora_a = 0.1 * mx.random.normal((IN, R))
    ours.lora_b = 0.1 * mx.random.normal((R, OUT))
    ours.m = ours.m * (1 + 0.2 * mx.random.uniform(shape=(OUT,)))

    dense = torch.nn.Linear(IN, OUT)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(np.array(ours._dequantized_weight())))
        dense.bias.copy_(torch.from_numpy(np.array(ours.linear.bias)))
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["proj"], use_dora=True)
    theirs = peft.get_peft_model(Holder(dense), config).base_model.model.proj
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(torch.from_numpy(np.array(ours.lora_a.T)))
        theirs.lora_B["default"].weight.copy_(torch.from_numpy(np.array(ours.lora_b.T)))
        theirs.lora_magnitude_vector["default"].weight.copy_(torch.from_numpy(np.array(ours.m)))
    return ours, theirs


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "4-bit"])
def test_dora_layer_output_and_gradients_equal_peft(quantized):
    ours, theirs = layers(quantized)
    x = np.random.default_rng(0).standard_normal((3, 5, IN)).astype(np.float32)
    cotangent = np.random.default_rng(1).standard_normal((3, 5, OUT)).astype(np.float32)

    def loss(params, x):
        ours.update(params)
        return (ours(x) * mx.array(cotangent)).sum()

    trainable = {k: getattr(ours, k) for k in ("lora_a", "lora_b", "m")}
    out = ours(mx.array(x))
    grads, dx = mx.grad(loss, argnums=(0, 1))(trainable, mx.array(x))

    tx = torch.from_numpy(x).requires_grad_(True)
    ty = theirs(tx)
    (ty * torch.from_numpy(cotangent)).sum().backward()
    want = {
        "lora_a": theirs.lora_A["default"].weight.grad.T,
        "lora_b": theirs.lora_B["default"].weight.grad.T,
        "m": theirs.lora_magnitude_vector["default"].weight.grad,
    }
    np.testing.assert_allclose(np.array(out), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(dx), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    for k, g in want.items():
        got = np.array(grads[k])
        assert np.abs(got).max() > 1e-3, k  # a gradient that could be wrong
        np.testing.assert_allclose(got, g.numpy(), rtol=1e-4, atol=1e-5 * np.abs(g.numpy()).max(), err_msg=k)


class FixedMask(nn.Module):
    """Dropout with a given mask (scaled by 1 / (1 - p)): the same draw on both sides."""

    def __init__(self, keep: np.ndarray, p: float):
        super().__init__()
        self.factor = lambda: mx.array(keep / (1 - p))  # not a parameter

    def __call__(self, x):
        return x * self.factor()


class TorchFixedMask(torch.nn.Module):
    def __init__(self, keep: np.ndarray, p: float):
        super().__init__()
        self.factor = torch.from_numpy(keep / (1 - p))

    def forward(self, x):
        return x * self.factor


def test_dora_with_dropout_trains_as_peft_does():
    """In training with dropout, peft's DoRA keeps the base product undropped and rescales the
    dropped one: y = base(x) + (s - 1) W drop(x) + s scale B A drop(x); ours too (mlx-lm's layer
    would rescale the undropped base product instead)."""
    p = 0.3
    ours, theirs = layers(False)
    x = np.random.default_rng(0).standard_normal((3, 5, IN)).astype(np.float32)
    keep = (np.random.default_rng(2).random(x.shape) > p).astype(np.float32)
    ours.dropout, ours.dropout_p = FixedMask(keep, p), p
    theirs.lora_dropout["default"] = TorchFixedMask(keep, p)
    ours.train()
    theirs.train()

    def loss(params):
        ours.update(params)
        return ours(mx.array(x)).sum()

    trainable = {k: getattr(ours, k) for k in ("lora_a", "lora_b", "m")}
    out, grads = ours(mx.array(x)), mx.grad(loss)(trainable)
    ty = theirs(torch.from_numpy(x))
    ty.sum().backward()
    np.testing.assert_allclose(np.array(out), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    g = theirs.lora_magnitude_vector["default"].weight.grad.numpy()
    np.testing.assert_allclose(np.array(grads["m"]), g, rtol=1e-4, atol=1e-5 * np.abs(g).max())
    ours.eval()
    assert np.abs(np.array(ours(mx.array(x))) - np.array(out)).max() > 1e-2  # the mask mattered


def test_fused_dora_keeps_the_base_dtype():
    mx.random.seed(0)
    base = nn.Linear(IN, OUT)
    base.set_dtype(mx.float16)
    layer = DoRALinear.from_base(base, r=R, scale=ALPHA / R)
    layer.lora_b = 0.1 * mx.random.normal((R, OUT))
    fused = layer.fuse()
    assert fused.weight.dtype == mx.float16 and fused.bias.dtype == mx.float16


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "4-bit"])
def test_fused_dora_layer_equals_the_layer(quantized):
    ours, _ = layers(quantized)
    x = mx.array(np.random.default_rng(0).standard_normal((2, IN)).astype(np.float32))
    holder = nn.Module()
    holder.proj = ours
    fuse_lora(holder)
    assert type(holder.proj) is nn.Linear
    np.testing.assert_allclose(np.array(holder.proj(x)), np.array(ours(x)), rtol=1e-5, atol=1e-5)


# --- a DoRA run -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("data") / "sentiment", sentiment_splits())


def dora_argv(model, data, out, *extra) -> list[str]:
    argv = ["--model", str(model), "--data-dir", str(data), "--out", str(out), "--dora", "--max-length", "32"]
    return [*argv, "--batch-size", "8", "--max-steps", "6", "--learning-rate", "1e-2", *extra]


@pytest.mark.parametrize("base", ["bert", "llama-4bit"])
def test_a_dora_run_trains_the_magnitudes_and_records_the_method(tiny, data, tmp_path, base):
    family = base.split("-")[0]
    mlx_dir = tiny(family, "classify", num_labels=2)[1]
    extra = ["--quantize", "4"] if base.endswith("4bit") else []
    train_run(load_train_config(dora_argv(mlx_dir, data, tmp_path / "run", *extra)))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["dora"], saved["lora"], saved["learning_rate"]) == (True, True, 1e-2)
    assert json.loads((tmp_path / "run" / "last" / "config.json").read_text())["lora"]["dora"] is True
    weights = mx.load(str(tmp_path / "run" / "last" / "adapters.safetensors"))
    magnitudes = {k: v for k, v in weights.items() if k.endswith(".m")}
    assert len(magnitudes) == 8  # q, k, v, o of both layers

    from mlx_models.train.build import build

    cfg = load_train_config(dora_argv(mlx_dir, data, tmp_path / "fresh", *extra))
    fresh, _, _ = build(cfg, 2)  # the magnitudes a run starts from: the base's row norms
    start = dict(fresh.named_modules())
    moved = [float(mx.abs(v - start[k.removesuffix(".m")].m).max()) for k, v in magnitudes.items()]
    assert min(moved) > 1e-4, moved


def test_learning_rate_default_follows_dora(tiny, data, tmp_path):
    mlx_dir = tiny("llama", "classify", num_labels=2)[1]
    cfg = load_train_config(["--model", str(mlx_dir), "--data-dir", str(data), "--dora"])
    assert (cfg.lora, cfg.dora, cfg.learning_rate, cfg.method) == (True, True, 1e-4, "dora")


BAD = {
    "from scratch": (["--from-scratch"], "--from-scratch trains every weight: drop --lora/--dora/--adapter"),
    "tfidf": (["--model", "tfidf"], "the tfidf baseline has no layers to adapt"),
    "not a boolean": (["--dora=maybe"], "dora"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_dora_options_exit_2_with_one_line(tiny, data, tmp_path, capsys, case):
    import train

    mlx_dir = tiny("llama", "classify", num_labels=2)[1]
    extra, message = BAD[case]
    argv = ["--model", str(mlx_dir), "--data-dir", str(data), "--dora", "--out", str(tmp_path / "run")]
    capsys.readouterr()
    assert run_cli(train.main, [*argv, *extra]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], captured.err
    assert not (tmp_path / "run").exists()


def test_a_lora_adapter_with_dora_is_refused(tiny, data, tmp_path, capsys):
    import train

    hf_dir, mlx_dir = tiny("llama", "classify", num_labels=2)
    base = __import__("transformers").AutoModelForSequenceClassification.from_pretrained(hf_dir)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="SEQ_CLS")
    peft.get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    argv = [
        "--model",
        str(mlx_dir),
        "--data-dir",
        str(data),
        "--adapter",
        str(tmp_path / "adapter"),
        "--dora",
    ]
    capsys.readouterr()
    assert run_cli(train.main, [*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a LoRA adapter, not DoRA: drop --dora" in err[0], err
    assert not (tmp_path / "run").exists()
