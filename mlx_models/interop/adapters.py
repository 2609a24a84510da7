"""An adapter directory in: PEFT's or mlx-lm's format read as an ``Adapter`` (``models.lora``),
checked against a base model, and loaded into it (``train.py --adapter DIR``)."""

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import ConfigError, WeightsError
from ..models.lora import ADAPTED, Adapter
from . import mlx_lm_adapter as mlx_lm_format
from . import peft_adapter as peft_format


def read_adapter(directory: str | Path) -> Adapter:
    """A PEFT (adapter_model.safetensors) or mlx-lm (adapters.safetensors) LoRA or DoRA adapter directory."""
    directory = Path(directory)
    if (directory / peft_format.CONFIG).is_file() and peft_format.is_peft(directory):
        return peft_format.read(directory)
    if (directory / mlx_lm_format.WEIGHTS).is_file():
        return mlx_lm_format.read(directory)
    raise ConfigError(
        f"{directory} is not a LoRA adapter directory: it needs adapter_config.json with "
        "adapter_model.safetensors (PEFT) or adapters.safetensors (mlx-lm)"
    )


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
        m = adapter.magnitudes.get(path)
        if m is not None and m.shape != (out_dims,):
            problems.append(f"{path} DoRA magnitude shape {list(m.shape)}, the model needs {[out_dims]}")
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
    wrapped = {p for p, m in model.named_modules() if isinstance(m, ADAPTED)}
    assert wrapped == set(adapter.lora), (sorted(wrapped ^ set(adapter.lora)))[:4]
    model.load_weights(list(adapter.weights().items()), strict=False)
    mx.eval(model.parameters())
