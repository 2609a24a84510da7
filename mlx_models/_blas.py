"""Load an optimized BLAS before MLX on Linux.

The Linux ``mlx-cpu`` wheel bundles the reference BLAS, tens of times slower on a GEMM. A
library loaded with RTLD_GLOBAL *before* ``libmlx.so`` wins the symbol lookup, so OpenBLAS
serves MLX's CPU matmuls. This module must run before the first
``import mlx.core``: once mlx.core is loaded its BLAS symbols are bound, and a later OpenBLAS is
not used. Importing mlx_models too late is never silent: a `SlowBLASWarning` (always shown) says
so and how to fix it, and ``mlx_models.BLAS`` names the reference BLAS.

The OpenMP build of OpenBLAS (Debian ``libopenblas0-openmp``) comes first: once loaded
globally, OpenBLAS also takes the BLAS calls of PyTorch in the same process (libtorch
exports ``sgemm_`` without binding it to itself). The pthread build then runs its own
thread pool against PyTorch's OpenMP threads, and a PyTorch train step is several times slower;
the OpenMP build shares PyTorch's OpenMP runtime (one ``libgomp.so.1``). PyTorch in the same
process still loses some speed (benchmarks/torch_inprocess.py).
"""

import ctypes
import ctypes.util
import os
import sys
import warnings

_OPENMP = tuple(f"/usr/lib/{a}-linux-gnu/openblas-openmp/libopenblas.so.0" for a in ("x86_64", "aarch64"))
_CANDIDATES = (*_OPENMP, "libopenblas.so.0", "libopenblas.so", "libopenblasp-r0.so")
_INSTALL = "apt-get install libopenblas0-openmp"
LATE = (
    "mlx.core was imported before mlx_models, so MLX is bound to the reference BLAS of the mlx-cpu "
    "wheel and its CPU matmuls run ~50x slower; import mlx_models before mlx (or mlx_lm), or start "
    "Python with LD_PRELOAD=libopenblas.so.0"
)


class SlowBLASWarning(UserWarning):
    """MLX runs on the slow reference BLAS in this process; always shown, once per process."""


warnings.simplefilter("always", SlowBLASWarning)


def _openblas_in_process() -> str | None:
    """The path of an OpenBLAS already mapped into this process (/proc/self/maps), if any."""
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return None
    found = [line.split()[-1] for line in maps.splitlines() if "libopenblas" in line and "/" in line]
    return found[0] if found else None


def _load() -> str:
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if os.environ.get("MLX_MODELS_NO_OPENBLAS"):
        return "reference BLAS bundled with mlx-cpu (MLX_MODELS_NO_OPENBLAS is set)"
    if "mlx.core" in sys.modules:
        loaded = _openblas_in_process()
        if loaded:  # LD_PRELOAD, or loaded by hand before mlx.core
            return f"OpenBLAS ({loaded}, loaded before mlx.core)"
        warnings.warn(SlowBLASWarning(LATE), stacklevel=3)
        return "reference BLAS bundled with mlx-cpu (slow: mlx.core was imported before mlx_models)"
    names = list(_CANDIDATES)
    found = ctypes.util.find_library("openblas")
    if found:
        names.insert(len(_OPENMP), found)
    for name in names:
        try:
            lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        if _is_openmp_build(lib):
            return f"OpenBLAS, OpenMP build ({name})"
        return f"OpenBLAS ({name}; not the OpenMP build, PyTorch in this process runs ~5x slower: {_INSTALL})"
    warnings.warn(
        "OpenBLAS not found: MLX will use the reference BLAS of the mlx-cpu wheel "
        "(~50x slower matmuls). Install it with `apt-get install libopenblas0-openmp`.",
        stacklevel=3,
    )
    return "reference BLAS bundled with mlx-cpu (slow: apt-get install libopenblas0-openmp)"


def _is_openmp_build(lib) -> bool:
    """OpenBLAS says how it was built: openblas_get_parallel() is 2 for the OpenMP build."""
    try:
        return lib.openblas_get_parallel() == 2
    except AttributeError:
        return False


BLAS = _load()
