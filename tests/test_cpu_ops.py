"""The CPU fast paths of models/cpu_ops.py against MLX's built-ins: values and gradients, over the
whole float32 range that reaches them (saturated exponentials, masked scores, grouped heads). Every
test runs twice: with the compiled kernels (mlx_models/kernels) and with the pure-MLX formulas
that stand in where they are not built."""

import math
import platform

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_models import kernels
from mlx_models.models import cpu_ops, norms
from mlx_models.models.base import causal_mask

BUILT = kernels.native  # before any test swaps it out


def close(a, b, rtol=2e-6, atol=2e-6):
    a, b = np.array(a), np.array(b)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.fixture
def x():
    mx.random.seed(0)
    wide = mx.random.normal((64, 257)) * 6  # most of the interesting range, odd width
    edges = mx.array([-1e30, -200.0, -88.0, -87.0, -20.0, -1e-8, 0.0, 1e-8, 20.0, 87.0, 88.0])
    return wide, edges


@pytest.fixture(autouse=True, params=["kernels", "formulas"])
def cpu(request, monkeypatch):
    """The fast paths are the CPU's: run there (on a Mac too), then restore the device; with the
    compiled kernels, then without them."""
    if request.param == "formulas":
        monkeypatch.setattr(kernels, "native", None)
    elif kernels.native is None:
        pytest.skip("mlx_models/kernels is not built (make kernels)")
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield request.param
    mx.set_default_device(device)


def test_on_cpu_here():
    assert cpu_ops.on_cpu()  # else the tests below compare the built-ins with themselves


class Spy:
    """A module's stand-in that records which of its functions are called."""

    def __init__(self, module):
        self.module, self.calls = module, []

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self.module, name)


@pytest.mark.skipif(platform.system() != "Linux", reason="make setup builds the kernels on Linux")
def test_kernels_are_built_and_used(cpu, monkeypatch):
    """Were the kernels missing, the kernel half of this file would skip and training would run
    ~1.6x slower without a word but the import's warning."""
    assert BUILT is not None, "mlx_models/kernels is not built: make kernels"
    spy = Spy(BUILT)
    monkeypatch.setattr(kernels, "native", spy if cpu == "kernels" else None)
    x = mx.ones((2, 3))
    mx.eval(cpu_ops.gelu(x), cpu_ops.silu(x), cpu_ops.softmax(x), cpu_ops.logsumexp(x))
    assert spy.calls == (["gelu", "silu", "softmax", "logsumexp"] if cpu == "kernels" else [])


def test_exp_matches_within_float32_rounding(x):
    wide, edges = x
    close(cpu_ops.exp(wide), mx.exp(wide), atol=0)
    ours, theirs = np.array(cpu_ops.exp(edges)), np.array(mx.exp(edges))
    assert (ours[:3] == 0).all()  # below float32's normal range: exact zeros, as MLX's exp
    np.testing.assert_allclose(ours[2:], theirs[2:], rtol=3e-6, atol=2e-38)


@pytest.mark.parametrize("name", ["silu", "gelu"])
def test_activations_and_their_gradients(x, name):
    wide, edges = x
    ours, builtin = getattr(cpu_ops, name), {"silu": nn.silu, "gelu": nn.gelu}[name]
    inputs = mx.concatenate([wide.reshape(-1), edges[2:]])
    close(ours(inputs), builtin(inputs), rtol=1e-5, atol=2e-6)  # erf: |error| < 1.5e-7
    weight = mx.cos(inputs)
    grad = lambda f: mx.grad(lambda v: (f(v) * weight).sum())(inputs)  # noqa: E731
    close(grad(ours), grad(builtin), rtol=1e-5, atol=5e-6)


def test_half_precision_keeps_the_builtins():
    h = mx.array([0.5, -2.0], mx.float16)
    assert mx.array_equal(cpu_ops.silu(h), nn.silu(h)) and mx.array_equal(cpu_ops.gelu(h), nn.gelu(h))


def test_softmax(x):
    wide, _ = x
    close(cpu_ops.softmax(wide), mx.softmax(wide, axis=-1, precise=True), rtol=1e-5, atol=1e-7)
    weight = mx.cos(wide)
    grad = lambda f: mx.grad(lambda v: (f(v) * weight).sum())(wide)  # noqa: E731
    close(grad(cpu_ops.softmax), grad(lambda v: mx.softmax(v, axis=-1, precise=True)), rtol=1e-4, atol=2e-6)


def test_masked_softmax_has_exact_zeros_and_no_subnormals():
    """Masked scores must give exact zeros: subnormal probabilities made causal attention 5x
    slower on x86 (every multiply with them is a microcode assist), forward and backward."""
    mx.random.seed(0)
    scores = mx.where(mx.tri(64, dtype=mx.bool_), mx.random.normal((64, 64)) * 4, mx.finfo(mx.float32).min)
    probs, grad = mx.vjp(cpu_ops.softmax, [scores], [mx.random.normal((64, 64)) * 1e-3])
    for a in (np.array(probs[0]), np.array(grad[0])):
        assert ((a == 0) | (np.abs(a) >= np.finfo(np.float32).tiny)).all()
    assert (np.array(probs[0])[np.triu_indices(64, 1)] == 0).all()


def causal_padded(L: int, keep: mx.array) -> mx.array:
    idx = mx.arange(L)
    return (idx[:, None] >= idx[None]) & keep[:, None, None, :] | mx.eye(L, dtype=mx.bool_)


@pytest.mark.parametrize("kv_heads", [8, 2])
@pytest.mark.parametrize("mask", ["none", "causal", "bool", "additive"])
def test_attention_and_its_gradients(kv_heads, mask):
    mx.random.seed(1)
    B, H, L, d = 2, 8, 19, 16
    q, k, v = (mx.random.normal((B, h, L, d)) for h in (H, kv_heads, kv_heads))
    keep = mx.arange(L)[None] < mx.array([[L], [11]])  # the second row padded after 11 tokens
    masks = {
        "none": None,
        "causal": "causal",
        "bool": causal_padded(L, keep),
        "additive": mx.where(keep, 0.0, -1e9)[:, None, None, :].astype(mx.float32),
    }
    m, scale = masks[mask], 1 / math.sqrt(d)
    fast = lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=m)  # noqa: E731
    ours = lambda q, k, v: cpu_ops.attention(q, k, v, scale, m)  # noqa: E731
    close(ours(q, k, v), fast(q, k, v), rtol=1e-5, atol=1e-6)
    weight = mx.random.normal(q.shape)
    grads = lambda f: mx.grad(lambda *a: (f(*a) * weight).sum(), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    for a, b in zip(grads(ours), grads(fast), strict=True):
        close(a, b, rtol=1e-4, atol=1e-5)


def test_attention_causal_hint():
    """``causal=True`` with Llama's causal-and-padding mask (left and right padding, more rows than
    one of the kernel's blocks) only skips work: values and gradients as without the hint."""
    mx.random.seed(3)
    B, H, L, d = 2, 4, 150, 16
    q, k, v = (mx.random.normal((B, h, L, d)) for h in (H, 2, 2))
    keep = mx.array([[0] * 40 + [1] * (L - 40), [1] * 100 + [0] * (L - 100)])
    m, weight = causal_mask(L, keep), mx.random.normal(q.shape)
    loss = lambda hint: lambda *a: (cpu_ops.attention(*a, 0.25, m, causal=hint) * weight).sum()  # noqa: E731
    grads = lambda hint: mx.grad(loss(hint), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    close(cpu_ops.attention(q, k, v, 0.25, m, causal=True), cpu_ops.attention(q, k, v, 0.25, m))
    for a, b in zip(grads(True), grads(False), strict=True):
        close(a, b, rtol=1e-5, atol=1e-6)


def test_attention_dropout():
    """Dropout drops probabilities with probability p and scales the others by 1 / (1 - p), drawn
    from MLX's random state (the same seed, the same draw); none at p = 0."""
    q = mx.random.normal((2, 3, 40, 8))
    plain = cpu_ops.attention(q, q, q, 0.5, None)
    mx.random.seed(5)
    out = cpu_ops.attention(q, q, q, 0.5, None, 0.3)
    assert not mx.allclose(out, plain).item()
    mx.random.seed(5)
    close(cpu_ops.attention(q, q, q, 0.5, None, 0.3), out, rtol=0, atol=0)
    close(cpu_ops.attention(q, q, q, 0.5, None, 0.0), plain, rtol=0, atol=0)
    v = mx.ones_like(q)  # each output is then the row's sum of kept probabilities: ~1 on average
    rows = np.array(cpu_ops.attention(q, q, v, 0.5, None, 0.3))[..., 0]
    assert abs(rows.mean() - 1) < 0.05 and rows.std() > 0.05


def test_silu_far_below_zero_and_at_infinity():
    x = mx.array([-3e38, -100.0, float("-inf"), float("nan")])
    ours, theirs = np.array(cpu_ops.silu(x)), np.array(nn.silu(x))
    np.testing.assert_allclose(ours[:2], theirs[:2], atol=1e-30)
    assert np.isnan(ours[2:]).all() and np.isnan(theirs[2:]).all()


@pytest.mark.parametrize("mask", ["causal", "per-head bool", "per-head additive"])
def test_attention_shorter_queries_and_per_head_masks(mask):
    """Queries over the last L of S keys (causal offset), and masks with a head axis under GQA."""
    mx.random.seed(2)
    B, H, Hk, L, S, d = 2, 4, 2, 5, 19, 8
    q, k, v = mx.random.normal((B, H, L, d)), mx.random.normal((B, Hk, S, d)), mx.random.normal((B, Hk, S, d))
    keep = mx.random.uniform(shape=(B, H, L, S)) > 0.3
    keep = keep | (mx.arange(S) == S - 1)  # every query sees a key
    masks = {"causal": "causal", "per-head bool": keep, "per-head additive": mx.where(keep, 0.0, -1e9)}
    m = masks[mask]
    fast = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=m)
    close(cpu_ops.attention(q, k, v, 0.3, m), fast, rtol=1e-5, atol=1e-6)


def test_logsumexp_and_cross_entropy_with_their_gradients(x):
    wide, _ = x
    close(cpu_ops.logsumexp(wide), mx.logsumexp(wide, axis=-1), rtol=1e-6)
    targets = mx.arange(wide.shape[0]) % wide.shape[1]
    weight = mx.cos(mx.arange(wide.shape[0]))
    for ours, theirs in (
        (cpu_ops.logsumexp, lambda v: mx.logsumexp(v, axis=-1)),
        (lambda v: cpu_ops.cross_entropy(v, targets), lambda v: nn.losses.cross_entropy(v, targets)),
    ):
        close(ours(wide), theirs(wide), rtol=1e-6, atol=4e-6)  # lse ~ 20: float32 eps * 20
        grad = lambda f: mx.grad(lambda v: (f(v) * weight).sum())(wide)  # noqa: E731
        close(grad(ours), grad(theirs), rtol=1e-5, atol=1e-7)


def torch_norm(kind: str, x, params: dict, eps: float, weight):
    """(output, grads of x, weight, bias) of the norm in float64 torch: the reference."""
    import torch

    t = {k: torch.tensor(np.array(v), dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    tx = torch.tensor(np.array(x), dtype=torch.float64, requires_grad=True)
    if kind == "layer":
        y = torch.nn.functional.layer_norm(tx, (tx.shape[-1],), t["weight"], t["bias"], eps)
    else:
        y = tx * torch.rsqrt(tx.pow(2).mean(-1, keepdim=True) + eps) * t["weight"]
    (y * torch.tensor(np.array(weight), dtype=torch.float64)).sum().backward()
    return y.detach().numpy(), tx.grad.numpy(), {k: v.grad.numpy() for k, v in t.items()}


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norms_and_their_gradients(kind, cpu):
    """LayerNorm and RMSNorm (our modules) against float64 torch, values and the gradients of x,
    weight and bias: rows far from zero mean (the variance must not cancel: MLX's own LayerNorm is
    3x further off there), enough rows to split over the threads, BERT's eps 1e-12."""
    mx.random.seed(5)
    x = mx.random.normal((3, 257, 96)) * 2 + mx.array([0.0, 300.0, -7.0])[:, None, None]
    eps = 1e-12 if kind == "layer" else 1e-6
    module = norms.LayerNorm(96, eps=eps) if kind == "layer" else norms.RMSNorm(96, eps=eps)
    params = {k: mx.random.normal(v.shape) for k, v in module.parameters().items()}
    module.update(params)
    weight = mx.cos(x)

    def loss(p, v):
        module.update(p)
        return (module(v) * weight).sum()

    gp, gx = mx.grad(loss, argnums=(0, 1))(params, x)
    y_ref, gx_ref, gp_ref = torch_norm(kind, x, params, eps, weight)
    # float32 x ~ 300: ulp 3e-5, divided by std 2; MLX's own (the formulas' path) is 1.8e-4 off
    close(module(x), y_ref, rtol=1e-5, atol=1e-4 if cpu == "kernels" else 3e-4)
    close(gx, gx_ref, rtol=1e-4, atol=2e-4)
    for name in params:
        close(gp[name], gp_ref[name], rtol=1e-4, atol=5e-3)  # sums over 771 rows
