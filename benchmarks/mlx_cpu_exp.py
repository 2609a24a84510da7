"""Minimal reproduction: MLX's CPU backend evaluates transcendental functions one element at a time.

    python benchmarks/mlx_cpu_exp.py

Times ms per call on a (1024, 1376) float32 array (the LoRA benchmark's MLP activations) of:
MLX's exp, sigmoid, erf, silu, gelu (compiled), a multiply-add for scale, PyTorch's same ops in
this process, and our mlx_models.models.cpu_ops replacements: its pure-MLX formulas and the
compiled kernels of mlx_models/kernels; then a multiply-add on normal and on subnormal floats, the
parts of one attention layer of the MiniLM evaluation (with MLX's and PyTorch's fused attention),
and the dequantize of a 4-bit weight (MLX's against our kernel's). Prints markdown tables.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# isort: off
import mlx_models  # noqa: E402, F401  (OpenBLAS before MLX)
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import torch  # noqa: E402
from mlx_models import kernels  # noqa: E402
from mlx_models.models import cpu_ops  # noqa: E402
# isort: on

SHAPE = (1024, 1376)


def ms(fn, arg, repeats: int = 20) -> float:
    fn(arg)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - tic)
    return 1e3 * statistics.median(times)


def main() -> None:
    x = mx.random.normal(SHAPE)
    mx.eval(x)
    xt = torch.randn(SHAPE)
    mlx = lambda f: lambda a: mx.eval(mx.compile(f)(a))  # noqa: E731
    last = lambda f: lambda a: f(a, -1)  # noqa: E731
    rows = {
        "exp": (mx.exp, torch.exp, cpu_ops.exp),
        "sigmoid": (mx.sigmoid, torch.sigmoid, None),
        "erf": (mx.erf, torch.erf, None),
        "silu": (nn.silu, torch.nn.functional.silu, cpu_ops.silu),
        "gelu (erf)": (nn.gelu, torch.nn.functional.gelu, cpu_ops.gelu),
        "softmax, last axis": (last(mx.softmax), last(torch.softmax), cpu_ops.softmax),
        "logsumexp, last axis": (last(mx.logsumexp), last(torch.logsumexp), cpu_ops.logsumexp),
        "x * 1.5 + 1 (for scale)": (lambda a: a * 1.5 + 1, lambda a: a * 1.5 + 1, None),
    }
    print(f"ms per call, float32 {SHAPE}, MLX {mx.__version__} on {mx.default_device()}, PyTorch "
          f"{torch.__version__} ({torch.get_num_threads()} threads)\n")  # fmt: skip
    print(
        "| op | MLX | PyTorch | MLX ÷ PyTorch time | cpu_ops, formulas | cpu_ops, kernels "
        "| kernels ÷ PyTorch time |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for name, (ours_mlx, theirs, fast) in rows.items():
        a, b = ms(mlx(ours_mlx), x), ms(theirs, xt)
        formulas, native = (ours(fast, x, use_kernels) if fast else None for use_kernels in (False, True))
        cells = [f"{t:.2f}" if t else "–" for t in (formulas, native)]
        ratio = f"{native / b:.1f}×" if native else "–"
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.0f}× | {cells[0]} | {cells[1]} | {ratio} |")
    subnormals(mlx)
    attention_parts(mlx)
    dequantize(mlx)


def ours(fn, x, use_kernels: bool) -> float | None:
    """ms of a cpu_ops op, compiled, with or without the kernels (None: they are not built, or the
    op has no kernel and the time would repeat the formulas' column)."""
    native = kernels.native
    if use_kernels and (native is None or fn is cpu_ops.exp):
        return None
    kernels.native = native if use_kernels else None
    try:
        return ms(lambda a: mx.eval(mx.compile(fn)(a)), x)
    finally:
        kernels.native = native


def subnormals(mlx) -> None:
    """The same multiply-add on normal and on subnormal floats: x86 cores take a slow path per
    subnormal operand or result (why cpu_ops.exp flushes below -87 to exact zeros)."""
    fma = lambda v: v * 0.5 + v  # noqa: E731
    print("\n| x * 0.5 + x, x all equal to | MLX | PyTorch |\n|---|---:|---:|")
    for value in (1e-30, 1e-39):
        a, b = mx.full(SHAPE, value), torch.full(SHAPE, value)
        mx.eval(a)
        kind = "normal" if value >= torch.finfo(torch.float32).tiny else "subnormal"
        print(f"| {value:g} ({kind}) | {ms(mlx(fma), a):.2f} | {ms(fma, b):.2f} |")


def attention_parts(mlx) -> None:
    """Where the MiniLM evaluation's attention goes (batch 32, 12 heads, 128 tokens, head size
    32): the two batched GEMMs against the softmax between them."""
    q, k, v = (mx.random.normal((32, 12, 128, 32)) for _ in range(3))
    scores = q @ k.swapaxes(-1, -2)
    mx.eval(q, k, v, scores)
    parts = {
        "scores q @ k^T (384 GEMMs)": (lambda a: a @ k.swapaxes(-1, -2), q),
        "softmax, cpu_ops": (cpu_ops.softmax, scores),
        "softmax, MLX (precise)": (lambda a: mx.softmax(a, axis=-1, precise=True), scores),
        "probs @ v (384 GEMMs)": (lambda a: a @ v, scores),
        f"whole attention, cpu_ops ({'our fused kernel' if kernels.native else 'formulas'})": (
            lambda a: cpu_ops.attention(a, k, v, 32**-0.5),
            q,
        ),
        "whole attention, mx.fast.scaled_dot_product_attention": (
            lambda a: mx.fast.scaled_dot_product_attention(a, k, v, scale=32**-0.5),
            q,
        ),
    }
    print("\n| attention part, (32, 12, 128, 32), forward, no mask | ms |\n|---|---:|")
    for name, (fn, arg) in parts.items():
        print(f"| {name} | {ms(mlx(fn), arg):.1f} |")
    qt, kt, vt = (torch.randn(32, 12, 128, 32) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    theirs = ms(lambda a: sdpa(a, kt, vt), qt)
    print(f"| whole attention, PyTorch's scaled_dot_product_attention | {theirs:.1f} |")


def dequantize(mlx) -> None:
    """A 4-bit weight of the 7B shape (11008, 4096), group 64, back to float32: MLX's CPU
    dequantize (which computes in the scales' dtype, on one core) against our kernel (quant.py's
    path on the CPU), with float32 and with float16 scales (a converted checkpoint's)."""
    w = mx.random.normal((11008, 4096))
    print("\n| dequantize (11008, 4096), 4-bit, group 64 | MLX (+ cast to float32) ms | kernel ms | ratio |")
    print("|---|---:|---:|---:|")
    for dtype in (mx.float32, mx.float16):
        packed = mx.quantize(w.astype(dtype), 64, 4)
        mx.eval(*packed)
        theirs = ms(lambda p: mx.eval(mx.dequantize(*p, 64, 4).astype(mx.float32)), packed, 5)
        if kernels.native is None:
            print(f"| scales {dtype} | {theirs:.1f} | – | – |")
            continue
        mine = ms(lambda p: mx.eval(kernels.native.dequantize(*p, 64, 4)), packed, 5)
        print(f"| scales {dtype} | {theirs:.1f} | {mine:.1f} | {theirs / mine:.1f}× |")


if __name__ == "__main__":
    main()
