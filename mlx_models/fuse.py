"""Fold a LoRA run's adapters into its base model: a plain checkpoint for ``load``/``convert --check``.

python -m mlx_models.fuse RUN_DIR --out DIR [--checkpoint best|last]
"""

import argparse
import sys
from pathlib import Path

from mlx.utils import tree_flatten

from . import run_dir as rd
from .cli import run_cli
from .errors import ConfigError
from .io import atomic_dir, atomic_write_json
from .lora import fuse_lora
from .trained import load_trained, locate
from .weights import save_weights


def fuse(run_dir: str | Path, out: str | Path, checkpoint_name: str = "best") -> Path:
    """Fold a LoRA run's adapters into its base: a plain checkpoint directory for ``load``.
    Layers without adapters keep the base's format (a 4-bit base stays 4-bit there)."""
    where = locate(run_dir, checkpoint_name)
    if not where.lora:
        raise ConfigError(f"{run_dir} is a full finetuning run: {where.path} is already a plain checkpoint")
    t = load_trained(run_dir, checkpoint_name)
    fuse_lora(t.model)
    with atomic_dir(out) as tmp:
        save_weights(tmp, dict(tree_flatten(t.model.parameters())))
        atomic_write_json(tmp / rd.CONFIG, rd.model_config(t.base, t.model, t.task))
        t.tokenizer.save_pretrained(str(tmp))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlx_models.fuse", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a LoRA run directory written by train.py")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--checkpoint", default="best", help="which checkpoint of the run (default: best)")
    args = p.parse_args(argv)
    print(f"saved {fuse(args.run_dir, args.out, args.checkpoint)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
