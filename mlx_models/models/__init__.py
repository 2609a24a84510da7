"""Model registry: one module per HF ``model_type``.

Each family file (every module here but the shared ones) declares ``MODEL_TYPE``, ``ModelArgs``,
``TASKS`` (task -> head class) and ``FAMILY`` (what the rest of the code needs to know of it); it
is found by its presence, so a new family is one new file. A head class's name is the HF
architecture name and its ``head_modules`` are the task head's submodules; everything else
(loading, conversion, parity, training, export, the CLIs) derives from here.
"""

import importlib
import pkgutil

import mlx.nn as nn

from ..errors import ConfigError
from .base import Family

SHARED = ("base", "cpu_ops", "norms", "quant", "lora")  # what the family files build on
MODULES = {
    module.MODEL_TYPE: module
    for module in (
        importlib.import_module(f"{__name__}.{m.name}")
        for m in pkgutil.iter_modules(__path__)
        if m.name not in SHARED
    )
    if hasattr(module, "FAMILY")  # a family file declares MODEL_TYPE, ModelArgs, TASKS and FAMILY
}
TASKS = ("base", "mlm", "classify", "lm")  # every head of any family; train.py trains all but base


def family(config_or_type: dict | str) -> Family:
    """What a family declares about itself (``FAMILY`` in its file), from a config or a model_type."""
    model_type = config_or_type if isinstance(config_or_type, str) else config_or_type.get("model_type")
    return model_module({"model_type": model_type}).FAMILY


def families() -> list[Family]:
    return [m.FAMILY for m in MODULES.values()]


def model_module(config: dict):
    model_type = config.get("model_type")
    if model_type not in MODULES:
        raise ConfigError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(MODULES))}")
    return MODULES[model_type]


def tasks_of(model_type: str) -> tuple[str, ...]:
    """The heads a family has, e.g. ('base', 'mlm', 'classify') for BERT."""
    return tuple(t for t in TASKS if t in MODULES[model_type].TASKS)


def architecture(model_type: str, task: str) -> str:
    """The transformers class name of our head for ``task`` (what config.json records)."""
    return MODULES[model_type].TASKS[task].__name__


def head_modules() -> set[str]:
    """Top-level module names of every task head of every family ('cls', 'score', ...)."""
    return {h for m in MODULES.values() for cls in m.TASKS.values() for h in cls.head_modules}


def checkpoint_task(config: dict) -> str:
    """The task of the head a checkpoint was saved with (from ``architectures``)."""
    module = model_module(config)
    by_name = {cls.__name__: task for task, cls in module.TASKS.items()} | module.ARCHITECTURE_ALIASES
    for arch in config.get("architectures") or []:
        if arch in by_name:
            return by_name[arch]
    return "lm" if "lm" in module.TASKS else "base"


def build_model(config: dict, task: str | None = None) -> nn.Module:
    """A randomly initialised (lazy, nothing materialised) model for ``config`` and ``task``
    (default: the checkpoint's head)."""
    module = model_module(config)
    task = task or checkpoint_task(config)
    if task not in module.TASKS:
        raise ConfigError(
            f"task {task!r} is not available for {config['model_type']}; "
            f"choose one of: {', '.join(tasks_of(module.MODEL_TYPE))}"
        )
    return module.TASKS[task](module.ModelArgs.from_dict(config))
