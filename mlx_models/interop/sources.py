"""Read a Hugging Face model from a hub id, a local directory or a GGUF file, one tensor at a time."""

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from .. import hub
from ..errors import SourceError, WeightsError
from ..io import read_json
from ..models import MODULES, architecture, family

TOKENIZER_PATTERNS = [
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "added_tokens.json",
]


@dataclass
class Source:
    """A model to convert: its HF config, tensor names with shapes, and lazy tensor readers."""

    config: dict
    shapes: dict[str, tuple[int, ...]]
    read: Callable[[str], mx.array]
    load_tokenizer: Callable[[], object]
    description: str
    # Tensors already in MLX's affine format (GGUF Q4_0/Q4_1/Q8_0): name -> {"group_size", "bits"},
    # and their reader returning (packed weight, scales, biases) without rounding anything.
    affine: dict[str, dict] = field(default_factory=dict)
    read_affine: Callable[[str], tuple[mx.array, mx.array, mx.array]] | None = None
    has_tokenizer: bool = True  # a directory without tokenizer files converts without one


def looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.endswith(".gguf")
        or spec.count("/") > 1
        or os.path.exists(spec)
    )


def open_source(spec: str | os.PathLike) -> Source:
    spec = str(spec)
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise SourceError(
                f"{spec}: no such file or directory; give a Hugging Face repo id, "
                "a model directory or a .gguf file"
            )
        return open_gguf(path) if path.suffix == ".gguf" else open_directory(path)
    return open_directory(download(spec), description=f"hub {spec}")


def download(repo_id: str) -> Path:
    """Fetch config, weights and tokenizer of ``repo_id`` (HF_TOKEN is used if set, never shown);
    offline or without network, the local cache is used."""
    import huggingface_hub as hf
    from huggingface_hub import errors

    token = os.environ.get("HF_TOKEN") or None
    # model*.safetensors: not the second copy some repos keep in their own names (Mistral's
    # consolidated.safetensors)
    patterns = ["config.json", "model*.safetensors", "*.safetensors.index.json", *TOKENIZER_PATTERNS]
    online = not hub.offline() and hub.reachable()
    try:
        files = hf.list_repo_files(repo_id, token=token) if online else []
        if files and not any(f.endswith(".safetensors") for f in files):
            patterns += ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
        path = hf.snapshot_download(
            repo_id, allow_patterns=patterns, token=token, local_files_only=not online
        )
        return Path(path)
    except errors.GatedRepoError as e:
        raise SourceError(
            f"{repo_id} is a gated repo: accept its license on the Hugging Face website, then set HF_TOKEN "
            "to a token of that account"
        ) from e
    except errors.RepositoryNotFoundError as e:
        raise SourceError(
            f"{repo_id} was not found on the Hugging Face hub (or it is private: set HF_TOKEN); "
            "check the spelling, or pass a local directory"
        ) from e
    except Exception as e:
        if online and not hub.is_network_error(e):
            raise
        why = "the hub is unreachable (HF_HUB_OFFLINE is set)" if hub.offline() else hub.unreachable()
        raise SourceError(
            f"could not download {repo_id}: {why}, and it is not in the local cache; "
            "connect to the network, or pass a local model directory or .gguf file"
        ) from e


def to_mx(t) -> mx.array:
    """torch tensor -> mx.array without losing bfloat16."""
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return mx.array(t.view(torch.uint16).numpy()).view(mx.bfloat16)
    return mx.array(t.numpy())


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a HF directory: those its index names, else model*.safetensors, else
    every .safetensors (a repo's second copy in other names, e.g. consolidated.safetensors, is not
    read)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, WeightsError, "re-download the checkpoint").get("weight_map") or {}
        return sorted({path / name for name in weight_map.values()})
    return sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))


def open_directory(path: Path, description: str | None = None) -> Source:
    config_file = path / "config.json"
    if not config_file.exists():
        raise SourceError(
            f"{path} has no config.json; point at a Hugging Face model directory or a .gguf file"
        )
    config = read_json(config_file, WeightsError, "re-download the checkpoint")
    shapes, readers = {}, {}
    safetensors = safetensors_files(path)
    if safetensors:
        from safetensors import SafetensorError, safe_open

        for f in safetensors:
            try:
                handle = safe_open(str(f), framework="pt")
                for k in handle.keys():
                    shapes[k] = tuple(handle.get_slice(k).get_shape())
                    readers[k] = (handle, k)
            except (SafetensorError, OSError) as e:
                raise WeightsError(f"{f} is corrupt or truncated ({e}); re-download it") from e
        read = lambda k: to_mx(readers[k][0].get_tensor(readers[k][1]))  # noqa: E731
    else:
        bins = sorted(path.glob("pytorch_model*.bin"))
        if not bins:
            raise SourceError(f"{path} has no *.safetensors or pytorch_model*.bin weights")
        import torch

        state = {}
        for f in bins:
            try:  # weights_only: a .bin is a pickle, never run its code; mmap needs the zip format
                state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(f)))
            except Exception as e:
                raise WeightsError(
                    f"{f} could not be read safely ({e}); prefer a safetensors checkpoint"
                ) from e
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        read = lambda k: to_mx(state[k])  # noqa: E731

    def load_tokenizer():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))

    has_tokenizer = any(next(path.glob(p), None) for p in TOKENIZER_PATTERNS)
    return Source(
        config, shapes, read, load_tokenizer, description or f"directory {path}", has_tokenizer=has_tokenizer
    )


def _unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    # llama.cpp stores q/k rows interleaved per head for its rope kernel; undo it
    # (the inverse of convert_hf_to_gguf.py's permute).
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_rows(hf_name: str, w: np.ndarray, config: dict) -> mx.array:
    """A GGUF tensor's rows in HF order (what the family permuted, un-permuted); also its block
    scales and biases."""
    for ending, heads in family(config).gguf_permuted:
        if hf_name.endswith(ending):
            w = _unpermute_qk(w, config[heads])
    return mx.array(np.ascontiguousarray(w))


def open_gguf(path: Path) -> Source:
    import gguf
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        reader = gguf.GGUFReader(str(path))
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    except Exception as e:
        raise WeightsError(f"{path} is not a readable GGUF file ({e})") from e
    arch = parsed.get("model_type")  # transformers names the family by llama.cpp's architecture
    if arch not in MODULES or family(arch).gguf_arch != arch:
        supported = ", ".join(sorted(t for t, m in MODULES.items() if m.FAMILY.gguf_arch == t))
        raise SourceError(f"{path}: GGUF architecture {arch!r} is not supported; supported: {supported}")
    config = AutoConfig.for_model(**parsed).to_dict()
    config["architectures"] = [architecture(arch, "lm")]
    for k in ("_name_or_path", "transformers_version"):
        config.pop(k, None)

    from ..models import build_model
    from . import gguf_blocks
    from .weights import parameter_shapes

    names = gguf.get_tensor_name_map(gguf_blocks.arch(arch), config["num_hidden_layers"])
    tensors = {t.name: t for t in reader.tensors}
    hf_to_gguf = {}
    for hf_name in parameter_shapes(build_model(config, "lm")):
        base, suffix = hf_name.rsplit(".", 1)
        g = names.get_name(base)
        if g and f"{g}.{suffix}" in tensors:
            hf_to_gguf[hf_name] = f"{g}.{suffix}"

    def read(hf_name: str) -> mx.array:
        t = tensors[hf_to_gguf[hf_name]]
        return _gguf_rows(hf_name, gguf.dequantize(t.data, t.tensor_type).astype(np.float32), config)

    def read_affine(hf_name: str) -> tuple[mx.array, mx.array, mx.array]:
        t = tensors[hf_to_gguf[hf_name]]
        return tuple(_gguf_rows(hf_name, a, config) for a in gguf_blocks.to_affine(t.data, t.tensor_type))

    layouts = {k: gguf_blocks.layout(tensors[g].tensor_type) for k, g in hf_to_gguf.items()}
    affine = {k: v for k, v in layouts.items() if v}

    shapes = {}
    for k, g in hf_to_gguf.items():
        t = tensors[g]
        shapes[k] = tuple(int(d) for d in reversed(t.shape))

    def load_tokenizer():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

    return Source(config, shapes, read, load_tokenizer, f"GGUF {path}", affine, read_affine)
