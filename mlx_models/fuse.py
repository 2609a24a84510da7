"""Fold a LoRA run's adapters into its base model: a plain checkpoint for ``load``/``convert --check``.

python -m mlx_models.fuse RUN_DIR --out DIR [--checkpoint best|last]
"""

import argparse
import sys

from .cli import run_cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlx_models.fuse", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a LoRA run directory written by train.py")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--checkpoint", default="best", help="which checkpoint of the run (default: best)")
    args = p.parse_args(argv)
    from .trainer import fuse

    print(f"saved {fuse(args.run_dir, args.out, args.checkpoint)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
