"""The exponentials and the attention of a training step, fast on MLX's CPU backend (the norms:
models/norms.py).

On an x86 CPU, MLX evaluates ``exp``, ``erf`` and ``sigmoid`` one element at a time, on one core,
far slower than PyTorch (``benchmarks/mlx_cpu_exp.py``). They sit in every activation (SiLU, GELU),
in the attention softmax and in the loss's log-sum-exp over the vocabulary. MLX has no fused
attention on the CPU either: ``mx.fast.scaled_dot_product_attention`` there materialises the (B, H,
L, S) scores, masks them with a ``where`` and keeps the probabilities for the backward.

Where ``mlx_models/kernels`` is built (``make setup`` on Linux), GELU, SiLU, the softmax, the
log-sum-exp, the attention (forward and backward, dropout included) and the norms (models/norms.py)
run there: vectorised for the CPU, on all its cores. Elsewhere the formulas stand in, built from
multiplies and adds that ``mx.compile`` fuses; the loss's log-sum-exp and the norms then stay MLX's
(the formulas would keep (N, V) temporaries). On Metal and CUDA, and in half precision, the
built-ins are used (speeds: ``benchmarks/mlx_cpu_exp.py``); ``MLX_MODELS_BUILTIN=1`` takes that
path on the CPU too (``on_cpu``), which is how the tests check it here. The exponentials agree with the
built-ins within 1e-6 relative; the norms' two-pass variance is closer to float64 than MLX's
(tests/test_cpu_ops.py).

Both paths compute the same formulas: ``exp`` is Cephes' float32 ``expf`` (a degree-7
polynomial on x - n ln 2, scaled by 2^n through the exponent bits); ``erf`` is Abramowitz &
Stegun 7.1.26 (|error| < 1.5e-7). Gradients are written out (``mx.custom_function``).
"""

import functools
import math
import os

import mlx.core as mx
import mlx.nn as nn

from .. import kernels

LOG2E = 1.4426950408889634
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 in two parts (Cody-Waite), as Cephes
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 0.5)
ROUND = 12582912.0  # 1.5 * 2**23: adding then subtracting it rounds a float32 to an integer
ERF_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)
ERF_P = 0.3275911


BUILTIN = "MLX_MODELS_BUILTIN"  # "1": MLX's built-ins everywhere, the path Metal and CUDA take


def on_cpu() -> bool:
    """Whether the CPU path is taken (this module's ops, the kernels, quant.py's dequantizing
    matmul): on MLX's CPU device, unless ``MLX_MODELS_BUILTIN=1`` asks for the path a Mac's GPU
    (and CUDA) takes: ``mx.fast`` attention and norms, ``nn.gelu``/``nn.silu``, MLX's quantized
    matmul and softmax. The one switch between the two paths, so CI runs both on a CPU."""
    return mx.default_device() == mx.cpu and os.environ.get(BUILTIN) != "1"


def kernel_takes(*arrays) -> bool:
    """Whether the compiled kernels (mlx_models/kernels) run on these arrays: built, on the CPU,
    every array float32, neither a scalar nor empty. The one test of it: ops, norms and AdamW."""
    usable = (a is not None and a.dtype == mx.float32 and a.ndim > 0 and a.size > 0 for a in arrays)
    return kernels.native is not None and on_cpu() and all(usable)


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


@mx.custom_function
def _fast_softmax(x):
    e = _exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@_fast_softmax.vjp
def _fast_softmax_vjp(primals, cotangent, output):
    """From the probabilities alone, as MLX's own softmax: only they are kept for the backward."""
    return (output * (cotangent - (cotangent * output).sum(axis=-1, keepdims=True)),)


# The compiled kernels (mlx_models/kernels), with their vjps


def _kernel(forward, vjp):
    """``forward`` as an ``mx.custom_function`` whose vjp is ``vjp(x, cotangent, output)``."""
    op = mx.custom_function(forward)
    op.vjp(lambda primals, cotangent, output: (vjp(_first(primals), cotangent, output),))
    return op


k = kernels  # the module, read at call time: `kernels.native` is None where they are not built
_native_silu = _kernel(lambda x: k.native.silu(x), lambda x, g, y: k.native.silu_vjp(x, g))
_native_gelu = _kernel(lambda x: k.native.gelu(x), lambda x, g, y: k.native.gelu_vjp(x, g))
_native_softmax = _kernel(lambda x: k.native.softmax(x), lambda x, g, y: k.native.softmax_vjp(y, g))
_native_logsumexp = _kernel(lambda x: k.native.logsumexp(x), lambda x, g, y: k.native.logsumexp_vjp(x, y, g))


def pick_stratified(kernel, formula, builtin):
    """The op on float32 inputs on the CPU: ``kernel`` where mlx_models/kernels is built, else
    ``formula``; ``builtin`` elsewhere (Metal, CUDA, half precision)."""

    def op(x: mx.array) -> mx.array:
        if not (on_cpu() and x.dtype == mx.float32) or x.size == 0:
            return builtin(x)
        return kernel(x) if kernel_takes(x) else formula(x)

    return op


def _mlx_softmax(x):
    return mx.softmax(x, axis=-1, precise=True)


def _mlx_logsumexp(x):
    return mx.logsumexp(x, axis=-1)


exp = pick_stratified(_fast_exp, _fast_exp, mx.exp)
silu = pick_stratified(_native_silu, _fast_silu, nn.silu)
gelu = pick_stratified(_native_gelu, _fast_gelu, nn.gelu)  # the exact (erf) GELU, torch's nn.GELU()
softmax = pick_stratified(_native_softmax, _fast_softmax, _mlx_softmax)  # over the last axis
logsumexp = pick_stratified(_native_logsumexp, _mlx_logsumexp, _mlx_logsumexp)  # over the last axis


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Per-row cross-entropy of ``logits`` (..., V) against class ids ``targets`` (...), as
    ``nn.losses.cross_entropy`` (no reduction)."""
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logsumexp(logits) - picked


@functools.cache
def _native_attention(scale: float, causal: bool, bias: bool, dropout: float):
    """The kernels' attention (kernels/attention.h) for one scale, masking and dropout, as a custom
    function of (q, k, v), then the bias and the dropout's seed where there are; it returns (out,
    stats). Neither the scores nor the probabilities are kept for the backward: it recomputes
    them from the stats, and the dropout from the seed."""

    def split(extra):
        return (extra[0] if bias else None), (extra[-1] if dropout else None)

    def forward(q, k, v, *extra):
        b, seed = split(extra)
        out, stats = kernels.native.attention(q, k, v, b, scale, causal, dropout, seed)
        return out.transpose(0, 2, 1, 3), stats  # written (B, L, H, d), as o_proj reads it

    def vjp(primals, cotangents, outputs):
        q, k, v, *extra = primals
        (b, seed), (out, stats), g = split(extra), outputs, cotangents[0]
        grads = kernels.native.attention_vjp(q, k, v, b, out, stats, g, scale, causal, dropout, seed)
        return (*(g.transpose(0, 2, 1, 3) for g in grads), *(mx.zeros_like(a) for a in extra))

    op = mx.custom_function(forward)
    op.vjp(vjp)
    return op


def _kernel_attention(q, k, v, scale: float, mask, dropout: float, causal: bool) -> mx.array:
    """The fused kernel: a boolean mask becomes an additive one of 0 and float32's lowest (a
    masked score is then the lowest, as the formula's `where` makes it), broadcast (not copied)
    to (B, H, L, S); dropout's seed comes from MLX's random state."""
    has_bias, extra = mask is not None and not isinstance(mask, str), []
    causal = causal or isinstance(mask, str)
    if has_bias:
        if mask.dtype == mx.bool_:
            mask = mx.where(mask, 0.0, mx.finfo(mx.float32).min)
        B, H, L, _ = q.shape
        extra.append(mx.broadcast_to(mask.astype(mx.float32), (B, H, L, k.shape[2])))
    if dropout:
        extra.append(mx.random.randint(0, 2**31 - 1, (1,)).astype(mx.uint32))
    return _native_attention(scale, causal, has_bias, dropout)(q, k, v, *extra)[0]


def attention(q, k, v, scale: float, mask=None, dropout: float = 0.0, causal: bool = False) -> mx.array:
    """softmax(q k^T * scale, masked) v for q (B, H, L, d) and k, v (B, H_kv, S, d) with H a
    multiple of H_kv; ``mask`` is a boolean (True = attend) or additive array broadcastable to
    (B, H, L, S), "causal" or None. ``dropout``: the probability of dropping each attention
    probability, as ``nn.Dropout`` on them (training; 0 at inference). ``causal``: a promise that
    ``mask`` hides every key after its query (key j > query i + S - L), as a causal mask with
    padding does: the kernel then skips those keys' work (the other paths need no hint)."""
    if not on_cpu() and not dropout:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    if kernel_takes(q, k, v):
        return _kernel_attention(q, k, v, scale, mask, dropout, causal)
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
    if dropout:
        probs = probs * mx.random.bernoulli(1 - dropout, probs.shape) * (1 / (1 - dropout))
    return (probs @ v).reshape(B, H, L, d)
