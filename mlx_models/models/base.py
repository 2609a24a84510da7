"""What every model file shares: config parsing and attention masks."""

import dataclasses
import inspect
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..errors import ConfigError

ACTIVATIONS = {
    "gelu": nn.gelu,  # exact erf form, as torch's nn.GELU()
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
    "silu": nn.silu,
}


@dataclass
class BaseModelArgs:
    """Fields are the exact HF ``config.json`` keys; extra keys in the file are ignored."""

    @classmethod
    def from_dict(cls, config: dict) -> "BaseModelArgs":
        params = inspect.signature(cls).parameters
        missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in config]
        if missing:
            raise ConfigError(
                f"config.json of model_type {config.get('model_type')!r} lacks required keys "
                f"{', '.join(missing)}; is it a complete Hugging Face config?"
            )
        if "num_labels" in params:
            config = {**config, "num_labels": num_labels_of(config)}
        return cls(**{k: v for k, v in config.items() if k in params})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _raise(self, problems: list[str]) -> None:
        if problems:
            raise ConfigError(f"unsupported {self.model_type} config: " + "; ".join(problems))


def num_labels_of(config: dict) -> int:
    """HF stores ``id2label`` rather than ``num_labels`` in config.json."""
    if "num_labels" in config:
        return int(config["num_labels"])
    return len(config["id2label"]) if config.get("id2label") else 2


def activation(name: str):
    return ACTIVATIONS[name]


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
