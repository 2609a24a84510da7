"""mlx-lm's adapter directory: ``adapters.safetensors`` + ``adapter_config.json``.

mlx-lm's ``LoRALinear`` is ours, so the weights keep their names and layouts
(``model.layers.N.self_attn.q_proj.lora_a`` (in, r), ``...lora_b`` (r, out)). The config says which
layers to wrap: ``keys`` inside each of the last ``num_layers`` blocks, or full module paths (which
``mlx_lm.tuner.utils.linear_to_lora_layers`` also matches against the whole model), and
``lora_parameters`` {rank, scale, dropout}. A DoRA adapter (``fine_tune_type: dora``) also holds
each layer's magnitude ``<path>.m`` (out,). mlx-lm adapters hold adapter weights only: no task head.
"""

import difflib
import re
from pathlib import Path

import mlx.core as mx

from ..errors import ConfigError, WeightsError
from ..io import atomic_write_json, read_json, save_safetensors
from ..models.lora import Adapter, setting_problems

CONFIG = "adapter_config.json"
WEIGHTS = "adapters.safetensors"
LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
PARAMETERS = {  # lora_parameters: key -> (default, rule of models.lora.RULES)
    "rank": (None, "positive integer"),
    "scale": (None, "finite number"),
    "dropout": (0.0, "number in [0, 1)"),
    "keys": (None, "list of module names"),
}


def layer_keys(modules: list[str], num_layers: int) -> tuple[list[str], int]:
    """(keys, num_layers) for mlx-lm: keys inside the layers when the same ones are wrapped in every
    one of the last N layers; else the full module paths (and 0 layers)."""
    parts = [LAYER.match(p) for p in modules]
    if all(parts):
        layers, keys = sorted({int(m[1]) for m in parts}), sorted({m[2] for m in parts})
        tail = list(range(layers[0], num_layers))
        if layers == tail and len(modules) == len(tail) * len(keys):
            return keys, len(tail)
    return sorted(modules), 0


def write(adapter: Adapter, out: Path, num_layers: int, base: Path) -> None:
    keys, n = layer_keys(adapter.modules, num_layers)
    lora = {k: v for k, v in adapter.weights().items() if k.endswith((".lora_a", ".lora_b", ".m"))}
    save_safetensors(out / WEIGHTS, lora, metadata={"format": "mlx"})
    parameters = {"rank": adapter.rank, "scale": adapter.scale, "dropout": adapter.dropout, "keys": keys}
    kind = "dora" if adapter.dora else "lora"
    config = {"fine_tune_type": kind, "num_layers": n, "lora_parameters": parameters, "model": str(base)}
    atomic_write_json(out / CONFIG, config)


def read(directory: Path) -> Adapter:
    """An mlx-lm LoRA or DoRA adapter directory as an ``Adapter`` (module names are mlx-lm's = ours)."""
    config = read_json(directory / CONFIG, ConfigError, "re-save the adapter with mlx-lm")
    parameters = _parameters(config, directory / CONFIG)
    rank, scale = parameters["rank"], float(parameters["scale"])
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise ConfigError(f"{directory} holds a {kind!r} fine-tune; only LoRA and DoRA adapters import")
    try:
        weights = mx.load(str(directory / WEIGHTS))
    except Exception as e:  # MLX raises RuntimeError/ValueError with the reader's message
        raise WeightsError(f"{directory / WEIGHTS} is unreadable ({e}); it may be truncated") from e
    names = (".lora_a", ".lora_b", ".m") if kind == "dora" else (".lora_a", ".lora_b")
    paths = {k.rsplit(".", 1)[0] for k in weights}
    wrong = sorted(k for k in weights if not k.endswith(names))
    missing = sorted(f"{p}{n}" for p in paths for n in names if f"{p}{n}" not in weights)
    if wrong or missing:
        found = ", ".join((wrong + [f"no {k}" for k in missing])[:4])
        raise WeightsError(f"{directory / WEIGHTS}: not {kind.upper()} weights: {found}")
    lora = {p: (weights[f"{p}.lora_a"], weights[f"{p}.lora_b"]) for p in paths}
    magnitudes = {p: weights[f"{p}.m"] for p in paths} if kind == "dora" else {}
    return Adapter(rank, scale, float(parameters.get("dropout", 0.0)), lora, {}, magnitudes)


def _parameters(config: dict, where: Path) -> dict:
    """``lora_parameters``, every key known and every value checked (the rest of the file is
    mlx-lm's training arguments, which an import does not use)."""
    parameters = config.get("lora_parameters")
    if not isinstance(parameters, dict) or not {"rank", "scale"} <= set(parameters):
        raise ConfigError(f"{where} is not an mlx-lm adapter config (no lora_parameters with rank and scale)")
    for key in sorted(set(parameters) - set(PARAMETERS)):
        close = difflib.get_close_matches(key, PARAMETERS, n=1)
        hint = f"did you mean {close[0]}?" if close else f"mlx-lm's are {', '.join(PARAMETERS)}"
        raise ConfigError(f"{where}: unknown key lora_parameters.{key}; {hint}")
    settings = {f"lora_parameters.{k}": (parameters.get(k, d), rule) for k, (d, rule) in PARAMETERS.items()}
    settings["num_layers"] = (config.get("num_layers", 1), "layer count (-1: all)")
    if problems := setting_problems(settings):
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return parameters
