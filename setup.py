"""The package build (pyproject.toml holds the metadata). On Linux it also builds the CPU kernels
(mlx_models/kernels) with cmake against the installed mlx, as `make kernels` does, and ships them
in the wheel; where cmake, a C++ compiler or the headers are missing it says so and the package
runs on MLX's own ops (slower on the CPU). MLX_MODELS_NO_KERNELS=1 skips the build."""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
KERNELS = ROOT / "mlx_models" / "kernels"


def build_kernels(build_dir: Path, out_dir: Path) -> None:
    """Build the kernels' module into ``out_dir`` against this Python's mlx (cmake, ~20 s on 2 cores)."""
    configure = [
        "cmake", "-S", str(KERNELS), "-B", str(build_dir), "--log-level=WARNING",
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-DMLX_MODELS_ARCH={os.environ.get('MLX_MODELS_ARCH', 'native')}",
        f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
    ]  # fmt: skip
    try:
        subprocess.run(configure, check=True, capture_output=True, text=True)
        subprocess.run(
            ["cmake", "--build", str(build_dir), "-j", "2"], check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError) as e:
        tail = "\n".join((getattr(e, "stderr", None) or str(e)).splitlines()[-5:])
        print(
            f"warning: mlx_models' CPU kernels not built (MLX's own ops will run):\n{tail}", file=sys.stderr
        )


class BuildPy(build_py):
    def run(self):
        stale = Path(self.build_lib).resolve() / "mlx_models"
        # no stale module of an earlier build in the wheel; only ever inside this checkout's build/
        if not getattr(self, "editable_mode", False) and stale.is_relative_to(ROOT / "build"):
            shutil.rmtree(stale, ignore_errors=True)
        super().run()
        if platform.system() != "Linux" or os.environ.get("MLX_MODELS_NO_KERNELS"):
            return
        if getattr(self, "editable_mode", False):  # pip install -e: in the checkout, as `make kernels`
            build_kernels(ROOT / "build" / "kernels", KERNELS)
        else:
            temp = Path(self.get_finalized_command("build").build_temp).resolve() / "kernels"
            build_kernels(temp, Path(self.build_lib).resolve() / "mlx_models" / "kernels")


class PlatformDistribution(Distribution):
    def has_ext_modules(self):  # the wheel holds a compiled module on Linux: tag it for the platform
        return platform.system() == "Linux" and not os.environ.get("MLX_MODELS_NO_KERNELS")


setup(cmdclass={"build_py": BuildPy}, distclass=PlatformDistribution)
