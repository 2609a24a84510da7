"""The fused attention kernel (mlx_models/kernels/attention.h) called directly, against the
attention formula in MLX ops: values and gradients for every masking (none, causal, additive
bias, both, fully masked rows), grouped heads, blocks of 64 query rows with a tail, queries
shorter and longer than the keys, dropout (the kernel's own draw, replayed through the formula),
the layouts it reads in place or copies, and the inputs it refuses. Inside the models the same
op is tests/test_cpu_ops.py's and the parity tests'."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_models.kernels import native

pytestmark = pytest.mark.skipif(native is None, reason="mlx_models/kernels is not built (make kernels)")
LOWEST = float(np.finfo(np.float32).min)


@pytest.fixture(autouse=True)
def cpu():
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


def close(a, b, rtol=1e-5, atol=2e-6):
    a, b = np.array(a), np.array(b)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def formula(q, k, v, scale, bias, causal, keep=None):
    """softmax(scale q k^T + bias, causally masked) v, then the dropout multipliers `keep`. A row
    with every key masked is uniform, and its scores get no gradient (the output does not depend
    on them)."""
    groups = q.shape[1] // k.shape[1]
    k, v = mx.repeat(k, groups, axis=1), mx.repeat(v, groups, axis=1)
    s = (q @ k.swapaxes(-1, -2)) * scale
    if bias is not None:
        s = s + bias
    if causal:
        L, S = q.shape[2], k.shape[2]
        s = mx.where(mx.arange(S - L, S)[:, None] >= mx.arange(S)[None], s, LOWEST)
    masked = (s == LOWEST).all(axis=-1, keepdims=True)  # a uniform row that depends on no score
    p = mx.softmax(mx.where(masked, mx.stop_gradient(s), s), axis=-1, precise=True)
    return (p if keep is None else p * keep) @ v


def operands(B, H, Hkv, L, S, d, bias):
    """q and v as the models hand them over (transposed views of (B, L, H, d)), k contiguous; a
    padding bias broadcast over heads and queries, with query row 1 fully masked."""
    q = mx.random.normal((B, L, H, d)).transpose(0, 2, 1, 3)
    k = mx.random.normal((B, Hkv, S, d))
    v = mx.random.normal((B, S, Hkv, d)).transpose(0, 2, 1, 3)
    if not bias:
        return q, k, v, None
    keep = (mx.random.uniform(shape=(B, 1, 1, S)) > 0.3) | (mx.arange(S) == S - 1)
    rows = mx.arange(L)[:, None] != min(1, L - 1)  # (L, 1): row 1 sees no key
    b = mx.where(keep & rows, 0.0, LOWEST)
    return q, k, v, mx.broadcast_to(b, (B, H, L, S))


SHAPES = {
    "grouped heads, 3 blocks": (2, 4, 2, 130, 130, 16),
    "shorter queries": (1, 3, 3, 5, 19, 8),
    "longer queries": (1, 2, 1, 19, 5, 8),
    "head size 64": (2, 2, 1, 70, 70, 64),
}


@pytest.mark.parametrize("drop", [0.0, 0.3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_attention_and_its_vjp_against_the_formula(shape, causal, bias, drop):
    mx.random.seed(0)
    B, H, Hkv, L, S, d = shape
    q, k, v, b = operands(*shape, bias)
    scale, seed = d**-0.5, 1234
    keep = native.dropout_keep(seed, B, H, L, S, drop) if drop else None
    seeds = {"dropout": drop, "seed": mx.array([seed], mx.uint32)} if drop else {}
    out, stats = native.attention(q, k, v, b, scale, causal, **seeds)
    out = out.transpose(0, 2, 1, 3)
    close(out, formula(q, k, v, scale, b, causal, keep))
    g = mx.random.normal((B, L, H, d)).transpose(0, 2, 1, 3)
    grads = native.attention_vjp(q, k, v, b, out, stats, g, scale, causal, **seeds)
    theirs = mx.vjp(lambda q, k, v: formula(q, k, v, scale, b, causal, keep), [q, k, v], [g])[1]
    for ours, ref in zip(grads, theirs, strict=True):
        close(ours.transpose(0, 2, 1, 3), ref, rtol=1e-4, atol=1e-5)


def test_fully_masked_rows_are_uniform_over_all_keys():
    """As the formula's `where` makes them, also where causal blocks would cut the keys short."""
    q, k, v = (
        mx.random.normal((1, 1, 70, 8)),
        mx.random.normal((1, 1, 70, 8)),
        mx.random.normal((1, 1, 70, 8)),
    )
    b = mx.broadcast_to(mx.where(mx.arange(70)[:, None] == 3, LOWEST, 0.0), (1, 1, 70, 70))
    out = native.attention(q, k, v, b, 0.5, True)[0]
    close(out[0, 3, 0], v[0, 0].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_layouts_read_in_place_or_copied():
    """Cotangents broadcast over the batch (read in place, stride 0) or over the positions
    (copied: a row stride shorter than a row), sliced heads, and a contiguous bias."""
    mx.random.seed(2)
    B, H, L, d = 2, 4, 33, 16
    q, k, v, _ = operands(B, H, H, L, L, d, False)
    bias = mx.random.normal((B, H, L, L))
    out, stats = native.attention(q, k, v, bias, 0.25, False)
    out = out.transpose(0, 2, 1, 3)
    close(out, formula(q, k, v, 0.25, bias, False))
    for g in (
        mx.broadcast_to(mx.random.normal((1, H, L, d)), (B, H, L, d)),
        mx.broadcast_to(mx.random.normal((B, H, 1, d)), (B, H, L, d)),
    ):
        grads = native.attention_vjp(q, k, v, bias, out, stats, g, 0.25, False)
        theirs = mx.vjp(lambda q, k, v: formula(q, k, v, 0.25, bias, False), [q, k, v], [g])[1]
        for ours, ref in zip(grads, theirs, strict=True):
            close(ours.transpose(0, 2, 1, 3), ref, rtol=1e-4, atol=1e-5)
    wide = mx.random.normal((B, 2 * H, L, d))[:, ::2]  # every other head
    close(
        native.attention(wide, k, v, None, 0.25, False)[0].transpose(0, 2, 1, 3),
        formula(wide, k, v, 0.25, None, False),
    )


def test_dropout_draws():
    """The keep multipliers: 0 with probability p, else 1 / (1 - p); independent of row, head and
    seed (no two rows nor two seeds the same); as often dropped in every column."""
    keep = np.array(native.dropout_keep(7, 2, 3, 64, 256, 0.1))
    assert set(np.unique(keep)) == {0.0, np.float32(1 / 0.9)}
    dropped = keep == 0
    assert abs(dropped.mean() - 0.1) < 0.003  # 98k draws: 3 standard deviations are 0.0029
    assert np.abs(dropped.reshape(-1, 256).mean(0) - 0.1).max() < 0.1  # no dead key column
    rows = dropped.reshape(-1, 256)
    assert len({r.tobytes() for r in rows}) == len(rows)
    assert abs(np.corrcoef(rows[:-1].ravel(), rows[1:].ravel())[0, 1]) < 0.02
    assert (np.array(native.dropout_keep(8, 2, 3, 64, 256, 0.1)) != keep).mean() > 0.1


def test_attention_refuses_bad_inputs():
    q = mx.ones((1, 2, 4, 8))
    with pytest.raises(ValueError, match="float32"):
        native.attention(q.astype(mx.float16), q, q, None, 1.0, False)
    with pytest.raises(ValueError, match="shapes"):
        native.attention(q, mx.ones((1, 2, 4, 7)), mx.ones((1, 2, 4, 7)), None, 1.0, False)
    with pytest.raises(ValueError, match="shapes"):
        native.attention(q, mx.ones((1, 3, 4, 8)), mx.ones((1, 3, 4, 8)), None, 1.0, False)  # 2 % 3 heads
    with pytest.raises(ValueError, match="shapes"):
        native.attention(q, q, q, mx.ones((1, 1, 4, 4)), 1.0, False)  # the bias must be (B, H, L, S)
    with pytest.raises(ValueError, match="4-d"):
        native.attention(q[0], q[0], q[0], None, 1.0, False)
    with pytest.raises(ValueError, match="seed"):
        native.attention(q, q, q, None, 1.0, False, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        native.attention(q, q, q, None, 1.0, False, 1.0, mx.array([1], mx.uint32))
