"""A study's pretraining stages: a model of the study pretrained from scratch with masked-LM on each
dataset's training split before its cells finetune it, and what the report says of them.

    model_selection.studies.NAME:
      models: [minilm-l6, roberta-mini, ...]
      pretrain:
        roberta-mini: {max_length: 64, max_tokens: 6000000, batch_size: 128, learning_rate: 2.0e-3}

For every dataset D the stage is `python train.py --model roberta-mini --from-scratch --task mlm
--dataset D [--data-dir DIR] <the keys> --out results/study/NAME/pretrain/roberta-mini-D`, run,
skipped, resumed or recorded as failed as a cell is; the model's cell on D then finetunes
`results/study/NAME/pretrain/roberta-mini-D/best`. The architecture is the alias's `config:` in
config.yaml (or a local directory's config.json), the tokenizer a byte-level BPE trained on D's
training split, and masked-LM trains on that split alone: task mlm holds out the same validation
and test texts as task classify (train/data.py), so the texts the finetuned cells are scored on
never enter pretraining. The keys are the stage's own (no profile, overrides or command line of
the study); max_tokens, the token budget, is required.
"""

import json
import math
import os
from pathlib import Path

from ..errors import ConfigError
from ..models import MODULES, build_model, tasks_of
from ..train import scratch
from ..train.config import CLI_ONLY, check_keys, resolve_model_alias
from ..train.metrics import read_metrics

# What the study sets for a stage: never among its keys.
STAGE_SETS = CLI_ONLY | {"model", "dataset", "data_dir", "profile", "task", "from_scratch"}


def stage_args(alias: str, data_args: list[str], keys: list[str]) -> list[str]:
    """The stage's train.py arguments, all but --out."""
    return ["--model", alias, "--from-scratch", "--task", "mlm", *data_args, *keys]


def checked_keys(alias: str, values, where: str, config_path: str | os.PathLike) -> dict:
    """A model's entry under pretrain: -> its checked training keys; the model must be one that
    masked-LM can pretrain."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{where} must map training keys to values, got {values!r}")
    given = {str(k).strip().lstrip("-").replace("-", "_") for k in values or {}}
    if own := sorted(given & STAGE_SETS):
        raise ConfigError(
            f"{', '.join(own)} cannot be set in {where}: the study sets them (--model {alias} "
            "--from-scratch --task mlm --dataset D --out results/study/NAME/pretrain/...)"
        )
    keys = check_keys(values or {}, where)
    if not keys.get("max_tokens"):
        raise ConfigError(f"{where} needs a token budget: set max_tokens (the tokens to pretrain on)")
    try:
        architecture(alias, keys.get("model_config"), config_path)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    return keys


def architecture(model: str, spec: str | None, config_path: str | os.PathLike) -> dict:
    """What --from-scratch builds for ``model`` (``spec``: --model-config), if masked-LM can
    pretrain it; ConfigError says why not."""
    if resolve_model_alias(model, config_path).get("source", "").startswith("builtin:"):
        raise ConfigError(f"{model} is the bag-of-words baseline: it has no network to pretrain")
    config = scratch.architecture(model, spec, config_path)
    model_type = config.get("model_type")
    if model_type in MODULES and "mlm" not in MODULES[model_type].TASKS:
        raise ConfigError(
            f"{model} is a {model_type} model, which has no masked-LM head (its heads: "
            f"{', '.join(tasks_of(model_type))}); pretrain an encoder (RoBERTa or BERT) instead"
        )
    build_model(config, "mlm")  # the architecture checked (lazy: nothing materialised)
    return config


def check_positions(model: str, config: dict, lengths: dict[str, int]) -> None:
    """The model's positions must hold each max_length (``lengths``: what -> max_length)."""
    positions = build_model(config, "mlm").args.max_positions
    for what, length in lengths.items():
        if positions and length > positions:
            raise ConfigError(
                f"the {what} max_length {length} is longer than the {positions} positions of {model}; "
                f"raise max_position_embeddings (max_length + 2 for RoBERTa) or lower max_length"
            )


# ---- the report ---------------------------------------------------------------------------------


def summary(run_dir: Path, stage, status: str, outcome: dict | None) -> dict:
    """The report's row of a stage: what was pretrained, on how many tokens, how well."""
    records = read_metrics(run_dir)
    val = [r for r in records if r["split"] == "validation"]
    test = next((r for r in reversed(records) if r["split"] == "test"), None)
    best = min(val, key=lambda r: r["loss"]) if val else {}  # the first minimum: best/
    config, state = _read(run_dir / "best" / "config.json"), _read(run_dir / "last" / "trainer_state.json")
    train_cfg = _read(run_dir / "config.json")
    row = {"model": stage.model, "dataset": stage.dataset, "run": stage.run, "status": status}
    row |= {"reason": (outcome or {}).get("reason"), "parameters": parameters(run_dir / "best")}
    row |= {"tokens": state.get("tokens"), "max_length": train_cfg.get("max_length")}
    row |= {"mlm_val_loss": best.get("loss"), "mlm_val_accuracy": best.get("accuracy")}
    row |= {"mlm_test_loss": (test or {}).get("loss"), "mlm_test_accuracy": (test or {}).get("accuracy")}
    row |= {"wall_s": (outcome or {}).get("wall_s"), "description": describe(row, config)}
    return row


def parameters(checkpoint: Path) -> int | None:
    """The weights a checkpoint holds (the masked-LM head included), from its file's header."""
    path = checkpoint / "model.safetensors"
    if not path.is_file():
        return None
    with path.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def describe(row: dict, config: dict) -> str | None:
    """What the model is, in words, so that no one takes it for a downloaded checkpoint."""
    if not config or row["parameters"] is None or row["tokens"] is None:
        return None
    model_type = config.get("model_type", "?")
    # The family's name as its file's docstring opens ("RoBERTa (HF ``model_type: roberta``) ...").
    name = (MODULES[model_type].__doc__ or model_type).split()[0] if model_type in MODULES else model_type
    return (
        f"a {config.get('num_hidden_layers')}-layer, {config.get('hidden_size')}-hidden "
        f"{name} ({row['parameters'] / 1e6:.1f} M parameters) pretrained "
        f"from scratch by this study with masked-LM on {row['dataset']}'s training split: "
        f"{row['tokens'] / 1e6:.1f} M tokens of {row['max_length']}-token blocks; not {model_type}-base"
    )


def markdown_section(rows: list[dict]) -> list[str]:
    """report.md's lines on the pretraining stages (none without stages)."""
    if not rows:
        return []
    lines = ["", "## Pretrained by this study", ""]
    for row in rows:
        what = row["description"] or f"{row['model']} pretrained from scratch by this study (not trained yet)"
        score = ""
        if row["mlm_val_loss"] is not None:
            score = f"; masked-LM validation loss {row['mlm_val_loss']:.4f}"
            score += (
                f" ({row['mlm_val_accuracy']:.1%} of masked tokens right)" if row["mlm_val_accuracy"] else ""
            )
        status = row["status"] + (f": {row['reason']}" if row["reason"] else "")
        lines.append(
            f"- `{row['model']}` on {row['dataset']}: {what}{score}. {status}; [{row['run']}]({row['run']}/)"
        )
    lines += [
        "",
        "Its cells finetune the stage's best checkpoint (lowest validation loss). The corpus is the "
        "dataset's training split: the validation and test texts the cells are scored on are held out.",
    ]
    return lines


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
