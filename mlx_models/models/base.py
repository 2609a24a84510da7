"""What every model file shares: config parsing, attention masks and the task-model layout."""

import dataclasses
import difflib
import functools
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..errors import ConfigError
from . import cpu_ops

ACTIVATIONS = {
    "gelu": cpu_ops.gelu,  # exact erf form, as torch's nn.GELU()
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
    "silu": cpu_ops.silu,
}


@dataclass
class BaseModelArgs:
    """Fields are the exact HF ``config.json`` keys; extra keys in the file are ignored."""

    activations = tuple(ACTIVATIONS)  # the hidden_act values a family supports

    @classmethod
    def from_dict(cls, config: dict) -> "BaseModelArgs":
        params = inspect.signature(cls).parameters
        if typo := misspelt_key(config, list(params), lambda: hf_config_keys(config.get("model_type"))):
            raise ConfigError(f"config.json of model_type {config.get('model_type')!r}: {typo}")
        missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in config]
        if missing:
            raise ConfigError(
                f"config.json of model_type {config.get('model_type')!r} lacks required keys "
                f"{', '.join(missing)}; is it a complete Hugging Face config?"
            )
        if "num_labels" in params:
            config = {**config, "num_labels": num_labels_of(config)}
        given = {k: v for k, v in config.items() if k in params}
        if problems := type_problems(cls, given):
            raise ConfigError(f"unsupported {config.get('model_type')} config: " + "; ".join(problems))
        return cls(**given)

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        bad = [k for k in sizes if type(getattr(self, k)) is not int or getattr(self, k) < 1]
        self._raise([f"{k} {getattr(self, k)!r} (must be a positive integer)" for k in bad])
        self._raise([what for wrong, what in self.checks() if wrong])

    def checks(self) -> list[tuple[bool, str]]:
        """(is it wrong, what is wrong) for every rule of the family; the sizes are checked first."""
        supported = ", ".join(self.activations)
        return [(self.hidden_act not in self.activations, f"hidden_act {self.hidden_act!r} ({supported})")]

    def _raise(self, problems: list[str]) -> None:
        if problems:
            raise ConfigError(f"unsupported {self.model_type} config: " + "; ".join(problems))


@dataclass(frozen=True)
class Family:
    """What the code outside ``models/`` knows about a family; each family file declares its own
    ``FAMILY``, so a new family is one new file."""

    causal: bool  # a decoder: text is continued (no special tokens), left padding works, the
    # classifier pools the last real token and transformers' needs a pad token id
    lora_targets: dict[str, tuple[str, ...]]  # --lora-targets names (Llama's) -> this family's modules
    dropped: tuple[tuple[str, str], ...] = ()  # (regex, why) for checkpoint keys it never stores
    mlx_lm: bool = False  # mlx_lm.load reads it: LoRA runs export as mlx-lm adapters
    gguf_arch: str | None = None  # llama.cpp's architecture name (GGUF import and export); None: no GGUF
    gguf_permuted: tuple[tuple[str, str], ...] = ()  # (weight name suffix, config key of its head
    # count): rows llama.cpp interleaves per head for its rope kernel
    unportable: tuple[str, ...] = ()  # config keys mlx-lm and llama.cpp ignore: a model that sets
    # one exports only to transformers and PEFT


def misspelt_key(
    config: dict, fields: list[str], known: frozenset[str] | Callable[[], frozenset[str]] = frozenset()
) -> str | None:
    """A key that neither we nor transformers (``known``) understand but that is a letter or two
    from a field the config lacks (``num_hiden_layers``): its value would be ignored and the default
    used. Other unknown keys are left alone, as transformers does (tools add their own)."""
    absent = [f for f in fields if f not in config]
    for key in sorted(set(config) - set(fields)):
        close = difflib.get_close_matches(key, absent, n=1, cutoff=0.85)
        if close and key not in (known() if callable(known) else known):  # transformers only when needed
            return f"unknown key {key!r}, so {close[0]} would take its default; did you mean {close[0]}?"
    return None


@functools.cache
def hf_config_keys(model_type: str | None) -> frozenset[str]:
    """The keys transformers' config class of ``model_type`` has (``use_sliding_window``, ...)."""
    from transformers import AutoConfig

    if not isinstance(model_type, str):
        return frozenset()
    try:
        return frozenset(AutoConfig.for_model(model_type).to_dict())
    except ValueError:  # a model_type transformers does not know: refused when it is built
        return frozenset()


def type_problems(cls: type, given: dict) -> list[str]:
    """Every config.json value whose type is not its field's (a number given as a string, a size as
    a float): one error naming them all, before any of them is used."""
    problems = []
    for f in dataclasses.fields(cls):
        if f.name not in given:
            continue
        value, allowed = given[f.name], typing.get_args(f.type) or (f.type,)
        if not any(_of_type(value, t) for t in allowed):
            names = " or ".join(
                "null" if t is type(None) else getattr(t, "__name__", str(t)) for t in allowed
            )
            problems.append(f"{f.name} {value!r} (must be {names})")
    return problems


def _of_type(value: Any, tp: Any) -> bool:
    """JSON's view of a field type: an int is a float, a bool is no number, a float must be finite."""
    if tp is float:
        return type(value) in (int, float) and math.isfinite(value)
    if tp is int:
        return type(value) is int
    if tp is type(None) or tp is Any:
        return value is None or tp is Any
    origin = typing.get_origin(tp) or tp
    return isinstance(value, origin) if isinstance(origin, type) else True


def num_labels_of(config: dict) -> int:
    """HF stores ``id2label`` rather than ``num_labels`` in config.json."""
    if "num_labels" in config:
        return int(config["num_labels"])
    return len(config["id2label"]) if config.get("id2label") else 2


def activation(name: str):
    return ACTIVATIONS[name]


class TaskModel(nn.Module):
    """A base model under a task head, laid out as HF's ``<Family>For<Task>``: the base model
    at ``base_model_prefix``, the head's modules beside it, built from ``heads`` (name ->
    constructor taking the ModelArgs; None leaves the module out). The class name is the HF
    architecture name that config.json records."""

    base_class: type[nn.Module]
    base_model_prefix: str
    task: str
    base_kwargs: dict = {}
    heads: dict[str, Callable[[Any], nn.Module | None]] = {}
    head_modules: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.head_modules = tuple(cls.heads)

    def __init__(self, args):
        super().__init__()
        self.args = args
        setattr(self, self.base_model_prefix, self.base_class(args, **self.base_kwargs))
        for name, make in self.heads.items():
            if (module := make(args)) is not None:
                setattr(self, name, module)

    @property
    def layers(self) -> list:
        return self[self.base_model_prefix].layers


def padding_mask(attention_mask: mx.array | None) -> mx.array | None:
    """(B, L) 1/0 mask -> (B, 1, 1, L) boolean key mask for bidirectional attention."""
    if attention_mask is None:
        return None
    return (attention_mask != 0)[:, None, None, :]


def causal_mask(L: int, attention_mask: mx.array | None) -> mx.array | str:
    """Causal mask that also hides padded keys, for left or right padding.

    A padded query would see no key at all (a fully masked row gives NaN on some
    kernels), so every position may always attend to itself; real tokens never see pads.
    """
    if attention_mask is None:
        return "causal"
    idx = mx.arange(L)
    causal = idx[:, None] >= idx[None, :]  # (L, L)
    keys = (attention_mask != 0)[:, None, None, :]  # (B, 1, 1, L)
    return (causal & keys) | mx.eye(L, dtype=mx.bool_)


def last_token_index(attention_mask: mx.array) -> mx.array:
    """Index of the last real token of each row, for left or right padding."""
    L = attention_mask.shape[1]
    return mx.argmax(mx.arange(L) * (attention_mask != 0), axis=1)
