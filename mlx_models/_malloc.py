"""Keep freed memory mapped on Linux (glibc), so that MLX's CPU arrays stop faulting pages in.

MLX's CPU allocator (0.32) caches no buffers: every array is a fresh ``malloc`` and is ``free``d as
soon as the graph is done with it. glibc serves large blocks with ``mmap`` and returns them with
``munmap``, and trims freed memory off its heaps, so the next array of the same size page-faults all
of its memory back in, every step. Serving every block from the heap and never trimming it
(``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, max)``) keeps those pages mapped and
reused, as MLX's Metal allocator keeps its buffer cache: no faults, for somewhat more peak RSS,
which the process keeps until it exits (figures: ``benchmarks/profile.md``).
``MLX_MODELS_NO_MALLOPT=1`` keeps glibc's defaults. Nothing to do on macOS (its malloc and MLX's
Metal allocator cache by themselves)."""

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep what is freed; True when it took effect."""
    if (
        sys.platform != "linux"
        or platform.libc_ver()[0] != "glibc"
        or os.environ.get("MLX_MODELS_NO_MALLOPT")
    ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


KEEPS_FREED_MEMORY = keep_freed_memory()
