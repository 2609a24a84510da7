"""Fold a LoRA run's adapters into its base model: a plain checkpoint for ``load``/``convert --check``.

python -m mlx_models.export.fuse RUN_DIR --out DIR [--checkpoint best|last|iter-N] [--force]
"""

import sys
from pathlib import Path

from mlx.utils import tree_flatten

from ..cli import ArgumentParser, run_cli
from ..errors import ConfigError
from ..interop.weights import save_weights
from ..io import atomic_write_json, check_out, output_dir
from ..models.lora import fuse_lora
from ..train import run_dir as rd
from ..train.trained import inputs_of, load_trained, locate


def fuse(
    run_dir: str | Path, out: str | Path, checkpoint_name: str | None = None, force: bool = False
) -> Path:
    """Fold a LoRA run's adapters into its base: a plain checkpoint directory for ``load``.
    Layers without adapters keep the base's format (a 4-bit base stays 4-bit there). The
    checkpoint: ``checkpoint_name``, else best/, else last/."""
    ckpt = rd.pick_checkpoint(Path(run_dir), checkpoint_name)
    if ckpt is None:
        have = ", ".join(p.name for p in rd.checkpoints(Path(run_dir))) if Path(run_dir).is_dir() else ""
        named = Path(run_dir) / (checkpoint_name or "best")
        raise ConfigError(f"{named} is not a checkpoint of a train.py run (checkpoints: {have or 'none'})")
    where = locate(ckpt)
    if where.tfidf:
        raise ConfigError(f"{run_dir} is a TF-IDF baseline run: it has no LoRA adapters to fold in")
    check_out(out, force, [run_dir, *inputs_of(where)])
    if not where.lora:
        raise ConfigError(f"{run_dir} is a full finetuning run: {ckpt} is already a plain checkpoint")
    t = load_trained(ckpt)
    fuse_lora(t.model)
    with output_dir(out, force, [run_dir, *inputs_of(t)]) as tmp:
        save_weights(tmp, dict(tree_flatten(t.model.parameters())))
        atomic_write_json(tmp / rd.CONFIG, rd.model_config(t.base, t.model, t.task))
        t.tokenizer.save_pretrained(str(tmp))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlx_models.export.fuse", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a LoRA run directory written by train.py")
    p.add_argument("--out", required=True, help="output directory (new, or an earlier output with --force)")
    p.add_argument("--checkpoint", help="best (default, else last), last or iter-N")
    p.add_argument("--force", action="store_true", help="replace an earlier output of this tool at --out")
    args = p.parse_args(argv)
    print(f"saved {fuse(args.run_dir, args.out, args.checkpoint, force=args.force)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
