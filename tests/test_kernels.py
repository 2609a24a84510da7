"""The compiled CPU kernels (mlx_models/kernels) called directly: layouts, sizes that split over
the threads, and the inputs they refuse. Their values and gradients inside the models' ops are
tests/test_cpu_ops.py's."""

import gc

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_models.kernels import native

pytestmark = pytest.mark.skipif(native is None, reason="mlx_models/kernels is not built (make kernels)")


@pytest.fixture(autouse=True)
def cpu():
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


def close(a, b, rtol, atol):
    a, b = np.array(a), np.array(b)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_kernels_take_any_layout_and_reject_what_they_cannot_do():
    """Transposed and sliced inputs are made contiguous; other dtypes and shapes are refused."""
    a = mx.random.normal((33, 17))
    close(native.softmax(a.T), mx.softmax(a.T, axis=-1), rtol=1e-5, atol=1e-7)
    close(native.gelu(a[::2, 1:]), nn.gelu(a[::2, 1:]), rtol=1e-5, atol=2e-6)
    with pytest.raises(ValueError, match="float32"):
        native.gelu(a.astype(mx.float16))
    with pytest.raises(ValueError, match="shapes"):
        native.gelu_vjp(a, a[1:])
    with pytest.raises(ValueError, match="scalar"):
        native.softmax(mx.array(1.0))


@pytest.mark.parametrize("shape", [(1,), (7,), (16384 * 3 + 5,), (3, 70001), (4099, 5)])
def test_sizes_that_split_over_threads(shape):
    """Blocks of 16384 elements (or whole rows) are shared out: odd tails, rows longer than a
    block, many short rows. The row ops against float64 (on 70k-long rows MLX's own softmax is
    1e-4 off, ours 1e-5)."""
    mx.random.seed(3)
    a, g = mx.random.normal(shape) * 4, mx.random.normal(shape)
    close(native.gelu(a), nn.gelu(a), rtol=1e-5, atol=2e-6)
    close(native.silu_vjp(a, g), mx.vjp(nn.silu, [a], [g])[1][0], rtol=1e-5, atol=5e-6)
    x, dy = np.array(a, np.float64), np.array(g, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    y = e / e.sum(-1, keepdims=True)
    close(native.softmax(a), y, rtol=2e-5, atol=1e-8)
    close(
        native.softmax_vjp(mx.array(y, mx.float32), g),
        y * (dy - (dy * y).sum(-1, keepdims=True)),
        rtol=1e-4,
        atol=1e-6,  # g - sum(g y) cancels: float32 eps times |g|
    )
    lse = np.log(e.sum(-1)) + x.max(-1)
    close(native.logsumexp(a), lse, rtol=1e-6, atol=1e-6)
    w = np.cos(lse)
    grad = native.logsumexp_vjp(a, mx.array(lse, mx.float32), mx.array(w, mx.float32))
    close(grad, w[..., None] * y, rtol=2e-5, atol=1e-8)


def test_inside_compile_and_nan_propagates():
    f = mx.compile(lambda v: native.gelu(v * 2.0) + 1.0)
    a = mx.array([0.5, float("nan"), -3.0])
    out = np.array(f(a))
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], np.array(nn.gelu(a * 2.0) + 1.0)[[0, 2]], atol=1e-6)
    assert np.isnan(np.array(native.softmax(mx.array([[1.0, float("nan")]])))).all()


def test_sum_squares_in_double():
    """The gradient norm's sum: partial sums in double (MLX's float32 sum of 3.9M squares is 0.3%
    off), NaN kept, 0 for an empty array."""
    mx.random.seed(4)
    a = mx.random.normal((5000, 777))
    np.testing.assert_allclose(native.sum_squares(a).item(), (np.array(a, np.float64) ** 2).sum(), rtol=1e-7)
    assert native.sum_squares(a[:, ::3]).item() == pytest.approx((np.array(a[:, ::3], np.float64) ** 2).sum())
    assert np.isnan(native.sum_squares(mx.array([float("nan"), 1.0])).item())
    assert native.sum_squares(mx.zeros((0,))).item() == 0.0


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (4099, 7), (2, 3, 1000)])
def test_norm_kernels_at_odd_sizes(shape):
    """LayerNorm and RMSNorm and their vjps against mx.fast's: one element, short rows, many rows
    that split over the threads (dw, db summed per thread), rows longer than a vector register."""
    mx.random.seed(6)
    x, g = mx.random.normal(shape), mx.random.normal(shape)
    w, b = mx.random.normal(shape[-1:]), mx.random.normal(shape[-1:])
    close(native.layer_norm(x, w, b, 1e-5), mx.fast.layer_norm(x, w, b, 1e-5), rtol=1e-4, atol=1e-5)
    close(native.rms_norm(x, w, 1e-6), mx.fast.rms_norm(x, w, 1e-6), rtol=1e-4, atol=1e-5)
    ln = mx.vjp(lambda *a: mx.fast.layer_norm(*a, 1e-5), [x, w, b], [g])[1]
    for ours, theirs in zip(native.layer_norm_vjp(x, w, g, 1e-5), ln, strict=True):
        close(ours, theirs, rtol=1e-3, atol=1e-3)
    rms = mx.vjp(lambda *a: mx.fast.rms_norm(*a, 1e-6), [x, w], [g])[1]
    for ours, theirs in zip(native.rms_norm_vjp(x, w, g, 1e-6), rms, strict=True):
        close(ours, theirs, rtol=1e-3, atol=1e-3)


def test_norm_kernels_refuse_mismatched_shapes():
    x = mx.ones((4, 8))
    with pytest.raises(ValueError, match="shapes"):
        native.layer_norm(x, mx.ones((7,)), mx.ones((8,)), 1e-5)
    with pytest.raises(ValueError, match="shapes"):
        native.rms_norm_vjp(x, mx.ones((8,)), mx.ones((4, 7)), 1e-5)
    with pytest.raises(ValueError, match="scalar"):
        native.rms_norm(mx.array(1.0), mx.ones((1,)), 1e-5)


def test_built_against_the_installed_mlx():
    """kernels/__init__.py refuses a module built against another mlx (its C++ layout differs)."""
    assert native.mlx_version == mx.__version__


def test_zero_length_rows_and_infinite_rows():
    """Rows of length 0 are refused by the kernels (cpu_ops hands empty arrays to MLX's ops); a
    log-sum-exp row of -inf is -inf and one holding +inf is +inf, as MLX's."""
    from mlx_models.models import cpu_ops

    empty = mx.zeros((3, 0))
    for op in (native.softmax, native.logsumexp):
        with pytest.raises(ValueError, match="length"):
            op(empty)
    assert cpu_ops.softmax(empty).shape == (3, 0)
    with pytest.raises(ValueError, match="empty"):  # MLX's own answer
        cpu_ops.logsumexp(empty)
    inf = float("inf")
    rows = mx.array([[-inf, -inf], [1.0, inf], [0.0, -inf]])
    np.testing.assert_array_equal(np.array(native.logsumexp(rows)), np.array(mx.logsumexp(rows, axis=-1)))


def test_silu_gradient_far_below_zero():
    """Below -88 the SiLU gradient is (-)0 as MLX's, not a subnormal; NaN at -inf as MLX's."""
    x, g = mx.array([-100.0, -1e30, float("-inf")]), mx.ones((3,))
    ours, theirs = np.array(native.silu_vjp(x, g)), np.array(mx.vjp(nn.silu, [x], [g])[1][0])
    assert (ours[:2] == 0).all() and (theirs[:2] == 0).all()
    assert np.isnan(ours[2]) and np.isnan(theirs[2])


def test_adamw_and_sum_squares_refuse_bad_inputs():
    p, k = mx.ones((4, 3)), mx.ones((9,))
    with pytest.raises(ValueError, match="float32"):
        native.adamw(p, p.astype(mx.float16), p, p, k)
    with pytest.raises(ValueError, match="shapes"):
        native.adamw(p, p, p, p, mx.ones((8,)))
    with pytest.raises(ValueError, match="float32"):
        native.sum_squares(p.astype(mx.bfloat16))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_dequantize_equals_mlx_to_the_bit(bits, dtype, group):
    """float32 values equal to mx.dequantize's in the scales' dtype, cast to float32, bit for bit:
    MLX rounds the product and the sum to that dtype, and so do we (and fuse neither)."""
    mx.random.seed(bits + group)
    w = mx.random.normal((3, 70, 256)) * 3  # 210 rows, several blocks of groups per thread
    q, s, b = mx.quantize(w, group, bits)
    s, b = s.astype(dtype), b.astype(dtype)
    ours = native.dequantize(q, s, b, group, bits)
    theirs = mx.dequantize(q, s, b, group, bits).astype(mx.float32)
    assert ours.dtype == mx.float32 and ours.shape == w.shape
    np.testing.assert_array_equal(np.array(ours), np.array(theirs))


def test_dequantize_at_float16s_edges_and_in_any_layout():
    """Float16 subnormal and overflowing results as MLX gives them (to zero, subnormal, infinity);
    transposed and sliced inputs read through their strides."""
    q = mx.array(np.random.default_rng(0).integers(0, 2**32, (64, 8), dtype=np.uint32))
    groups = np.array([[1e-8, 0.0], [3e-6, 1e-7], [-7e-5, 2e-5], [5000.0, 1.0], [-2e4, -3e4]] * 13)[:64, None]
    s, b = (mx.array(groups[..., i]).astype(mx.float16) for i in (0, 1))
    ours, theirs = native.dequantize(q, s, b, 64, 4), mx.dequantize(q, s, b, 64, 4).astype(mx.float32)
    assert np.isinf(np.array(theirs)).any() and (np.abs(np.array(theirs)) < 6e-5).any()
    np.testing.assert_array_equal(np.array(ours), np.array(theirs))
    wide = mx.random.normal((128, 64))
    qt, st, bt = mx.quantize(wide, 32, 4)
    views = (qt.T.T[::2], st[::2], bt[::2])  # every other row: strided
    np.testing.assert_array_equal(
        np.array(native.dequantize(*views, 32, 4)), np.array(mx.dequantize(*views, 32, 4))
    )


def test_dequantize_refuses_what_it_cannot_do():
    q, s, b = mx.quantize(mx.random.normal((8, 64)), 64, 4)
    bad = {
        "bits must be 2, 4 or 8": (q, s, b, 64, 3),
        "group_size must be a multiple": (q, s, b, 4, 2),
        "w must be uint32": (q.astype(mx.int32), s, b, 64, 4),
        "scales must be float32": (q, s.astype(mx.int32), b.astype(mx.int32), 64, 4),
        "biases must match": (q, s, b.astype(mx.float16), 64, 4),
        "one value per group": (q, s[:4], b[:4], 64, 4),
        "does not split into groups": (q[:, :4], s, b, 64, 4),
    }
    for message, args in bad.items():
        with pytest.raises(ValueError, match=message):
            native.dequantize(*args)


def quantized(rows: int, cols: int, group: int, bits: int, dtype=mx.float16, seed: int = 0):
    mx.random.seed(seed)
    q, s, b = mx.quantize(mx.random.normal((rows, cols)) * 0.02, group, bits)
    return q, s.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize(
    "rows, cols, bits, dtype, group",
    [
        (4200, 4096, 4, mx.float16, 64),  # 69 MB in float32: blocks of rows (forward) and columns (vjp)
        (1100, 16384, 8, mx.float32, 32),  # 72 MB
        (4100, 4224, 2, mx.bfloat16, 128),  # 69 MB, the last blocks short
        (96, 128, 4, mx.float16, 64),  # one block
    ],
)
def test_dequantized_matmul_equals_the_dense_products_to_the_bit(rows, cols, bits, dtype, group):
    """x @ dequantize(w).T and g @ dequantize(w) by blocks of the weight (48 MB at most: several
    blocks for the big weights) equal the products with the whole dequantized weight, bit for bit:
    each output element is one sgemm's whole dot product. Batch axes are kept, inputs in any layout."""
    q, s, b = quantized(rows, cols, group, bits, dtype)
    dense = native.dequantize(q, s, b, group, bits)
    x, g = mx.random.normal((2, 3, cols)), mx.random.normal((5, rows))
    forward = native.dequantized_matmul(x, q, s, b, group, bits, True)
    vjp = native.dequantized_matmul(g, q, s, b, group, bits, False)
    assert forward.shape == (2, 3, rows) and vjp.shape == (5, cols)
    np.testing.assert_array_equal(np.array(forward), np.array(x @ dense.T))
    np.testing.assert_array_equal(np.array(vjp), np.array(g @ dense))
    xt = mx.random.normal((cols, 4)).T  # transposed: read as the contiguous copy
    np.testing.assert_array_equal(
        np.array(native.dequantized_matmul(xt, q, s, b, group, bits, True)),
        np.array(mx.contiguous(xt) @ dense.T),
    )


def test_dequantized_matmul_never_holds_the_whole_dequantized_weight():
    """A 8192 x 8192 weight is 268 MB in float32; its product takes the output and one block
    (48 MB at most), in MLX's own memory count: QLoRA's memory stays that of the 4-bit weights."""
    q, s, b = quantized(8192, 8192, 64, 4)
    x, g = mx.random.normal((16, 8192)), mx.random.normal((16, 8192))
    mx.eval(q, s, b, x, g)
    for transpose, inp in ((True, x), (False, g)):
        gc.collect()
        mx.clear_cache()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(native.dequantized_matmul(inp, q, s, b, 64, 4, transpose))
        assert mx.get_peak_memory() - base <= 48 * 2**20 + 16 * 8192 * 4 + 2**20


def test_dequantized_matmul_of_an_empty_weight_is_zeros():
    """A weight with no rows or no columns: the products are empty sums, zeros (the block plan
    divided by the weight's row or column size: the process died of SIGFPE)."""
    no_rows = mx.quantize(mx.zeros((0, 128)), 64, 4)
    no_cols = (mx.zeros((5, 0), mx.uint32), mx.zeros((5, 0), mx.float16), mx.zeros((5, 0), mx.float16))
    cases = [
        (mx.ones((3, 0)), no_rows, False, (3, 128)),
        (mx.ones((3, 128)), no_rows, True, (3, 0)),
        (mx.ones((3, 0)), no_cols, True, (3, 5)),
        (mx.ones((3, 5)), no_cols, False, (3, 0)),
    ]
    for x, (q, s, b), transpose, shape in cases:
        out = np.array(native.dequantized_matmul(x, q, s, b, 64, 4, transpose))
        np.testing.assert_array_equal(out, np.zeros(shape, np.float32))


def test_dequantized_matmul_inside_compile_and_refusals():
    q, s, b = quantized(96, 128, 64, 4)
    x = mx.random.normal((3, 128))
    f = mx.compile(lambda x: native.dequantized_matmul(x, q, s, b, 64, 4, True) * 2)
    np.testing.assert_array_equal(np.array(f(x)), np.array(x @ native.dequantize(q, s, b, 64, 4).T * 2))
    assert np.array(native.dequantized_matmul(mx.zeros((0, 128)), q, s, b, 64, 4, True)).shape == (0, 96)
    bad = {
        "x must be float32": (x.astype(mx.float16), q, s, b, 64, 4, True),
        "last axis must be the weight's output size": (x, q, s, b, 64, 4, False),
        "last axis must be the weight's input size": (x[:, :64], q, s, b, 64, 4, True),
        "w must be a 2-D weight": (x, q[None], s[None], b[None], 64, 4, True),
        "bits must be 2, 4 or 8": (x, q, s, b, 64, 3, True),
    }
    for message, args in bad.items():
        with pytest.raises(ValueError, match=message):
            native.dequantized_matmul(*args)
