"""The built-in path, the one a Mac's GPU (and CUDA) runs, taken on this CPU: ``MLX_MODELS_BUILTIN=1``
routes every model op to MLX's built-ins (``mx.fast`` attention and norms, ``nn`` activations, MLX's
quantized matmul and softmax) and none to our kernels or formulas. CI runs the parity, attribution,
export and training-step tests a second time under it (``make test-builtin``)."""

import collections

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_models import kernels, load_model
from mlx_models.models import cpu_ops

BUILT_INS = ("scaled_dot_product_attention", "layer_norm", "rms_norm")


class NoKernels:
    """Stands for mlx_models.kernels.native: any use of it is a failure."""

    def __getattr__(self, name):
        raise AssertionError(f"the kernel {name} ran under MLX_MODELS_BUILTIN=1")


def counting(fn, name: str, calls: collections.Counter):
    def counted(*args, **kwargs):
        calls[name] += 1
        return fn(*args, **kwargs)

    return counted


@pytest.fixture
def builtin(monkeypatch) -> collections.Counter:
    """The switch on, the kernels unusable, and a count of the built-ins called."""
    monkeypatch.setenv(cpu_ops.BUILTIN, "1")
    monkeypatch.setattr(kernels, "native", NoKernels())
    calls = collections.Counter()
    for name in BUILT_INS:
        monkeypatch.setattr(mx.fast, name, counting(getattr(mx.fast, name), name, calls))
    monkeypatch.setattr(mx, "quantized_matmul", counting(mx.quantized_matmul, "quantized_matmul", calls))
    return calls


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family,q_bits", [("bert", None), ("roberta", None), ("llama", None), ("llama", 4)])
def test_the_switch_takes_the_builtin_path(tiny, builtin, family, q_bits, side):
    """A padded forward and backward of a classifier under the switch: the built-ins run, our
    kernels never do, and the gradients are finite (a fully masked query row stays finite)."""
    assert not cpu_ops.on_cpu()
    model = load_model(tiny(family, "classify", q_bits=q_bits)[1], "classify")
    model.eval()
    ids = mx.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 1, 1, 1]])
    mask = mx.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    if side == "left":
        ids, mask = ids[:, ::-1], mask[:, ::-1]

    def loss(m):
        return nn.losses.cross_entropy(m(ids, attention_mask=mask), mx.array([0, 1])).mean()

    value, grads = nn.value_and_grad(model, loss)(model)
    flat = [g for _, g in tree_flatten(grads)]
    assert np.isfinite(value.item()) and all(np.isfinite(np.array(g)).all() for g in flat)
    assert builtin["scaled_dot_product_attention"] > 0
    assert builtin["rms_norm" if family == "llama" else "layer_norm"] > 0
    assert (builtin["quantized_matmul"] > 0) == (q_bits is not None)


def test_without_the_switch_the_cpu_path_is_taken(monkeypatch):
    monkeypatch.delenv(cpu_ops.BUILTIN, raising=False)
    assert cpu_ops.on_cpu() == (mx.default_device() == mx.cpu)
