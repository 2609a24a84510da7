"""Every benchmark script still imports against today's package (a rename in the package broke
benchmarks/explain.py once, unseen: benchmarks are run by hand, not by the test suite)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_benchmark_script_imports(script):
    code = f"import sys; sys.argv = ['{script}']; import {script}"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=BENCHMARKS, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(BENCHMARKS.parent), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
