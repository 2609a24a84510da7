"""PEFT's LoRA adapter directory: ``adapter_config.json`` + ``adapter_model.safetensors``.

PEFT names a LoRA weight ``base_model.model.<module path>.lora_A.weight`` (r, in) and
``...lora_B.weight`` (out, r): the transposes of MLX's ``lora_a`` (in, r) and ``lora_b`` (r, out).
Its scale is ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA). A task head trained in
full is a ``modules_to_save`` module, saved under its own name. DoRA (``use_dora``) adds each
layer's magnitude ``...lora_magnitude_vector`` (out,): mlx-lm's ``m``. The config is written and
read by peft's own ``LoraConfig``.
"""

import dataclasses
import difflib
import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..errors import ConfigError, WeightsError
from ..io import read_json, save_safetensors
from ..models.lora import ADAPTED, Adapter, setting_problems
from ..models.quant import dequantized_weights

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
TASK_TYPES = {"classify": "SEQ_CLS", "lm": "CAUSAL_LM"}  # masked-LM has none: a plain PeftModel
A, B, M = ".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"


def is_peft(directory: Path) -> bool:
    try:
        return "peft_type" in json.loads((directory / CONFIG).read_text())
    except (OSError, ValueError):
        return False


# ---- export ---------------------------------------------------------------------------------------


def write(adapter: Adapter, out: Path, model: nn.Module, task: str, base_name: str, dtype: mx.Dtype) -> None:
    """Write ``adapter`` (taken from ``model``) as a PEFT LoRA (or DoRA) adapter into ``out``."""
    from peft import LoraConfig

    heads = sorted({k.split(".")[0] for k in adapter.heads})
    config = LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        use_dora=adapter.dora,
        target_modules=peft_targets(model, adapter.modules),
        modules_to_save=heads or None,
        task_type=TASK_TYPES.get(task),
        base_model_name_or_path=base_name,
        inference_mode=True,
    )
    tensors = {PREFIX + k: v for k, v in (adapter.heads | tied_copies(model, adapter.heads)).items()}
    for path, (a, b) in adapter.lora.items():
        tensors[PREFIX + path + A], tensors[PREFIX + path + B] = a.T, b.T  # (r, in), (out, r)
    tensors |= {PREFIX + path + M: m for path, m in adapter.magnitudes.items()}
    tensors = {k: mx.contiguous(v.astype(dtype)) for k, v in tensors.items()}
    save_safetensors(out / WEIGHTS, tensors, metadata={"format": "pt"})
    config.save_pretrained(str(out))


def tied_copies(model: nn.Module, heads: dict[str, mx.array]) -> dict[str, mx.array]:
    """transformers ties a masked-LM decoder to the word embeddings and its bias to the head's;
    PEFT saves those copies inside ``modules_to_save`` and wants them back."""
    out = {}
    for k in heads:
        if k.endswith(("cls.predictions.bias", "lm_head.bias")):
            stem = k.removesuffix("bias")
            base = model[model.base_model_prefix]
            embeddings = f"{model.base_model_prefix}.{base.word_embeddings_path}.weight"
            out |= {
                stem + "decoder.bias": heads[k],
                stem + "decoder.weight": dequantized_weights(model)[embeddings],
            }
    return out


def peft_targets(model: nn.Module, wrapped: list[str]) -> list[str]:
    """The shortest module-name suffixes that select exactly the ``wrapped`` layers under PEFT's
    rule (a module is a target if its name equals one or ends with "." + one): "q_proj" for Llama,
    but "layer.0.output.dense" for BERT's FFN output, as "output.dense" also ends its attention's."""
    inner = {
        f"{p}.{c}" for p, m in model.named_modules() if isinstance(m, ADAPTED) for c in ("linear", "dropout")
    }
    names = [p for p, _ in model.named_modules() if p and p not in inner]
    chosen = set()
    for path in wrapped:
        parts = path.split(".")
        for i in range(len(parts) - 1, -1, -1):
            target = ".".join(parts[i:])
            if parts[i].isdigit():  # "layer.0.output.dense", not "0.output.dense"
                continue
            if all(n in wrapped for n in names if n == target or n.endswith("." + target)):
                chosen.add(target)
                break
    return sorted(chosen)


# ---- import ---------------------------------------------------------------------------------------


def read(directory: Path) -> Adapter:
    """A PEFT LoRA (or DoRA) adapter as an ``Adapter`` under the module names PEFT saved (HF's)."""
    from peft import PeftConfig
    from peft.utils import load_peft_weights

    raw = read_json(directory / CONFIG, ConfigError, "re-save the adapter with PEFT")
    try:
        config = PeftConfig.from_pretrained(str(directory))
    except Exception as e:  # peft raises TypeError/ValueError/KeyError for bad configs
        raise ConfigError(f"{directory / CONFIG} is not a valid PEFT config ({e})") from e
    _refuse_unsupported(config, directory)
    _check_keys(raw, directory)
    settings = {
        "r": (config.r, "positive integer"),
        "lora_alpha": (config.lora_alpha, "finite number"),
        "lora_dropout": (config.lora_dropout, "number in [0, 1)"),
        "use_rslora": (config.use_rslora, "boolean"),
        "use_dora": (config.use_dora, "boolean"),
        "target_modules": (config.target_modules, "list of module names"),
    }
    if problems := setting_problems(settings):
        raise ConfigError(f"{directory / CONFIG}: " + "; ".join(problems))
    try:
        state = load_peft_weights(str(directory), device="cpu")
    except Exception as e:
        raise WeightsError(f"{directory}: unreadable adapter weights ({e}); re-save the adapter") from e
    return _adapter(config, state, directory)


def _check_keys(raw: dict, directory: Path) -> None:
    """A key LoraConfig does not have (a typo, or a setting of a newer peft) is refused, unless it
    is unset (null, false, empty): peft would drop it and load a different adapter."""
    import peft
    from peft import LoraConfig

    known = sorted(f.name for f in dataclasses.fields(LoraConfig))
    for key in sorted(k for k, v in raw.items() if k not in known and v not in (None, False, "", [], {})):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]}?" if close else (
            f"peft {peft.__version__} has no such LoRA setting (an adapter from a newer peft: upgrade it)"
        )  # fmt: skip
        raise ConfigError(f"{directory / CONFIG}: unknown key {key!r}; {hint}")


def _refuse_unsupported(config, directory: Path) -> None:
    kind = getattr(config.peft_type, "value", config.peft_type)
    if kind != "LORA":
        raise ConfigError(f"{directory} is a {kind} adapter; only LoRA adapters can be imported")
    unsupported = [
        (config.rank_pattern or config.alpha_pattern, "per-module rank_pattern/alpha_pattern"),
        (config.fan_in_fan_out, "fan_in_fan_out"),
        (
            config.bias != "none" or getattr(config, "lora_bias", False),
            f"trained biases (bias={config.bias!r})",
        ),
        (getattr(config, "layer_replication", None), "layer_replication"),
        (getattr(config, "target_parameters", None), "target_parameters"),
        (getattr(config, "trainable_token_indices", None), "trainable_token_indices"),
    ]
    found = [what for wrong, what in unsupported if wrong]
    if found:
        raise ConfigError(
            f"{directory}: LoRA with {', '.join(found)} is not supported; merge the adapter into its base "
            "(PeftModel.merge_and_unload) and convert that model instead"
        )


def _adapter(config, state: dict, directory: Path) -> Adapter:
    from .sources import to_mx

    pairs, heads, magnitudes = {}, {}, {}
    for key, tensor in state.items():
        name = key.removeprefix(PREFIX)
        if name.endswith((A, B)):
            path = name[: -len(A)]
            pairs.setdefault(path, {})[name[-len(A) :]] = to_mx(tensor).astype(mx.float32).T
        elif name.endswith(M) and config.use_dora:
            magnitudes[name.removesuffix(M)] = to_mx(tensor).astype(mx.float32)
        elif ".lora_" in name:
            raise ConfigError(
                f"{directory}: {key} is not a linear-layer LoRA weight; only those are supported"
            )
        else:
            heads[name] = to_mx(tensor).astype(mx.float32)
    incomplete = sorted(p for p, ab in pairs.items() if len(ab) != 2)
    if config.use_dora:
        incomplete += sorted(set(pairs) ^ set(magnitudes))
    if incomplete or not pairs:
        what = "lora_A, lora_B or lora_magnitude_vector" if config.use_dora else "lora_A or lora_B"
        raise WeightsError(f"{directory}: LoRA weights missing {what} for {incomplete or 'every layer'}")
    scale = config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)
    lora = {p: (ab[A], ab[B]) for p, ab in pairs.items()}
    return Adapter(config.r, scale, float(config.lora_dropout), lora, heads, magnitudes)
