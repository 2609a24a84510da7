"""mlx_models' compiled CPU kernels (``ops.cpp``, ``elementwise.h``, ``norms.h``): GELU, SiLU,
softmax, log-sum-exp, LayerNorm and RMSNorm with their vjps, AdamW and a sum of squares,
vectorised for the machine they are built on and run on all its cores. ``make
setup`` builds them on Linux (``make kernels``); ``native`` is the module, or None where it is not
built, and models/cpu_ops.py then falls back to its pure-MLX formulas."""

import platform
import warnings

try:
    from . import _cpu_kernels as native
except ImportError as e:  # not built (macOS runs on Metal), or built against another mlx
    native = None
    if platform.system() == "Linux":
        warnings.warn(
            f"mlx_models' CPU kernels are not loaded ({e}); training on the CPU is ~1.6x slower. "
            "Build them with `make kernels`.",
            stacklevel=2,
        )
