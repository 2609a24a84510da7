"""Export a trained run (or a converted model) to the ecosystem's formats.

python -m mlx_models.export RUN_OR_CHECKPOINT --to hf|peft|mlx-lm|gguf --out DIR [--checkpoint NAME]
    [--dtype float32|float16|bfloat16] [--force] [--max-shard-size GB]

  hf      transformers directory, LoRA fused, 4-bit dequantized: AutoModelFor...from_pretrained(DIR)
  peft    LoRA runs: PEFT adapter for PeftModel.from_pretrained(base, DIR)
  mlx-lm  Llama causal-LM LoRA runs: adapters for mlx_lm.load(BASE, adapter_path=DIR)
  gguf    Llama causal LMs: DIR/model-f16.gguf (or f32) for llama.cpp and transformers' GGUF loader
"""

import sys
from argparse import RawDescriptionHelpFormatter
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ..cli import ArgumentParser, positive_float
from ..errors import ConfigError
from ..interop import mlx_lm_adapter as mlx_lm_format
from ..interop import peft_adapter as peft_format
from ..interop.conversion import DTYPES, default_dtype
from ..io import check_out, output_dir
from ..models import MODULES, family
from ..models.lora import from_model
from ..train import run_dir as rd
from ..train.config import resolve_model_alias
from ..train.trained import Checkpoint, Trained, inputs_of, load_trained, locate
from .gguf_file import check_exportable, export_gguf
from .hf_dir import export_hf

FORMATS = ("hf", "peft", "mlx-lm", "gguf")
HF_SHARD_BYTES = 5 * 10**9  # "shards <= 5 GB", as transformers' max_shard_size="5GB"


def check_format(to: str, where: Checkpoint, dtype: str) -> None:
    """Refuse what the format cannot hold, before any weight is read."""
    if where.tfidf:
        raise ConfigError(
            f"{where.path} is a TF-IDF baseline run: a scikit-learn pipeline ({rd.TFIDF_MODEL}), with no "
            "weights for transformers, PEFT, mlx-lm or GGUF; load it with joblib, or explain it"
        )
    unportable = [k for k in family(where.model_type).unportable if where.config.get(k)]
    if to in ("mlx-lm", "gguf") and unportable:
        raise ConfigError(
            f"{where.path} sets {unportable[0]} ({where.config[unportable[0]]}), which {to} does not carry, "
            "so its logits would differ: use --to hf or --to peft"
        )
    if to in ("peft", "mlx-lm") and not where.lora:
        raise ConfigError(f"{where.path} is not a LoRA run: --to {to} writes LoRA adapters; use --to hf")
    if to == "mlx-lm" and (not family(where.model_type).mlx_lm or where.task != "lm"):
        readable = ", ".join(sorted(t for t, m in MODULES.items() if m.FAMILY.mlx_lm))
        raise ConfigError(
            f"{where.path} is a {where.model_type} {where.task} model, and an mlx-lm adapter holds LoRA "
            f"weights for a causal LM that mlx-lm reads ({readable}; a classification head is not an "
            "adapter): use --to hf or --to peft"
        )
    if to == "gguf":
        check_exportable(where, dtype)


def lora_dropout(t: Trained) -> float:
    return t.cfg.lora_dropout if t.cfg.dropout is None else t.cfg.dropout  # as trainer.build applies it


def base_name(t: Trained) -> str:
    """The original base model (hub id or path) for PEFT's base_model_name_or_path."""
    from ..interop.loading import embedded_path

    source = resolve_model_alias(t.cfg.model)["source"]
    return str(embedded_path(source)) if source.startswith("embedded:") else source


def export_peft(t: Trained, out: Path, dtype: str, force: bool) -> Path:
    adapter = from_model(t.model, lora_dropout(t))
    with output_dir(out, force, inputs_of(t)) as tmp:
        peft_format.write(adapter, tmp, t.model, t.task, base_name(t), getattr(mx, dtype))
    if "quantization" in t.config:
        print(
            f"note: trained on a 4-bit base: for our logits apply it to that base dequantized "
            f"(python -m mlx_models.export {t.base} --to hf --out BASE_DIR)",
            file=sys.stderr,
        )
    return out


def export_mlx_lm(t: Trained, out: Path, force: bool) -> Path:
    current = dict(tree_flatten(t.model.parameters()))
    changed = sorted(k for k, v in t.base_heads.items() if not mx.array_equal(v, current[k]).item())
    if changed:
        raise ConfigError(
            f"{t.path} also trained {changed[0].rsplit('.', 1)[0]} in full, which an mlx-lm adapter cannot "
            "hold: use --to hf or --to peft"
        )
    adapter = from_model(t.model, lora_dropout(t))
    with output_dir(out, force, inputs_of(t)) as tmp:
        mlx_lm_format.write(adapter, tmp, t.model.args.num_hidden_layers, t.base)
    return out


def export(
    source: str | Path,
    to: str,
    out: str | Path,
    *,
    checkpoint: str | None = None,
    dtype: str | None = None,
    force: bool = False,
    max_shard_bytes: int = HF_SHARD_BYTES,
) -> Path:
    """Export ``source`` (run dir, checkpoint or converted model) as ``to`` into ``out``; returns
    what was written (the .gguf file for gguf, else the directory)."""
    if to not in FORMATS:
        raise ConfigError(f"unknown export format {to!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
    where = locate(source, checkpoint)
    check_out(out, force, [source, *inputs_of(where)])
    dtype = dtype or default_dtype(where.config)
    check_format(to, where, dtype)
    t = load_trained(source, checkpoint)
    if to == "hf":
        return export_hf(t, out, dtype, force, max_shard_bytes)
    if to == "peft":
        return export_peft(t, out, dtype, force)
    if to == "mlx-lm":
        return export_mlx_lm(t, out, force)
    return export_gguf(t, out, dtype, force)


LOADS_WITH = {
    "hf": "transformers: AutoModelFor...from_pretrained('{out}')",
    "peft": "peft: PeftModel.from_pretrained(base_model, '{out}')",
    "mlx-lm": "mlx_lm.load('{base}', adapter_path='{out}')",
    "gguf": "llama.cpp, or transformers: from_pretrained('{dir}', gguf_file='{name}')",
}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m mlx_models.export",
        description=__doc__.split("\n")[0],
        formatter_class=RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[4:]),
    )
    p.add_argument(
        "source", help="a run directory written by train.py, one of its checkpoints, or a converted model"
    )
    p.add_argument("--to", required=True, help=f"format: {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="output directory (new, or an earlier output with --force)")
    p.add_argument("--checkpoint", help="checkpoint of a run: best (default, else last), last or iter-N")
    p.add_argument("--dtype", help="float32, float16 or bfloat16 (default: the model's; gguf: f16/f32)")
    p.add_argument("--force", action="store_true", help="replace an earlier output of this tool at --out")
    p.add_argument(
        "--max-shard-size", type=positive_float, default=5.0, help="hf: shard size limit in GB (default 5)"
    )
    args = p.parse_args(argv)
    out = export(
        args.source,
        args.to,
        args.out,
        checkpoint=args.checkpoint,
        dtype=args.dtype,
        force=args.force,
        max_shard_bytes=int(args.max_shard_size * 10**9),
    )
    base = locate(args.source, args.checkpoint).config.get("base_model", args.source)
    print(
        f"saved {out}; loads in "
        + LOADS_WITH[args.to].format(out=out, base=base, dir=out.parent, name=out.name)
    )
    return 0
