"""Mistral (HF ``model_type: mistral``): Llama's layers without biases, and attention limited to a
sliding window of the last ``sliding_window`` positions (none when it is null, as in Mistral-7B
v0.2 and later). Everything else, names included, is Llama's, so it converts, trains with LoRA,
exports and loads in mlx-lm and llama.cpp as a Llama does."""

import dataclasses
from dataclasses import dataclass

import mlx.core as mx

from . import llama
from .base import causal_mask


@dataclass
class ModelArgs(llama.ModelArgs):
    sliding_window: int | None = None

    def checks(self) -> list[tuple[bool, str]]:
        window = self.sliding_window
        bad_window = window is not None and (type(window) is not int or window < 1)
        return super().checks() + [(bad_window, f"sliding_window {window!r} (a positive integer or null)")]


class MistralModel(llama.LlamaModel):
    def mask(self, L: int, attention_mask: mx.array | None) -> mx.array | str:
        window = self.args.sliding_window
        mask = causal_mask(L, attention_mask)
        if window is None or window >= L:
            return mask
        idx = mx.arange(L)
        # transformers' sliding_window_overlay: key j is seen from query i when j > i - window
        band = idx[None, :] > idx[:, None] - window  # (L, L)
        causal = idx[:, None] >= idx[None, :] if isinstance(mask, str) else mask
        return (causal & band) | mx.eye(L, dtype=mx.bool_)


class MistralForCausalLM(llama.LlamaForCausalLM):
    base_class = MistralModel


class MistralForSequenceClassification(llama.LlamaForSequenceClassification):
    base_class = MistralModel


MODEL_TYPE = "mistral"
TASKS = {"base": MistralModel, "lm": MistralForCausalLM, "classify": MistralForSequenceClassification}
ARCHITECTURE_ALIASES: dict[str, str] = {}
# llama.cpp and mlx-lm read Mistral as Llama, without its window; PEFT names the same modules
FAMILY = dataclasses.replace(llama.FAMILY, unportable=("sliding_window",))
