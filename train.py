"""Train a model (or the tfidf baseline), or run a study: `python train.py --help`.

(the same as `mlx-models train`: mlx_models/commands.py)
"""

import sys

from mlx_models.cli import run_cli
from mlx_models.commands import train as main

if __name__ == "__main__":
    sys.exit(run_cli(main))
