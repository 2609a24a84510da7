"""Convert a Hugging Face model (hub id, local directory or .gguf file) into an MLX checkpoint.

python convert.py HF_REPO_OR_PATH [--out DIR] [--dtype float16] [-q] [--check]
(the same as `mlx-models convert`: mlx_models/commands.py)
"""

import sys

from mlx_models.cli import run_cli
from mlx_models.commands import convert as main

if __name__ == "__main__":
    sys.exit(run_cli(main))
