"""LayerNorm and RMSNorm on the CPU kernels (mlx_models/kernels): ``nn.LayerNorm`` and
``nn.RMSNorm`` with the same parameters, whose float32 forward and backward on the CPU run as one
vectorised, multi-threaded kernel each instead of MLX's one-core ``mx.fast`` ops. The variance is
computed in two passes, so rows far from zero mean keep their precision (closer to float64 than
MLX's there; tests/test_cpu_ops.py). Elsewhere (Metal, CUDA, half precision, kernels not
built) they are nn's.
"""

from functools import cache

import mlx.core as mx
import mlx.nn as nn

from .. import kernels
from .cpu_ops import kernel_takes


@cache
def _native_layer_norm(eps: float):
    @mx.custom_function
    def f(x, weight, bias):
        return kernels.native.layer_norm(x, weight, bias, eps)

    @f.vjp
    def f_vjp(primals, cotangent, output):
        return kernels.native.layer_norm_vjp(primals[0], primals[1], cotangent, eps)

    return f


@cache
def _native_rms_norm(eps: float):
    @mx.custom_function
    def f(x, weight):
        return kernels.native.rms_norm(x, weight, eps)

    @f.vjp
    def f_vjp(primals, cotangent, output):
        return kernels.native.rms_norm_vjp(primals[0], primals[1], cotangent, eps)

    return f


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters), on the kernel for float32 on the CPU."""

    def __call__(self, x: mx.array) -> mx.array:
        weight, bias = self.get("weight"), self.get("bias")
        if not kernel_takes(x, weight, bias):
            return super().__call__(x)
        return _native_layer_norm(self.eps)(x, weight, bias)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (same parameters), on the kernel for float32 on the CPU."""

    def __call__(self, x: mx.array) -> mx.array:
        if not kernel_takes(x, self.weight):
            return super().__call__(x)
        return _native_rms_norm(self.eps)(x, self.weight)
