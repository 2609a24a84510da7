"""`python -m mlx_models.parity`."""

import sys

from ..cli import run_cli
from .check import main

sys.exit(run_cli(main))
