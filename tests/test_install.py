"""The package installs and runs without the checkout: a wheel built from it holds the shipped
config.yaml and (on Linux) the CPU kernels, and its `mlx-models` command trains the embedded default
from another directory. Also: importing mlx.core before mlx_models is never silent."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout (its own build dirs, ~25 s with the kernels), installed
    with --target into a directory of its own; the dependencies are this venv's."""
    root = tmp_path_factory.mktemp("install")
    wheels, target = root / "wheels", root / "site"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)]
    subprocess.run([*pip, *build], check=True, cwd=root, env=os.environ | {"TMPDIR": str(root)})
    (wheel,) = wheels.glob("mlx_models-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, cwd=root)
    return target


def run(installed: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLX_MODELS_CONFIG")}
    env |= {"PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1", "MLX_MODELS_CACHE": str(cwd / "cache")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_holds_the_config_and_the_kernels(installed):
    package = installed / "mlx_models"
    assert (package / "config.yaml").read_text() == (ROOT / "config.yaml").read_text()
    assert not (package / "config.yaml").is_symlink()
    if platform.system() == "Linux":
        assert list((package / "kernels").glob("_cpu_kernels*.so"))


def test_installed_command_trains_from_another_directory(installed, tmp_path):
    argv = ["train", "--max-steps", "2", "--max-samples", "48", "--max-length", "32", "--out", "run"]
    proc = run(installed, tmp_path, str(installed / "bin" / "mlx-models"), *argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert '"split": "test"' in proc.stdout
    where = run(
        installed, tmp_path, sys.executable, "-c", "import mlx_models, sys; print(mlx_models.__file__)"
    )
    assert where.stdout.strip() == str(installed / "mlx_models" / "__init__.py")
    assert "kernels" not in proc.stderr  # they loaded: no warning that they are missing


def test_config_option_and_env_select_another_config(installed, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(
        (ROOT / "config.yaml").read_text().replace("models:", "models:\n  my-alias: {source: nowhere}", 1)
    )
    mlx_models = str(installed / "bin" / "mlx-models")
    proc = run(installed, tmp_path, mlx_models, "--config", str(config), "train", "--model", "no-such-model")
    assert proc.returncode == 2 and "my-alias" in proc.stderr  # the alias list comes from mine.yaml
    proc = run(installed, tmp_path, mlx_models, "train", "--model", "no-such-model")
    assert proc.returncode == 2 and "my-alias" not in proc.stderr
    proc = run(installed, tmp_path, mlx_models, "--config", str(tmp_path / "missing.yaml"), "train")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --config '{tmp_path / 'missing.yaml'}': no such file; give the path of a config.yaml"
    ]
    proc = run(installed, tmp_path, mlx_models, "trian")
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr and proc.stdout == ""
    proc = run(installed, tmp_path, mlx_models)
    assert proc.returncode == 2 and "usage: mlx-models" in proc.stderr and proc.stdout == ""
    proc = run(installed, tmp_path, mlx_models, "--help")
    assert proc.returncode == 0 and "commands:" in proc.stdout


@pytest.mark.skipif(platform.system() != "Linux", reason="the BLAS trap is the Linux mlx-cpu wheel's")
def test_importing_mlx_first_is_never_silent(tmp_path):
    code = "import mlx.core; import mlx_models; print(mlx_models.BLAS)"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    env.pop("MLX_MODELS_NO_OPENBLAS", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("reference BLAS") and "imported before mlx_models" in proc.stdout
    assert "SlowBLASWarning" in proc.stderr and "import mlx_models before mlx" in proc.stderr
    code = "import mlx_models, mlx.core; print(mlx_models.BLAS)"  # the right order: OpenBLAS, silently
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.stdout.startswith("OpenBLAS") and "SlowBLASWarning" not in proc.stderr


def first_import(path: Path, prefix: str) -> int:
    """Line of the first import of ``prefix`` (module or package) in a script, at any depth."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(n == prefix or n.startswith(prefix + ".") for n in names):
            lines.append(node.lineno)
    return min(lines, default=10**9)


SCRIPTS = sorted([*ROOT.glob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "docs").glob("*.py")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_script_imports_mlx_models_before_mlx(script):
    first_mlx = min(first_import(script, "mlx"), first_import(script, "mlx_lm"))
    if first_mlx < 10**9:
        assert first_import(script, "mlx_models") < first_mlx, f"{script.name} imports mlx before mlx_models"
