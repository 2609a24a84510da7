"""mlx_models' compiled CPU kernels (``ops.cpp``, ``elementwise.h``, ``norms.h``, ``attention.cpp``,
``attention.h`` and ``dequantize.cpp``): GELU, SiLU, softmax, log-sum-exp, LayerNorm, RMSNorm and
scaled-dot-product attention with their vjps, AdamW, a sum of squares and the affine dequantize of
quantized weights, vectorised for the machine they are built on and run on all its cores.
``make setup`` builds them on Linux (``make kernels``); ``native`` is the module, or None where it
is not built or was built against another mlx than the one installed (rebuild: ``make kernels``),
and models/cpu_ops.py and quant.py then fall back to their pure-MLX formulas and MLX's ops."""

import platform
import warnings

import mlx.core as mx


def _load():
    try:
        from . import _cpu_kernels
    except ImportError as e:  # not built (macOS runs on Metal)
        return None, f"not loaded ({e})"
    if _cpu_kernels.mlx_version != mx.__version__:  # its C++ layout is that mlx's: not safe to call
        return None, f"built against mlx {_cpu_kernels.mlx_version}, not the installed {mx.__version__}"
    return _cpu_kernels, None


native, _problem = _load()
if _problem and platform.system() == "Linux" and mx.default_device() == mx.cpu:
    warnings.warn(
        f"mlx_models' CPU kernels are {_problem}; training on the CPU is slower. "
        "Build them with `make kernels` (a checkout) or `pip install --no-build-isolation .` (a package).",
        stacklevel=2,
    )
