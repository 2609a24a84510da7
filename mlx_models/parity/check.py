"""Cross-check an MLX checkpoint against transformers + PyTorch on a padded batch of real text.

    python -m mlx_models.parity PATH [--dtype float32|float16|bfloat16] [--tol X]

Prints max and mean |Δ| (logits, or hidden states for the bare encoder) and top-1 agreement
per head, for right and (Llama) left padding; exits 1 when a bound is broken.
"""

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..batching import collate, pad_id_for
from ..cli import ArgumentParser, positive_float
from ..interop.conversion import DTYPES
from ..interop.loading import check_tokenizer, load_model, load_tokenizer, read_config, resolve
from ..models import TASKS, family, tasks_of
from .reference import torch_device, torch_forward, torch_model

SENTENCES = [
    "The capital of France is Paris.",
    "I loved this movie: the acting was superb and the story kept me on the edge of my seat until the end.",
    "Terrible.",
    "A man is eating a piece of bread while reading the newspaper in the park.",
]
# Bounds on max |Δ| relative to the largest |reference value| (at least 1): a 30-layer model's
# logits reach ~30, a tiny one's ~1. Measured: SmolLM2 fp32 3e-6, fp16 4e-3, bf16 7e-2 of scale.
DEFAULT_TOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 1.5e-1}


@dataclass
class Row:
    task: str
    padding: str
    max_abs: float
    mean_abs: float
    top1: float
    scale: float  # max |reference value|, at least 1

    def __str__(self) -> str:
        return (
            f"{self.task:9s} {self.padding:6s} max|Δ| {self.max_abs:.2e}  "
            f"mean|Δ| {self.mean_abs:.2e}  top-1 {self.top1:6.1%}  max|ref| {self.scale:.1f}"
        )


def compare(
    mlx_out: np.ndarray, ref: np.ndarray, mask: np.ndarray, task: str
) -> tuple[float, float, float, float]:
    if task != "classify":  # per token: only the real positions count
        mlx_out, ref = mlx_out[mask.astype(bool)], ref[mask.astype(bool)]
    diff = np.abs(mlx_out.astype(np.float64) - ref)
    top1 = float((mlx_out.argmax(-1) == ref.argmax(-1)).mean())
    return float(diff.max()), float(diff.mean()), top1, max(1.0, float(np.abs(ref).max()))


def run_parity(
    path: str | Path,
    *,
    dtype: str = "float32",
    tasks: tuple[str, ...] | None = None,
    sentences: list[str] = SENTENCES,
    paddings: tuple[str, ...] | None = None,
    seed: int = 0,
) -> list[Row]:
    directory = resolve(path)
    config = read_config(directory)
    tokenizer = load_tokenizer(directory)
    check_tokenizer(tokenizer, config, directory)
    pad_id = pad_id_for(tokenizer)
    causal = family(config).causal  # a decoder continues raw text, and left padding works
    seqs = [tokenizer(s, add_special_tokens=not causal)["input_ids"] for s in sentences]
    paddings = paddings or (("right", "left") if causal else ("right",))
    rows = []
    for task in tasks or tasks_of(config["model_type"]):
        mx.random.seed(seed)  # any newly initialised head is the same in both frameworks
        model = load_model(directory, task)
        model.set_dtype(DTYPES[dtype], predicate=lambda k: True) if dtype != "float32" else None
        ref = torch_model(model, config, task, pad_token_id=pad_id)
        for side in paddings:
            ids, mask = collate(seqs, pad_id, side)
            out = model(mx.array(ids), attention_mask=mx.array(mask))
            out = out[0] if isinstance(out, tuple) else out
            got = np.array(out.astype(mx.float32))
            rows.append(Row(task, side, *compare(got, torch_forward(ref, ids, mask, task), mask, task)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlx_models.parity", description=__doc__.split("\n")[0])
    p.add_argument("path", help="converted MLX directory, HF directory, .gguf file, hub id or alias")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="precision of the MLX model")
    p.add_argument(
        "--tol",
        type=positive_float,
        default=None,
        help=f"bound on max |Δ| / max(1, max |reference|) (default per dtype: {DEFAULT_TOL})",
    )
    p.add_argument("--task", action="append", choices=TASKS, help="only these heads (repeat the flag)")
    args = p.parse_args(argv)
    tol = args.tol if args.tol is not None else DEFAULT_TOL[args.dtype]
    rows = run_parity(args.path, dtype=args.dtype, tasks=tuple(args.task) if args.task else None)
    print(f"reference: transformers on {torch_device()}; MLX {args.dtype} on {mx.default_device()}")
    for r in rows:
        print(r)
    failed = [r for r in rows if not r.max_abs <= tol * r.scale]  # NaN fails
    print(
        f"{'FAIL' if failed else 'OK'}: bound max|Δ| <= {tol:g} x max(1, max|ref|) "
        f"({len(failed)} of {len(rows)} checks over it)"
    )
    return 1 if failed else 0
