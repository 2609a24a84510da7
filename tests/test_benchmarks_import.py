"""Every benchmark script still runs against today's package: the entry points answer --help from
another directory, the modules they use import (a rename in the package broke
benchmarks/explain.py once, unseen: benchmarks are run by hand, not by the test suite)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def is_command(path: Path) -> bool:
    text = path.read_text()
    return "argparse" in text and '__name__ == "__main__"' in text


@pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
def test_benchmark_script_runs_or_imports(script, tmp_path):
    path = BENCHMARKS / script
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    if is_command(path):  # as a user runs it, from anywhere
        argv, cwd = [sys.executable, str(path), "--help"], tmp_path
    else:  # a module the commands import (they put the repository on the path first)
        argv, cwd = [sys.executable, "-c", f"import sys; sys.argv = ['x']; import {path.stem}"], BENCHMARKS
        env["PYTHONPATH"] = str(BENCHMARKS.parent)
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
