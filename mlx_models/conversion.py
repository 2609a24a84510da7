"""HF checkpoint (hub id, directory, GGUF) -> MLX checkpoint directory.

Output: config.json (+ "quantization"), model.safetensors or shards with an index, and
the tokenizer files. Tensors stream one at a time; the directory appears atomically.
"""

import json
import sys
from pathlib import Path

import mlx.core as mx
from tqdm import tqdm

from . import checkpoint
from .errors import ConfigError
from .io import atomic_dir
from .models import build_model, checkpoint_task, model_module
from .quant import quantization_config, quantize
from .sources import open_source

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


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
    max_shard_bytes: int = checkpoint.MAX_SHARD_BYTES,
    progress: bool = True,
) -> Path:
    """Convert ``source`` into the MLX checkpoint directory ``out``; returns ``out``."""
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(
            f"output directory {out} already exists; pass --force to replace it or choose --out"
        )
    if q_bits not in (None, 4, 8):
        raise ConfigError(f"--q-bits {q_bits} is not supported; use 4 or 8")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
    src = open_source(source)
    config = dict(src.config)
    model_module(config)  # unsupported model_type -> ConfigError listing the supported ones
    dtype = dtype or default_dtype(config)
    task = checkpoint_task(config)

    # Our names for the source tensors, and what each model of this type expects.
    tied = config.get("tie_word_embeddings", config.get("model_type") != "llama")
    model = build_model(config, task)
    known = {}
    for t in model_module(config).TASKS:
        known.update(checkpoint.parameter_shapes(build_model(config, t)))
    names = {}
    dropped = []
    for k in src.shapes:
        if (reason := checkpoint.drop_reason(checkpoint.rename(k), tied)) is not None:
            dropped.append(f"{k} ({reason})")
            continue
        names[k] = checkpoint.rename(k)
    # A headless checkpoint keeps unprefixed names; head checkpoints keep theirs.
    prefixing = checkpoint.add_or_strip_prefix(list(names.values()), model)
    names = {k: prefixing[v] for k, v in names.items()}
    found = {names[k]: src.shapes[k] for k in names}
    checkpoint.check_weights(found, checkpoint.parameter_shapes(model), known, where=src.description)
    unexpected = sorted(v for v in found if v not in known)
    for k in unexpected:
        dropped.append(f"{k} (not a parameter of any {config['model_type']} model)")
    if unexpected:
        print(
            f"warning: ignoring {len(unexpected)} unknown weights: {', '.join(unexpected[:5])}",
            file=sys.stderr,
        )

    quantized = set()
    if q_bits:
        quantized = {f"{p}.weight" for p in quantize(model, q_bits, q_group_size)}
        config["quantization"] = quantization_config(q_bits, q_group_size)
    config.pop("quantization_config", None)
    if rope := config.get("rope_parameters"):  # also the transformers-4 keys, which mlx-lm reads
        config.setdefault("rope_theta", rope.get("rope_theta"))
        if rope.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    config["dtype"] = config["torch_dtype"] = dtype

    with atomic_dir(out, force=force) as tmp:
        writer = checkpoint.ShardWriter(tmp, max_shard_bytes)
        items = [(k, v) for k, v in names.items() if v in known]
        for src_name, name in tqdm(items, desc="converting", unit="tensor", disable=not progress):
            w = src.read(src_name)
            if mx.issubdtype(w.dtype, mx.floating):
                w = w.astype(DTYPES[dtype])
            if name in quantized:
                base = name[: -len(".weight")]
                wq, scales, biases = mx.quantize(w, q_group_size, q_bits)
                writer.add(f"{base}.weight", wq)
                writer.add(f"{base}.scales", scales)
                writer.add(f"{base}.biases", biases)
            else:
                writer.add(name, w)
        writer.close()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        try:
            src.load_tokenizer().save_pretrained(str(tmp))
        except Exception as e:  # a checkpoint without tokenizer files still converts
            print(f"warning: no tokenizer saved ({type(e).__name__}: {e})", file=sys.stderr)
    return out
