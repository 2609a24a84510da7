"""LoRA and DoRA (and QLoRA: either around a quantized linear) for any of our models.

The layers are mlx-lm's ``LoRALinear`` and ``DoRALinear`` (they wrap ``nn.Linear`` and
``nn.QuantizedLinear``, which is all QLoRA needs); this module picks the layers, sets
scale = alpha / r, freezes everything but the adapters (and DoRA's magnitudes) and the task
head, and fuses adapters back into plain weights.
"""

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner import dora
from mlx_lm.tuner.lora import LoRALinear

from ..errors import ConfigError
from . import families


@functools.cache  # the families are fixed once models/ is imported
def target_aliases() -> dict[str, tuple[str, ...]]:
    """--lora-targets names (Llama's) -> every family's module names for them."""
    aliases: dict[str, tuple[str, ...]] = {}
    for f in families():
        for name, modules in f.lora_targets.items():
            aliases[name] = tuple(dict.fromkeys(aliases.get(name, ()) + modules))
    return aliases


__all__ = [
    "ADAPTED",
    "Adapter",
    "DoRALinear",
    "LoRALinear",
    "apply_lora",
    "from_model",
    "fuse_lora",
    "target_paths",
]


class DoRALinear(dora.DoRALinear):
    """DoRA (Liu et al. 2024) as peft's ``use_dora`` computes it, on mlx-lm's layer (its weights and
    names): with s = m / |W + scale B A| per output feature (the norm a constant for the backward),

        y = base(x) + (s - 1) * W drop(x) + s * scale * B A drop(x)

    which is s * (W x + scale B A x) + bias without dropout (mlx-lm's form, and exactly the base at
    initialisation); with dropout, the base's own product is not dropped, as in peft. The products
    go through the base layer itself, so a 4-bit base keeps its own path and no dense weight lives
    for the backward."""

    def __init__(
        self, input_dims: int, output_dims: int, r: int = 8, dropout: float = 0.0, scale: float = 20.0
    ):
        super().__init__(input_dims, output_dims, r=r, dropout=dropout, scale=scale)
        self.dropout_p = dropout

    @staticmethod
    def from_base(linear: nn.Module, r: int = 8, dropout: float = 0.0, scale: float = 20.0) -> "DoRALinear":
        out_dims, in_dims = linear.weight.shape
        if isinstance(linear, nn.QuantizedLinear):
            in_dims *= 32 // linear.bits
        layer = DoRALinear(in_dims, out_dims, r=r, dropout=dropout, scale=scale)
        layer.set_linear(linear)  # m: the base's row norms
        return layer

    def __call__(self, x: mx.array) -> mx.array:
        bias = self.linear.get("bias")
        y = self.linear(x)
        dropped = self.dropout(x) if self.training and self.dropout_p else x
        w_dropped = self.linear(dropped) if dropped is not x else y
        if bias is not None:
            w_dropped = w_dropped - bias
        z = (dropped @ self.lora_a) @ self.lora_b
        adapted = self._dequantized_weight() + (self.scale * self.lora_b.T) @ self.lora_a.T
        s = (self.m / mx.stop_gradient(mx.linalg.norm(adapted, axis=1))).astype(x.dtype)
        return y + (s - 1) * w_dropped + s * (self.scale * z).astype(x.dtype)

    def fuse(self, dequantize: bool = False) -> nn.Module:
        """mlx-lm's fuse, in the base's dtype (its magnitudes are float32)."""
        weight = self._dequantized_weight()
        adapted = weight + ((self.scale * self.lora_b.T) @ self.lora_a.T).astype(weight.dtype)
        s = self.m / mx.linalg.norm(adapted.astype(mx.float32), axis=1)
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in self.linear)
        fused.weight = (s[:, None] * adapted).astype(weight.dtype)
        if "bias" in self.linear:
            fused.bias = self.linear.bias
        if self._is_quantized() and not dequantize:
            q = self.linear
            return nn.QuantizedLinear.from_linear(fused, group_size=q.group_size, bits=q.bits, mode=q.mode)
        return fused


ADAPTED = (LoRALinear, dora.DoRALinear)  # the layers an adapter wraps (ours is mlx-lm's DoRA)


def _matches(path: str, targets: list[str]) -> bool:
    aliases = target_aliases()
    for name in (n for t in targets for n in aliases.get(t, (t,))):
        if name == "output.dense" and path.endswith("attention.output.dense"):
            continue  # BERT's FFN output, not the attention output projection
        if path == name or path.endswith("." + name):
            return True
    return False


def target_paths(model: nn.Module, targets: list[str]) -> list[str]:
    """Paths of the base model's linear layers that ``targets`` (names or full paths) select."""
    heads = tuple(model.head_modules)
    return [
        path
        for path, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
        if not path.startswith(heads)
        and isinstance(m, nn.Linear | nn.QuantizedLinear)
        and _matches(path, targets)
    ]


def apply_lora(
    model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float, use_dora: bool = False
) -> list[str]:
    """Wrap the target linears of the base model in LoRA (or DoRA); freeze all but the adapters,
    DoRA's magnitudes and the head."""
    heads = tuple(model.head_modules)
    modules = dict(model.named_modules())
    layer = DoRALinear if use_dora else LoRALinear
    found = [
        (path, layer.from_base(modules[path], r=rank, dropout=dropout, scale=alpha / rank))
        for path in target_paths(model, targets)
    ]
    if not found:
        raise ConfigError(
            f"lora_targets {targets} match no linear layer of the model; use e.g. q_proj,v_proj"
        )
    model.freeze()
    model.update_modules(tree_unflatten(found))
    for _, m in found:
        m.unfreeze(recurse=False, keys=["lora_a", "lora_b", "m"], strict=False)
    for h in heads:
        if h in model:  # a tied causal LM has no lm_head module
            model[h].unfreeze()
    return [p for p, _ in found]


def fuse_lora(model: nn.Module) -> nn.Module:
    """Replace every adapted linear by base + scale * B A (DoRA: each row then rescaled to its
    magnitude), dequantized to a dense linear."""
    fused = [(p, m.fuse(dequantize=True)) for p, m in model.named_modules() if isinstance(m, ADAPTED)]
    model.update_modules(tree_unflatten(fused))
    return model


# ---- the adapter a LoRA model carries, as the adapter formats read and write it ----------------
# For each wrapped linear, ``<path>.lora_a`` (in, r) and ``<path>.lora_b`` (r, out) in mlx-lm's
# ``LoRALinear`` layout (the update is ``scale * x @ lora_a @ lora_b``), under our (= HF) module
# names, DoRA's ``<path>.m`` (out,), plus the task head trained in full.


@dataclass
class Adapter:
    rank: int
    scale: float
    dropout: float
    lora: dict[str, tuple[mx.array, mx.array]]  # module path -> (lora_a (in, r), lora_b (r, out))
    heads: dict[str, mx.array]  # task-head weights trained in full (PEFT's modules_to_save)
    magnitudes: dict[str, mx.array] = field(default_factory=dict)  # DoRA: module path -> m (out,)

    @property
    def dora(self) -> bool:
        return bool(self.magnitudes)

    @property
    def alpha(self) -> float:
        return self.scale * self.rank

    @property
    def modules(self) -> list[str]:
        return sorted(self.lora)

    def weights(self) -> dict[str, mx.array]:
        """Flat weights as a LoRA model holds them."""
        flat = {f"{p}.lora_a": a for p, (a, _) in self.lora.items()}
        flat |= {f"{p}.m": m for p, m in self.magnitudes.items()}
        return flat | {f"{p}.lora_b": b for p, (_, b) in self.lora.items()} | self.heads


RULES = {
    "positive integer": lambda v: type(v) is int and v >= 1,
    "layer count (-1: all)": lambda v: type(v) is int and v >= -1,
    "finite number": lambda v: type(v) in (int, float) and math.isfinite(v),
    "number in [0, 1)": lambda v: type(v) in (int, float) and 0 <= v < 1,
    "boolean": lambda v: type(v) is bool,
    "list of module names": lambda v: v is None or isinstance(v, str) or (
        isinstance(v, list | set) and all(isinstance(x, str) for x in v)  # peft makes a set of it
    ),
}  # fmt: skip


def setting_problems(settings: dict[str, tuple[Any, str]]) -> list[str]:
    """An adapter config's values checked before use: name -> (value, a rule of ``RULES``)."""
    return [f"{k} {v!r} (must be a {rule})" for k, (v, rule) in settings.items() if not RULES[rule](v)]


def from_model(model: nn.Module, dropout: float) -> Adapter:
    """The adapters and trained head of a LoRA or DoRA model (one rank and scale, as apply_lora makes)."""
    lora = {p: m for p, m in model.named_modules() if isinstance(m, ADAPTED)}
    if not lora:
        raise ConfigError("the model has no LoRA adapters; export it with --to hf instead")
    (rank,), (scale,) = {m.lora_a.shape[1] for m in lora.values()}, {m.scale for m in lora.values()}
    trainable = dict(tree_flatten(model.trainable_parameters()))
    heads = {k: v for k, v in trainable.items() if k.rsplit(".", 1)[0] not in lora}
    pairs = {p: (m.lora_a, m.lora_b) for p, m in lora.items()}
    magnitudes = {p: m.m for p, m in lora.items() if isinstance(m, dora.DoRALinear)}
    return Adapter(rank, float(scale), dropout, pairs, heads, magnitudes)
