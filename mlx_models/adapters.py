"""LoRA adapters between our models and the ecosystem's adapter formats (PEFT, mlx-lm).

An ``Adapter`` is what a LoRA run trains, under our (= HF) module names: for each wrapped linear,
``<path>.lora_a`` (in, r) and ``<path>.lora_b`` (r, out) in mlx-lm's ``LoRALinear`` layout (the
update is ``scale * x @ lora_a @ lora_b``), plus the task head trained in full. ``peft_format`` and
``mlx_lm_format`` read and write it; ``import_adapter`` is ``train.py --adapter DIR``.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .config import TrainConfig
from .errors import ConfigError, WeightsError
from .lora import LoRALinear, target_paths


@dataclass
class Adapter:
    rank: int
    scale: float
    dropout: float
    lora: dict[str, tuple[mx.array, mx.array]]  # module path -> (lora_a (in, r), lora_b (r, out))
    heads: dict[str, mx.array]  # task-head weights trained in full (PEFT's modules_to_save)

    @property
    def alpha(self) -> float:
        return self.scale * self.rank

    @property
    def modules(self) -> list[str]:
        return sorted(self.lora)

    def weights(self) -> dict[str, mx.array]:
        """Flat weights as a LoRA model holds them."""
        flat = {f"{p}.lora_a": a for p, (a, _) in self.lora.items()}
        return flat | {f"{p}.lora_b": b for p, (_, b) in self.lora.items()} | self.heads


def from_model(model: nn.Module, dropout: float) -> Adapter:
    """The adapters and trained head of a LoRA model (one rank and scale, as apply_lora makes)."""
    lora = {p: m for p, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not lora:
        raise ConfigError("the model has no LoRA adapters; export it with --to hf instead")
    (rank,), (scale,) = {m.lora_a.shape[1] for m in lora.values()}, {m.scale for m in lora.values()}
    trainable = dict(tree_flatten(model.trainable_parameters()))
    heads = {k: v for k, v in trainable.items() if not k.endswith((".lora_a", ".lora_b"))}
    pairs = {p: (m.lora_a, m.lora_b) for p, m in lora.items()}
    return Adapter(rank, float(scale), dropout, pairs, heads)


# ---- import: train.py --adapter DIR --------------------------------------------------------------


def read_adapter(directory: str | Path) -> Adapter:
    """A PEFT (adapter_model.safetensors) or mlx-lm (adapters.safetensors) LoRA adapter directory."""
    from . import mlx_lm_format, peft_format

    directory = Path(directory)
    if (directory / peft_format.CONFIG).is_file() and peft_format.is_peft(directory):
        return peft_format.read(directory)
    if (directory / mlx_lm_format.WEIGHTS).is_file():
        return mlx_lm_format.read(directory)
    raise ConfigError(
        f"{directory} is not a LoRA adapter directory: it needs adapter_config.json with "
        "adapter_model.safetensors (PEFT) or adapters.safetensors (mlx-lm)"
    )


def import_adapter(cfg: TrainConfig, num_labels: int) -> tuple[TrainConfig, Adapter]:
    """Read ``cfg.adapter`` and check it against the base model; returns the training config with
    the adapter's LoRA settings (rank, alpha, dropout, wrapped modules) and the adapter, renamed to
    the model's module paths. Nothing is loaded yet: see ``load_into``."""
    from .build import resolve_once
    from .loading import read_config
    from .models import build_model
    from .weights import add_or_strip_prefix

    adapter = read_adapter(cfg.adapter)
    config = read_config(resolve_once(cfg))
    overrides = {"num_labels": cfg.num_labels or num_labels} if cfg.task == "classify" else {}
    model = build_model({**config, **overrides}, cfg.task)  # lazy: names and shapes only
    rename = add_or_strip_prefix([*adapter.lora, *adapter.heads], model)
    adapter.lora = {rename[p]: w for p, w in adapter.lora.items()}
    adapter.heads = {rename[k]: w for k, w in adapter.heads.items()}
    check_against(adapter, model, cfg.adapter)
    short = sorted({p.rsplit(".", 1)[-1] for p in adapter.lora})  # q_proj, value, ...
    targets = short if target_paths(model, short) == adapter.modules else adapter.modules
    settings = {"lora_rank": adapter.rank, "lora_alpha": adapter.alpha, "lora_dropout": adapter.dropout}
    return dataclasses.replace(cfg, lora=True, lora_targets=targets, **settings), adapter


def check_against(adapter: Adapter, model: nn.Module, where: str) -> None:
    """One error naming every wrapped module the model lacks and every shape that differs."""
    modules = dict(model.named_modules())
    params = dict(tree_flatten(model.parameters()))
    problems = []
    for path, (a, b) in sorted(adapter.lora.items()):
        layer = modules.get(path)
        if path.startswith(tuple(model.head_modules)) or not isinstance(layer, nn.Linear):
            problems.append(f"{path} is not a linear layer of the {model_name(model)} base model")
            continue
        out_dims, in_dims = layer.weight.shape
        if a.shape != (in_dims, adapter.rank) or b.shape != (adapter.rank, out_dims):
            problems.append(
                f"{path} LoRA shapes {list(a.shape)} x {list(b.shape)}, the model needs "
                f"{[in_dims, adapter.rank]} x {[adapter.rank, out_dims]}"
            )
    for k, w in sorted(adapter.heads.items()):
        if k not in params:
            problems.append(f"{k} is not a weight of the {model_name(model)} head")
        elif params[k].shape != w.shape:
            problems.append(f"{k} has shape {list(w.shape)}, the model's is {list(params[k].shape)}")
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        raise WeightsError(
            f"adapter {where} does not fit this base model: {'; '.join(problems[:4])}{more}; "
            "use the base model (and label count) it was trained for"
        )


def model_name(model: nn.Module) -> str:
    return type(model).__name__


def load_into(model: nn.Module, adapter: Adapter) -> None:
    """Put the adapter's weights into a model that ``trainer.build`` wrapped as ``import_adapter``
    configured it (same modules, rank and scale)."""
    wrapped = {p for p, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == set(adapter.lora), (sorted(wrapped ^ set(adapter.lora)))[:4]
    model.load_weights(list(adapter.weights().items()), strict=False)
    mx.eval(model.parameters())
