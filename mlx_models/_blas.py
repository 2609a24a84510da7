"""Load an optimized BLAS before MLX on Linux.

The Linux ``mlx-cpu`` wheel bundles the reference BLAS (~3 GFLOP/s on a GEMM). A
library loaded with RTLD_GLOBAL *before* ``libmlx.so`` wins the symbol lookup, so
OpenBLAS (Debian ``libopenblas0-pthread``) makes MLX's CPU matmuls ~50x faster.
This module must be imported before the first ``import mlx.core``.
"""

import ctypes
import ctypes.util
import os
import sys
import warnings

_CANDIDATES = ("libopenblas.so.0", "libopenblas.so", "libopenblasp-r0.so")


def _load() -> str:
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if os.environ.get("MLX_MODELS_NO_OPENBLAS"):
        return "reference BLAS bundled with mlx-cpu (MLX_MODELS_NO_OPENBLAS is set)"
    if "mlx.core" in sys.modules:
        warnings.warn(
            "mlx.core was imported before mlx_models, so OpenBLAS could not be loaded "
            "first; MLX CPU matmuls may be ~50x slower. Import mlx_models first.",
            stacklevel=3,
        )
        return "unknown (mlx.core imported before mlx_models)"
    names = list(_CANDIDATES)
    found = ctypes.util.find_library("openblas")
    if found:
        names.insert(0, found)
    for name in names:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return f"OpenBLAS ({name})"
        except OSError:
            continue
    warnings.warn(
        "OpenBLAS not found: MLX will use the reference BLAS of the mlx-cpu wheel "
        "(~50x slower matmuls). Install it with `apt-get install libopenblas0-pthread`.",
        stacklevel=3,
    )
    return "reference BLAS bundled with mlx-cpu (slow: apt-get install libopenblas0-pthread)"


BLAS = _load()
