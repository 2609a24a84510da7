"""A study's pretraining stages: a model of the study pretrained from scratch with masked-LM on each
dataset's training split before its cells finetune it, and what the report says of them.

    model_selection.studies.NAME:
      models: [minilm-l6, roberta-mini, ...]
      pretrain:
        roberta-mini: {max_length: 64, max_tokens: 6000000, batch_size: 128}     # one phase, or
        roberta-mini: [{max_length: 32, max_tokens: ...}, {max_length: 64, ...}]  # phases in turn

For every dataset D a phase is `python train.py --model roberta-mini --from-scratch --task mlm
--dataset D [--data-dir DIR] <its keys> --out results/study/NAME/pretrain/roberta-mini-D` (with
several phases, `...-D-phase<k>`, each next one `--model <the one before>/best` instead of
`--from-scratch`), run, skipped, resumed or recorded as failed as a cell is; the model's cell on D
then finetunes the last phase's best/. The architecture is the alias's `config:` in config.yaml
(or a local directory's config.json), the tokenizer a byte-level BPE trained on D's training split
(kept by every later phase), and masked-LM trains on that split alone: task mlm holds out the same
validation and test texts as task classify (train/data.py), so the texts the finetuned cells are
scored on never enter pretraining. The keys are the phase's own (no profile, overrides or command
line of the study); max_tokens, its token budget, is required.
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


def stage_args(model: str, data_args: list[str], keys: list[str], first: bool) -> list[str]:
    """A stage's train.py arguments, all but --out: the first phase from scratch, a next one going
    on from ``model`` (the best/ of the phase before)."""
    start = ["--from-scratch"] if first else []
    return ["--model", model, *start, "--task", "mlm", *data_args, *keys]


def checked_phases(alias: str, value, where: str, config_path: str | os.PathLike) -> list[dict]:
    """A model's entry under pretrain: (training keys, or a list of them: phases run one after the
    other) -> the checked keys of each phase; the model must be one masked-LM can pretrain."""
    phases = value if isinstance(value, list) else [value]
    if not phases:
        raise ConfigError(f"{where} lists no phase; give training keys (max_tokens at least)")
    checked = [
        _checked_keys(alias, keys, f"{where}[{k}]" if len(phases) > 1 else where)
        for k, keys in enumerate(phases)
    ]
    try:
        architecture(alias, checked[0].get("model_config"), config_path)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    return checked


def _checked_keys(alias: str, values, where: str) -> dict:
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
    """A stage's (one phase's) numbers: tokens trained, how well, how it ended."""
    records = read_metrics(run_dir)
    val = [r for r in records if r["split"] == "validation"]
    test = next((r for r in reversed(records) if r["split"] == "test"), None) or {}
    best = min(val, key=lambda r: r["loss"]) if val else {}  # the first minimum: best/
    row = {"model": stage.model, "dataset": stage.dataset, "run": stage.run, "status": status}
    row |= {"reason": (outcome or {}).get("reason"), "wall_s": (outcome or {}).get("wall_s")}
    row |= {"tokens": _read(run_dir / "last" / "trainer_state.json").get("tokens")}
    row |= {"max_length": _read(run_dir / "config.json").get("max_length")}
    row |= {"mlm_val_loss": best.get("loss"), "mlm_val_accuracy": best.get("accuracy")}
    return row | {"mlm_test_loss": test.get("loss"), "mlm_test_accuracy": test.get("accuracy")}


def report_rows(study_dir: Path, phases: list[dict]) -> list[dict]:
    """report.json's pretraining rows: one per model and dataset, its phases' rows (``summary``,
    in order) under "phases", the last phase's checkpoint (the one its cells finetune) described."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in phases:
        groups.setdefault((row["model"], row["dataset"]), []).append(row)
    rows = []
    for group in groups.values():
        last = group[-1]
        first_unfinished = next((r for r in group if r["status"] != "finished"), last)
        tokens = [r["tokens"] for r in group]
        row = {k: last[k] for k in ("model", "dataset", "run")}
        row |= {"status": first_unfinished["status"], "reason": first_unfinished["reason"]}
        row |= {"parameters": parameters(study_dir / last["run"] / "best")}
        row |= {"tokens": None if None in tokens else sum(tokens), "max_length": last["max_length"]}
        row |= {
            k: last[k] for k in ("mlm_val_loss", "mlm_val_accuracy", "mlm_test_loss", "mlm_test_accuracy")
        }
        row |= {"wall_s": sum(r["wall_s"] or 0.0 for r in group), "phases": group}
        rows.append(
            row | {"description": describe(row, _read(study_dir / last["run"] / "best" / "config.json"))}
        )
    return rows


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
    tokens = f"{row['tokens'] / 1e6:.1f} M tokens"
    if len(row["phases"]) == 1:
        tokens += f" of {row['max_length']}-token blocks"
    else:
        blocks = [f"{p['tokens'] / 1e6:.1f} M of {p['max_length']}-token blocks" for p in row["phases"]]
        tokens += f" ({', then '.join(blocks)})"
    return (
        f"a {config.get('num_hidden_layers')}-layer, {config.get('hidden_size')}-hidden {name} "
        f"({row['parameters'] / 1e6:.1f} M parameters) pretrained from scratch by this study with "
        f"masked-LM on {row['dataset']}'s training split: {tokens}; not {model_type}-base"
    )


def markdown_section(rows: list[dict]) -> list[str]:
    """report.md's lines on the pretraining stages (none without stages)."""
    if not rows:
        return []
    lines = ["## Pretrained by this study", ""]
    for row in rows:
        what = row["description"] or f"{row['model']} pretrained from scratch by this study (not trained yet)"
        if row["mlm_val_loss"] is not None:
            what += f"; masked-LM validation loss {row['mlm_val_loss']:.4f}"
            what += f" ({row['mlm_val_accuracy']:.1%} of the masked tokens right)"
        runs = ", ".join(f"[{p['run']}]({p['run']}/)" for p in row["phases"])
        status = row["status"] + (f": {row['reason']}" if row["reason"] else "")
        lines.append(f"- `{row['model']}` on {row['dataset']}: {what}. {status}; {runs}")
    lines += [
        "",
        "Its cells finetune the best checkpoint (lowest validation loss) of the last phase. The "
        "corpus is the dataset's training split: the validation and test texts the cells are scored "
        "on never enter pretraining.",
        "",
    ]
    return lines


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
