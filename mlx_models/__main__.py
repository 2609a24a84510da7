"""``python -m mlx_models COMMAND`` and the ``mlx-models`` command (see `commands`)."""

import sys

from .cli import run_cli
from .commands import main


def entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry()
