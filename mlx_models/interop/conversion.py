"""HF checkpoint (hub id, directory, GGUF) -> MLX checkpoint directory.

Output: config.json (+ "quantization"), model.safetensors or shards with an index, and
the tokenizer files. Tensors stream one at a time; the directory appears atomically.
"""

import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from tqdm import tqdm

from ..errors import ConfigError, WeightsError
from ..io import atomic_write_json, check_out, output_dir
from ..models import build_model, checkpoint_task, model_module
from ..models.quant import quantizable, quantization_config, quantize
from . import weights
from .sources import Source, open_source

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
GROUP_SIZES = (32, 64, 128)  # MLX's affine quantization


def default_dtype(config: dict) -> str:
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if dtype in DTYPES else "float32"


def convert(
    source: str,
    out: str | Path,
    *,
    dtype: str | None = None,
    q_bits: int | None = None,
    q_group_size: int = 64,
    force: bool = False,
    max_shard_bytes: int = weights.MAX_SHARD_BYTES,
    progress: bool = True,
    requantize: bool = False,
) -> Path:
    """Convert ``source`` into the MLX checkpoint directory ``out``; returns ``out``. With ``q_bits``,
    GGUF Q4_0/Q4_1/Q8_0 blocks are kept as they are (group 32) unless ``requantize``."""
    out = Path(out)
    inputs = [source] if Path(source).expanduser().exists() else []
    check_out(out, force, inputs)
    check_options(dtype, q_bits, q_group_size, max_shard_bytes)
    src = open_source(source)
    config = dict(src.config)
    model_module(config)  # unsupported model_type -> ConfigError listing the supported ones
    model = build_model(config, checkpoint_task(config))
    names = weight_names(src, config, model)
    quantized, kept = set(), {}
    if q_bits:
        could = quantizable_layers(model, min(GROUP_SIZES))
        quantized = {f"{p}.weight" for p in quantize(model, q_bits, q_group_size)}
        check_all_quantized(could, quantized, q_group_size)
        if not quantized:
            raise ConfigError(
                f"no layer of {source} has an input size divisible by --q-group-size {q_group_size}, "
                "so nothing would be quantized; use a smaller group size (32)"
            )
        kept = {} if requantize else kept_blocks(src, names, quantized)
        config["quantization"] = quantization_config(q_bits, q_group_size)
        config["quantization"] |= {name.removesuffix(".weight"): q for name, q in kept.items()}
    config = output_config(config, dtype or default_dtype(config))
    tokenizer = source_tokenizer(src)
    with output_dir(out, force, inputs) as tmp:
        writer = weights.ShardWriter(tmp, max_shard_bytes)
        for src_name, name in tqdm(names.items(), desc="converting", unit="tensor", disable=not progress):
            if name in kept:  # GGUF blocks already in MLX's affine layout: written as they are
                for k, v in affine_tensors(src, src_name, name, DTYPES[config["dtype"]]).items():
                    writer.add(k, v)
                continue
            w = src.read(src_name)
            if mx.issubdtype(w.dtype, mx.floating):
                w = w.astype(DTYPES[config["dtype"]])
            if name in quantized:
                wq, scales, biases = mx.quantize(w, q_group_size, q_bits)
                base = name.removesuffix(".weight")
                w = {f"{base}.weight": wq, f"{base}.scales": scales, f"{base}.biases": biases}
            for k, v in w.items() if isinstance(w, dict) else [(name, w)]:
                writer.add(k, v)
        writer.close()
        atomic_write_json(tmp / "config.json", config)
        if tokenizer is not None:  # a failed write fails the conversion: nothing lands
            tokenizer.save_pretrained(str(tmp))
    return out


def quantizable_layers(model: nn.Module, group_size: int) -> dict[str, int]:
    """Path -> input size of every layer that quantizes at ``group_size`` (heads stay full)."""
    skip = getattr(model, "head_modules", ())
    leaves = tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
    return {p: m.weight.shape[-1] for p, m in leaves if quantizable(p, m, group_size, skip)}


def check_all_quantized(could: dict[str, int], quantized: set[str], group_size: int) -> None:
    """-q quantizes every layer it can, or refuses: layers that a smaller group size would split
    are not left in full precision without a word."""
    left = sorted(p for p in could if f"{p}.weight" not in quantized)
    if quantized and left:
        fits = [g for g in GROUP_SIZES if all(d % g == 0 for d in could.values())]
        raise ConfigError(
            f"--q-group-size {group_size} does not divide the input size of {len(left)} of {len(could)} "
            f"layers ({left[0]}: {could[left[0]]}), which would stay in full precision; use "
            f"--q-group-size {max(fits)}"
        )


def check_options(dtype: str | None, q_bits: int | None, q_group_size: int, max_shard_bytes: int) -> None:
    problems = []
    if q_bits not in (None, 4, 8):
        problems.append(f"--q-bits {q_bits} is not supported; use 4 or 8")
    if q_group_size not in GROUP_SIZES:
        problems.append(
            f"--q-group-size {q_group_size} is not supported; use {', '.join(map(str, GROUP_SIZES))}"
        )
    if dtype is not None and dtype not in DTYPES:
        problems.append(f"--dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
    if not max_shard_bytes >= 1024**2:
        problems.append("--max-shard-size must be at least 0.001 GB")
    if problems:
        raise ConfigError("; ".join(problems))


def weight_names(src: Source, config: dict, model: nn.Module) -> dict[str, str]:
    """Source tensor name -> our name, for every tensor we keep; raises listing every missing
    weight and wrong shape, and warns about (and drops) weights no model of this type has."""
    tied = model.args.tie_word_embeddings  # config.json's, else the family's default
    known = {}
    for task in model_module(config).TASKS:
        known.update(weights.parameter_shapes(build_model(config, task)))
    names = {k: weights.rename(k) for k in src.shapes}
    names = {k: v for k, v in names.items() if weights.drop_reason(v, tied) is None}
    # A headless checkpoint keeps unprefixed names; head checkpoints keep theirs.
    prefixing = weights.add_or_strip_prefix(list(names.values()), model)
    names = {k: prefixing[v] for k, v in names.items()}
    found = {names[k]: src.shapes[k] for k in names}
    weights.check_weights(found, weights.parameter_shapes(model), known, where=src.description)
    unexpected = sorted(v for v in found if v not in known)
    if unexpected:
        print(
            f"warning: ignoring {len(unexpected)} unknown weights: {', '.join(unexpected[:5])}",
            file=sys.stderr,
        )
    return {k: v for k, v in names.items() if v in known}


def kept_blocks(src: Source, names: dict[str, str], quantized: set[str]) -> dict[str, dict]:
    """Our weight name -> its quantization, for the weights to quantize that the source already
    holds in MLX's affine format (GGUF Q4_0/Q4_1/Q8_0): written as they are, not rounded twice."""
    return {
        n: src.affine[s] | {"mode": "affine"} for s, n in names.items() if n in quantized and s in src.affine
    }


def affine_tensors(src: Source, src_name: str, name: str, dtype: mx.Dtype) -> dict[str, mx.array]:
    wq, scales, biases = src.read_affine(src_name)
    base = name.removesuffix(".weight")  # scales/biases come from float16: exact in fp16 and fp32
    return {name: wq, f"{base}.scales": scales.astype(dtype), f"{base}.biases": biases.astype(dtype)}


def output_config(config: dict, dtype: str) -> dict:
    """The config.json we write: the HF config with our dtype, and rope keys mlx-lm reads."""
    config = {k: v for k, v in config.items() if k != "quantization_config"}
    if rope := config.get("rope_parameters"):  # also the transformers-4 keys, which mlx-lm reads
        config.setdefault("rope_theta", rope.get("rope_theta"))
        if rope.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    config["dtype"] = config["torch_dtype"] = dtype
    return config


def source_tokenizer(src: Source):
    """The source's tokenizer, read before anything is written; None, with a warning, for a source
    without tokenizer files. Files that are there but unreadable are an error: the conversion would
    be unusable without them."""
    if not src.has_tokenizer:
        print(f"warning: {src.description} has no tokenizer files; converted without one", file=sys.stderr)
        return None
    try:
        return src.load_tokenizer()
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise WeightsError(
            f"the tokenizer of {src.description} cannot be read ({reason}); fix or re-download its "
            "tokenizer files"
        ) from e
