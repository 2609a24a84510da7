"""The exponentials of a training step, fast on MLX's CPU backend.

On an x86 CPU, MLX evaluates ``exp``, ``erf`` and ``sigmoid`` one element at a time: ``mx.exp`` on
1.4 M floats takes ~20 ms here, PyTorch ~0.9 ms (``benchmarks/mlx_cpu_exp.py``). They sit in every
activation (SiLU, GELU) and in the attention softmax, and made those a third of our step. Built
from multiplies and adds instead, which ``mx.compile`` fuses, they run 4-5x faster, within 1e-6
relative of the built-ins. On Metal and CUDA, and in half precision, the built-ins are used.

``exp`` is Cephes' float32 ``expf`` (a degree-7 polynomial on x - n ln 2, scaled by 2^n through
the exponent bits); ``erf`` is Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7). Gradients are
written out (``mx.custom_function``). The fused chain keeps a few (N, D) temporaries that MLX's
own ``exp`` does not, so the loss's log-sum-exp over the vocabulary (the largest array of a
language-model step) stays MLX's ``cross_entropy``: its speed-up was not worth 18% more peak
memory on the LoRA benchmark.
"""

import math

import mlx.core as mx
import mlx.nn as nn

LOG2E = 1.4426950408889634
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 in two parts (Cody-Waite), as Cephes
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 0.5)
ROUND = 12582912.0  # 1.5 * 2**23: adding then subtracting it rounds a float32 to an integer
ERF_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)
ERF_P = 0.3275911


def on_cpu() -> bool:
    return mx.default_device() == mx.cpu


def _exp(x: mx.array) -> mx.array:
    """exp(x), flushed to 0 below -87 (float32's normal range ends at exp(-87.3)): the masked
    scores of a softmax (-inf, or float32's lowest) must give exact zeros, as MLX's exp does, since
    arithmetic on subnormal numbers is many times slower on x86 (a multiply-add 16x in
    ``benchmarks/mlx_cpu_exp.py``; causal attention was 5x slower)."""
    y = mx.clip(x, -87.0, 88.0)
    n = (y * LOG2E + ROUND) - ROUND  # y = n ln 2 + r, |r| <= ln 2 / 2
    r = y - n * LN2_HI - n * LN2_LO
    p = EXP_POLY[0]
    for c in EXP_POLY[1:]:
        p = p * r + c
    p = p * r * r + r + 1.0
    return mx.where(x < -87.0, 0.0, p * mx.view((n.astype(mx.int32) + 127) << 23, mx.float32))  # p 2^n


def _erf(x: mx.array) -> mx.array:
    ax = mx.abs(x)
    t = 1.0 / (1.0 + ERF_P * ax)
    y = ERF_A[0]
    for a in ERF_A[1:]:
        y = y * t + a
    y = 1.0 - y * t * _exp(-ax * ax)
    return mx.where(x < 0, -y, y)


def _first(primals):
    return primals[0] if isinstance(primals, list | tuple) else primals


@mx.custom_function
def _fast_exp(x):
    return _exp(x)


@_fast_exp.vjp
def _fast_exp_vjp(primals, cotangent, output):
    return (cotangent * output,)


@mx.custom_function
def _fast_silu(x):
    # below -88 exp(-x) saturates: x * 0 gives -0 there, and NaN for -inf as MLX's silu does
    return mx.where(x < -88.0, x * 0.0, x / (1.0 + _exp(-x)))


@_fast_silu.vjp
def _fast_silu_vjp(primals, cotangent, output):
    s = 1.0 / (1.0 + _exp(-_first(primals)))
    return (cotangent * (s + output * (1.0 - s)),)


@mx.custom_function
def _fast_gelu(x):
    return 0.5 * x * (1.0 + _erf(x * (1 / math.sqrt(2))))


@_fast_gelu.vjp
def _fast_gelu_vjp(primals, cotangent, output):
    x = _first(primals)
    cdf = 0.5 * (1.0 + _erf(x * (1 / math.sqrt(2))))
    pdf = _exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
    return (cotangent * (cdf + x * pdf),)


def _fp32(fast, builtin):
    """``fast`` for float32 inputs on the CPU, else ``builtin`` (half precision keeps MLX's own)."""
    return lambda x: fast(x) if on_cpu() and x.dtype == mx.float32 else builtin(x)


exp = _fp32(_fast_exp, mx.exp)
silu = _fp32(_fast_silu, nn.silu)
gelu = _fp32(_fast_gelu, nn.gelu)  # the exact (erf) GELU, torch's nn.GELU()


@mx.custom_function
def _fast_softmax(x):
    e = _exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@_fast_softmax.vjp
def _fast_softmax_vjp(primals, cotangent, output):
    """From the probabilities alone, as MLX's own softmax: only they are kept for the backward."""
    return (output * (cotangent - (cotangent * output).sum(axis=-1, keepdims=True)),)


def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis."""
    if not (on_cpu() and x.dtype == mx.float32):
        return mx.softmax(x, axis=-1, precise=True)
    return _fast_softmax(x)


def attention(q, k, v, scale: float, mask=None, dropout: nn.Module | None = None) -> mx.array:
    """softmax(q k^T * scale, masked) v for q (B, H, L, d) and k, v (B, H_kv, S, d) with H a
    multiple of H_kv; ``mask`` is a boolean (True = attend) or additive array broadcastable to
    (B, H, L, S), "causal" or None. ``dropout`` applies to the probabilities (training)."""
    if not on_cpu() and dropout is None:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    B, H, L, d = q.shape
    groups = H // k.shape[1]
    if groups > 1:  # grouped-query attention: each kv head serves `groups` query heads
        q, k, v = q.reshape(B, k.shape[1], groups, L, d), k[:, :, None], v[:, :, None]
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if isinstance(mask, str):
        S = k.shape[-2]
        mask = mx.arange(S - L, S)[:, None] >= mx.arange(S)[None]
    if mask is not None:
        if groups > 1 and mask.ndim >= 3:  # split a per-head axis as the scores' (H_kv, groups)
            heads = mask.shape[-3]
            split = (k.shape[1], groups) if heads == H else (heads, 1)
            mask = mask.reshape(*mask.shape[:-3], *split, *mask.shape[-2:])
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
        else:
            scores = scores + mask.astype(scores.dtype)
    probs = softmax(scores)
    if dropout is not None:
        probs = dropout(probs)
    return (probs @ v).reshape(B, H, L, d)
