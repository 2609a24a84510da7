"""What `import mlx_models` does to the process on Linux before MLX runs: OpenBLAS instead of the
wheel's reference BLAS (`_blas.py`), and a malloc that keeps freed memory mapped (`_malloc.py`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlx_models

ROOT = Path(__file__).resolve().parent.parent


def test_openblas_is_loaded():
    if sys.platform == "linux":
        assert mlx_models.BLAS.startswith("OpenBLAS"), mlx_models.BLAS


@pytest.mark.skipif(sys.platform != "linux", reason="OpenBLAS is loaded on Linux only")
def test_openblas_and_pytorch_share_one_openmp_runtime():
    """The OpenMP build of OpenBLAS, which takes PyTorch's BLAS calls once loaded globally, runs on
    PyTorch's own OpenMP runtime (a second thread pool made PyTorch's step ~5x slower)."""
    code = (
        "import re, mlx_models, torch; torch.ones(64, 64) @ torch.ones(64, 64); print(mlx_models.BLAS); "
        "print(len(set(re.findall(r'/\\S*libgomp\\S*', open('/proc/self/maps').read()))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    blas, runtimes = out.stdout.splitlines()
    assert "OpenMP build" in blas, blas
    assert runtimes == "1", runtimes  # one libgomp: OpenBLAS's and PyTorch's threads are one pool


# The second allocation of a 64 MB array: glibc's defaults unmap the first one on free, so every
# page of the second faults in again; mlx_models keeps it mapped and reuses it.
REALLOC = (
    "import resource, mlx_models, mlx.core as mx; a = mx.ones((16_000_000,)); mx.eval(a); del a; "
    "r = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; b = mx.ones((16_000_000,)); mx.eval(b); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r)"
)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc is tuned on Linux only")
@pytest.mark.parametrize("opt_out", [False, True])
def test_freed_arrays_are_reused_without_page_faults(opt_out):
    env = {k: v for k, v in os.environ.items() if k != "MLX_MODELS_NO_MALLOPT"}
    env |= {"MLX_MODELS_NO_MALLOPT": "1"} if opt_out else {}
    run = subprocess.run([sys.executable, "-c", REALLOC], capture_output=True, text=True, cwd=ROOT, env=env)
    faults, pages = int(run.stdout.split()[-1]), 64_000_000 // 4096
    if opt_out:  # the test can fail: with glibc's defaults the pages come back one fault at a time
        assert faults > pages // 2, faults
    else:
        assert mlx_models.KEEPS_FREED_MEMORY and faults < pages // 20, faults
