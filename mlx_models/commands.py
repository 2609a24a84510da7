"""The command-line tools, one ``main(argv)`` each, and ``mlx-models COMMAND`` dispatching to them.

convert and train are defined here (train.py and convert.py at the top of the checkout are thin
wrappers over them); the others live in their rooms: parity, export, fuse, explain, study.
"""

import importlib
import os
import sys

from .cli import ArgumentParser, positive_float, take_config_option
from .errors import ConfigError

# command -> (module, function, what it does); imported only when the command runs
COMMANDS = {
    "convert": ("mlx_models.commands", "convert", "a Hugging Face model (hub id, directory, .gguf) -> MLX"),
    "train": ("mlx_models.commands", "train", "finetune, pretrain or run a study (train.py)"),
    "parity": ("mlx_models.parity.check", "main", "cross-check a converted model against transformers"),
    "export": ("mlx_models.export.cli", "main", "a run -> transformers, PEFT, mlx-lm or GGUF"),
    "fuse": ("mlx_models.export.fuse", "main", "fold a LoRA run's adapters into its base model"),
    "explain": ("mlx_models.explain.cli", "main", "token attributions of trained classifiers"),
    "study": ("mlx_models.study.cli", "main", "every selected model on every selected dataset"),
}
USAGE = "usage: mlx-models [--config FILE] COMMAND [options]  (mlx-models COMMAND --help)\n\ncommands:\n"
USAGE += "\n".join(f"  {name:<8} {what}" for name, (_, _, what) in COMMANDS.items())


def main(argv: list[str] | None = None) -> int | None:
    """``mlx-models COMMAND ...``: the command's own ``main`` with the rest of the arguments."""
    argv = take_config_option(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)  # a refusal leaves stdout empty
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        from .errors import ConfigError

        raise ConfigError(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
    module, function, _ = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), function)(argv[1:])


def convert(argv: list[str] | None = None) -> int:
    """``convert.py`` / ``mlx-models convert``: a Hugging Face model into an MLX checkpoint."""
    from .interop.conversion import DTYPES, GROUP_SIZES
    from .interop.conversion import convert as convert_model

    p = ArgumentParser(prog="convert.py", description=convert.__doc__.split(": ", 1)[1])
    p.add_argument(
        "source", help="hub repo id (HF_TOKEN is used for gated repos), local HF directory or .gguf file"
    )
    p.add_argument(
        "--out", "--mlx-path", dest="out", default="mlx_model", help="output directory (default: mlx_model)"
    )
    p.add_argument(
        "--dtype", choices=list(DTYPES), help="weight dtype (default: the checkpoint's, else float32)"
    )
    p.add_argument("-q", "--quantize", action="store_true", help="quantize Linear layers and word embeddings")
    p.add_argument(
        "--q-bits", type=int, default=4, choices=(4, 8), help="bits per weight with -q (default 4)"
    )
    p.add_argument(
        "--q-group-size",
        type=int,
        default=64,
        choices=GROUP_SIZES,
        help="quantization group size (default 64)",
    )
    p.add_argument(
        "--max-shard-size", type=positive_float, default=5.0, help="shard size limit in GB (default 5)"
    )
    p.add_argument(
        "--requantize",
        action="store_true",
        help="with -q on a .gguf: dequantize its Q4_0/Q4_1/Q8_0 blocks and quantize them again at "
        "--q-group-size (default: keep them as they are, group 32, without a second rounding)",
    )
    p.add_argument("--force", action="store_true", help="replace an earlier output of convert.py at --out")
    p.add_argument("--check", action="store_true", help="run the PyTorch parity report after converting")
    args = p.parse_args(take_config_option(list(sys.argv[1:] if argv is None else argv)))
    out = convert_model(
        args.source,
        args.out,
        dtype=args.dtype,
        q_bits=args.q_bits if args.quantize else None,
        q_group_size=args.q_group_size,
        force=args.force,
        max_shard_bytes=int(args.max_shard_size * 1024**3),
        progress=sys.stderr.isatty(),
        requantize=args.requantize,
    )
    print(f"saved {out}")
    if args.check:
        from .parity.check import main as parity

        return parity([str(out)] + (["--dtype", args.dtype] if args.dtype else []))
    return 0


def train(argv: list[str] | None = None) -> int | None:
    """``train.py`` / ``mlx-models train``: train a model (or the tfidf baseline), or run a study."""
    argv = take_config_option(list(sys.argv[1:] if argv is None else argv))
    if any(arg.split("=")[0] == "--study" for arg in argv):
        from .study.cli import main as run_study  # every model x dataset of a study

        return run_study(argv)
    from .train.launch import launch, take_ranks_option

    ranks, argv = take_ranks_option(argv)
    if ranks is not None:  # data-parallel: N processes of this command, judged as one
        return launch(ranks, argv)
    from .train.config import load_train_config
    from .train.tfidf import run_tfidf

    cfg = load_train_config(argv)
    if cfg.model == "tfidf" and "MLX_RANK" in os.environ:
        raise ConfigError("the tfidf baseline fits in one process: run it without --ranks or mlx.launch")
    if cfg.model == "tfidf":
        run_tfidf(cfg)
    else:
        from .train.trainer import run  # MLX is only needed past this point

        run(cfg)
    return None
