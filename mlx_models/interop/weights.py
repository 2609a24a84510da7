"""Weights on disk: HF key names to ours, sharded safetensors, and reading them back.

Our module names equal the HF weight keys, so "conversion" is the identity except for
the anchored renames and named drops below (no order-dependent str.replace chains).
"""

import json
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import WeightsError
from ..io import save_safetensors
from ..models import families, head_modules

# Old BERT checkpoints name LayerNorm parameters gamma/beta (TF heritage).
RENAMES = [
    (re.compile(r"(LayerNorm|layer_norm)\.gamma$"), r"\1.weight"),
    (re.compile(r"(LayerNorm|layer_norm)\.beta$"), r"\1.bias"),
]

# Keys we never store, each with the reason.
DROPPED = [
    (re.compile(r"(^|\.)position_ids$"), "buffer: recomputed from the sequence length"),
    (re.compile(r"^cls\.predictions\.decoder\.bias$"), "copy of cls.predictions.bias"),
    (re.compile(r"^lm_head\.decoder\.bias$"), "copy of lm_head.bias"),
] + [(re.compile(pattern), why) for f in families() for pattern, why in dict(f.dropped).items()]
# Tied output projections: the same matrix as the word embeddings.
TIED = [
    re.compile(r"^cls\.predictions\.decoder\.weight$"),
    re.compile(r"^lm_head\.decoder\.weight$"),
    re.compile(r"^lm_head\.weight$"),
]

MAX_SHARD_BYTES = 5 * 1024**3


def rename(key: str) -> str:
    for pattern, repl in RENAMES:
        key = pattern.sub(repl, key)
    return key


def drop_reason(key: str, tied: bool) -> str | None:
    for pattern, reason in DROPPED:
        if pattern.search(key):
            return reason
    if tied and any(p.search(key) for p in TIED):
        return "tied to the word embeddings (tie_word_embeddings)"
    return None


def add_or_strip_prefix(keys: list[str], model: nn.Module) -> dict[str, str]:
    """Map checkpoint keys to ``model``'s, adding or removing the base-model prefix the way
    transformers does (a headless ``BertModel`` checkpoint loads into a classifier)."""
    prefix = model.base_model_prefix + "."
    has_base = hasattr(model, model.base_model_prefix) and model.task != "base"
    ckpt_prefixed = any(k.startswith(prefix) for k in keys)
    heads = tuple(f"{h}." for h in head_modules())
    if has_base and not ckpt_prefixed:
        return {k: k if k.startswith(heads) else prefix + k for k in keys}
    if not has_base and ckpt_prefixed:
        return {k: k[len(prefix) :] if k.startswith(prefix) else k for k in keys}
    return {k: k for k in keys}


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def check_weights(
    found: dict[str, tuple[int, ...]],
    required: dict[str, tuple[int, ...]],
    known: dict[str, tuple[int, ...]],
    where: str,
) -> None:
    """Raise one error listing every missing ``required`` key and every shape that differs
    from ``known`` (``found`` uses our names)."""
    problems = []
    missing = sorted(k for k in required if k not in found)
    if missing:
        more = f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
        problems.append(f"missing weights {', '.join(missing[:8])}{more}")
    for k, shape in found.items():
        if k in known and known[k] != shape:
            problems.append(f"{k} has shape {list(shape)}, the config implies {list(known[k])}")
    if problems:
        raise WeightsError(
            f"{where}: " + "; ".join(problems) + ". The weights do not match config.json: "
            "re-download or re-convert the checkpoint"
        )


class ShardWriter:
    """Collect tensors and write ``model.safetensors`` (or ``model-0000k-of-0000n`` shards plus
    ``model.safetensors.index.json`` past ``max_bytes``); memory stays near one shard."""

    def __init__(self, directory: Path, max_bytes: int = MAX_SHARD_BYTES, metadata: dict | None = None):
        self.directory, self.max_bytes = Path(directory), max_bytes
        self.metadata = metadata or {"format": "mlx"}  # transformers writes {"format": "pt"}
        self.current: dict[str, mx.array] = {}
        self.current_bytes = 0
        self.files: list[list[str]] = []
        self.total = 0

    def add(self, name: str, value: mx.array) -> None:
        mx.eval(value)
        if self.current and self.current_bytes + value.nbytes > self.max_bytes:
            self._flush()
        self.current[name] = value
        self.current_bytes += value.nbytes
        self.total += value.nbytes

    def _flush(self) -> None:
        i = len(self.files)
        save_safetensors(self.directory / f"shard-{i}.safetensors", self.current, metadata=self.metadata)
        self.files.append(sorted(self.current))
        self.current, self.current_bytes = {}, 0

    def close(self) -> None:
        if self.current or not self.files:
            self._flush()
        n = len(self.files)
        if n == 1:
            (self.directory / "shard-0.safetensors").rename(self.directory / "model.safetensors")
            return
        weight_map = {}
        for i, keys in enumerate(self.files):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.directory / f"shard-{i}.safetensors").rename(self.directory / name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_weights(
    directory: Path,
    weights: dict[str, mx.array],
    max_bytes: int = MAX_SHARD_BYTES,
    metadata: dict | None = None,
) -> None:
    writer = ShardWriter(directory, max_bytes, metadata)
    for k in sorted(weights):
        writer.add(k, weights[k])
    writer.close()


def weight_files(directory: Path) -> list[Path]:
    files = sorted(Path(directory).glob("model*.safetensors"))
    if not files:
        raise WeightsError(f"{directory} has no model*.safetensors; convert the model first with convert.py")
    return files


def read_weights(directory: Path) -> dict[str, mx.array]:
    weights = {}
    for f in weight_files(directory):
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:  # MLX raises RuntimeError/ValueError with the reader's message
            raise WeightsError(f"{f} is unreadable ({e}); it may be truncated: re-convert it") from e
    return weights


def is_mlx_checkpoint(directory: Path) -> bool:
    """True for directories written by us or mlx-lm (safetensors metadata ``format: mlx``)."""
    from safetensors import safe_open

    files = sorted(Path(directory).glob("model*.safetensors"))
    if not files or not (Path(directory) / "config.json").exists():
        return False
    try:
        with safe_open(str(files[0]), framework="numpy") as f:
            return (f.metadata() or {}).get("format") == "mlx"
    except Exception:
        return False
