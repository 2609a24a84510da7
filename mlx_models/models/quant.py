"""Affine 4/8-bit quantization, recorded in config.json the way mlx-lm does.

On Metal and CUDA the fused ``mx.quantized_matmul`` is the fast path. MLX's CPU
quantized matmul is far slower than its BLAS matmul, so on the CPU these layers
dequantize each weight on the fly and use the BLAS GEMM: by our kernel where it is built,
48 MB of the weight at a time inside the product, else whole, by MLX. Storage (and the
memory the model holds) stays 4-bit; the full-precision weight is a transient.
"""

import contextlib
import functools
from collections.abc import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from .. import kernels
from .cpu_ops import on_cpu

DEFAULT_GROUP_SIZE = 64


def _dequantize(layer: nn.Module) -> mx.array:
    return mx.dequantize(
        layer["weight"], layer["scales"], layer.get("biases"), layer.group_size, layer.bits, mode=layer.mode
    )


def _dequantize_as(w, scales, biases, group_size: int, bits: int, mode: str, dtype) -> mx.array:
    """``mx.dequantize(...).astype(dtype)``; to float32 on the CPU by the kernels' dequantize
    (kernels/dequantize.cpp: the same values to the bit, on all cores; 15x faster than MLX's CPU
    dequantize with float32 scales, 34x with float16 ones, which MLX computes in float16, in
    benchmarks/mlx_cpu_exp.py on a 2-core AMD EPYC)."""
    fast = dtype == mx.float32 and mode == "affine" and bits in (2, 4, 8)
    if fast and kernels.native is not None and on_cpu():
        return kernels.native.dequantize(w, scales, biases, group_size, bits)
    return mx.dequantize(w, scales, biases, group_size, bits, mode=mode).astype(dtype)


@functools.cache
def _dequantized_matmul(group_size: int, bits: int, mode: str):
    """x @ dequantize(w).T whose backward dequantizes w again instead of keeping the dense
    copy alive from the forward pass: memory stays that of the 4-bit weights (QLoRA on 7B)."""

    def dense(w, scales, biases, after: mx.array):
        # depends: dequantize only once `after` exists, so the scheduler cannot materialise
        # every layer's dense weight ahead of time.
        return _dequantize_as(mx.depends(w, after), scales, biases, group_size, bits, mode, after.dtype)

    @mx.custom_function
    def f(x, w, scales, biases):
        return x @ dense(w, scales, biases, x).T

    @f.vjp
    def f_vjp(primals, cotangent, output):
        x, w, scales, biases = primals
        dx = cotangent @ dense(w, scales, biases, cotangent)
        return dx, mx.zeros_like(w), mx.zeros_like(scales), mx.zeros_like(biases)  # frozen

    return f


@functools.cache
def _blocked_matmul(group_size: int, bits: int):
    """x @ dequantize(w).T by the kernels' dequantized matmul: the weight is dequantized 48 MB at
    most at a time, inside the product (forward and backward), so no float32 copy of it exists
    whole (7B: 180 MB an MLP weight). The same values as the dense product, to the bit."""

    @mx.custom_function
    def f(x, w, scales, biases):
        return kernels.native.dequantized_matmul(x, w, scales, biases, group_size, bits, True)

    @f.vjp
    def f_vjp(primals, cotangent, output):
        x, w, scales, biases = primals
        dx = kernels.native.dequantized_matmul(cotangent, w, scales, biases, group_size, bits, False)
        return dx, mx.zeros_like(w), mx.zeros_like(scales), mx.zeros_like(biases)  # frozen

    return f


def _cpu_matmul(layer: nn.Module, x: mx.array) -> mx.array:
    if layer.get("biases") is None:  # not affine: no zero points to pass through
        return x @ _dequantize(layer).astype(x.dtype).T
    blocked = kernels.native is not None and x.dtype == mx.float32 and layer.mode == "affine"
    if blocked and layer.bits in (2, 4, 8):
        f = _blocked_matmul(layer.group_size, layer.bits)
    else:
        f = _dequantized_matmul(layer.group_size, layer.bits, layer.mode)
    return f(x, layer["weight"], layer["scales"], layer["biases"])


class QuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        if not on_cpu():
            return super().__call__(x)
        y = _cpu_matmul(self, x)
        return y + self["bias"] if "bias" in self else y


class QuantizedEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x: mx.array) -> mx.array:
        return _cpu_matmul(self, x) if on_cpu() else super().as_linear(x)


def quantizable(path: str, module: nn.Module, group_size: int, skip: tuple[str, ...] = ()) -> bool:
    """Linear layers and word embeddings whose input dim splits into groups; not the task heads
    (they stay in full precision, as QLoRA trains them)."""
    if path.split(".")[0] in skip:
        return False
    if isinstance(module, nn.Linear):
        return module.weight.shape[-1] % group_size == 0
    if isinstance(module, nn.Embedding):
        return (
            path.endswith(("word_embeddings", "embed_tokens")) and module.weight.shape[-1] % group_size == 0
        )
    return False


def quantize(
    model: nn.Module, bits: int = 4, group_size: int = DEFAULT_GROUP_SIZE, predicate=None
) -> list[str]:
    """Quantize ``model`` in place; returns the paths of the quantized layers.

    ``predicate(path, module)`` defaults to :func:`quantizable` with the model's heads skipped; it
    may return a dict with the layer's own ``group_size`` and ``bits`` (mlx-lm's per-layer config).
    """
    skip = getattr(model, "head_modules", ())
    predicate = predicate or (lambda p, m: quantizable(p, m, group_size, skip))
    new = []
    with same_random_state():  # MLX initialises each new quantized layer at random first
        for path, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
            if not (spec := predicate(path, m)):
                continue
            gs, b = (spec["group_size"], spec["bits"]) if isinstance(spec, dict) else (group_size, bits)
            if isinstance(m, nn.Linear):
                new.append((path, QuantizedLinear.from_linear(m, gs, b)))
            elif isinstance(m, nn.Embedding):
                new.append((path, QuantizedEmbedding.from_embedding(m, gs, b)))
    model.update_modules(tree_unflatten(new))
    return [p for p, _ in new]


@contextlib.contextmanager
def same_random_state() -> Iterator[None]:
    """MLX's random state as it was before the block: what is drawn after (a new head, LoRA, the
    dropout masks) does not depend on whether the base was quantized. (mx.random.state is
    read-only: the key [s >> 32, s & 0xFFFFFFFF] is set again through its seed s.)"""
    hi, lo = (int(x) for x in np.array(mx.random.state[0]))
    try:
        yield
    finally:
        mx.random.seed((hi << 32) | lo)


def quantization_config(bits: int, group_size: int) -> dict:
    return {"group_size": group_size, "bits": bits, "mode": "affine"}


def dequantized_weights(model: nn.Module) -> dict[str, mx.array]:
    """Flat HF-named weights with every quantized layer turned back into a dense ``weight``."""
    weights = dict(tree_flatten(model.parameters()))
    for path, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        if isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding):
            weights.pop(f"{path}.scales"), weights.pop(f"{path}.biases", None)
            weights[f"{path}.weight"] = _dequantize(m)
    return weights
