"""Model registry: one module per HF ``model_type``, each with ``ModelArgs`` and ``TASKS``."""

import mlx.nn as nn

from ..errors import ConfigError
from . import bert, llama, roberta

MODULES = {"bert": bert, "roberta": roberta, "llama": llama}

# HF architecture name -> task of our head class.
ARCHITECTURE_TASKS = {
    f"{prefix}{suffix}": task
    for prefix in ("Bert", "Roberta", "Llama")
    for suffix, task in (
        ("Model", "base"),
        ("ForMaskedLM", "mlm"),
        ("ForPreTraining", "mlm"),
        ("ForSequenceClassification", "classify"),
        ("ForCausalLM", "lm"),
    )
}


def model_module(config: dict):
    model_type = config.get("model_type")
    if model_type not in MODULES:
        raise ConfigError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(MODULES))}")
    return MODULES[model_type]


def checkpoint_task(config: dict) -> str:
    """The task of the head a checkpoint was saved with (from ``architectures``)."""
    for arch in config.get("architectures") or []:
        if arch in ARCHITECTURE_TASKS:
            return ARCHITECTURE_TASKS[arch]
    return "lm" if config.get("model_type") == "llama" else "base"


def model_class(config: dict, task: str | None = None) -> tuple[type[nn.Module], object]:
    """(head class, parsed ModelArgs) for ``config`` and ``task`` (default: the checkpoint's)."""
    module = model_module(config)
    task = task or checkpoint_task(config)
    if task not in module.TASKS:
        raise ConfigError(
            f"task {task!r} is not available for {config['model_type']}; "
            f"choose one of: {', '.join(module.TASKS)}"
        )
    return module.TASKS[task], module.ModelArgs.from_dict(config)


def build_model(config: dict, task: str | None = None) -> nn.Module:
    """A randomly initialised (lazy, nothing materialised) model for ``config``."""
    cls, args = model_class(config, task)
    return cls(args)
