"""Convert a Hugging Face model (hub id, local directory or .gguf file) into an MLX checkpoint.

python convert.py HF_REPO_OR_PATH [--out DIR] [--dtype float16] [-q] [--check]
"""

import sys

import mlx_models  # noqa: F401  (loads OpenBLAS before MLX)
from mlx_models.cli import ArgumentParser, positive_float, run_cli
from mlx_models.conversion import DTYPES, GROUP_SIZES, convert


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="convert.py", description=__doc__.split("\n")[0])
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
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--check", action="store_true", help="run the PyTorch parity report after converting")
    args = p.parse_args(argv)
    out = convert(
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
        from mlx_models.parity import main as parity

        return parity([str(out)] + (["--dtype", args.dtype] if args.dtype else []))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
