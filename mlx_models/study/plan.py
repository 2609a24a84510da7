"""A study's plan: config.yaml's `model_selection:` -> the cells (model x dataset) and the train.py
arguments of each.

    model_selection:
      selected_models: [bert-base-uncased, roberta-base, meta-llama/Llama-2-7b-hf, bag-of-words-tfidf]
      aliases: {bag-of-words-tfidf: tfidf}      # the plan's names that are neither alias nor hub id
      studies:
        NAME:
          models: [...]                         # default: selected_models
          datasets: [imdb, ...]                 # registered names, or directories of local files
          profile: overfit
          overrides: {max_samples: 200}         # training keys for every cell
          model_overrides: {smollm2-135m: {quantize: 4}}
          analysis: {methods: [ig], probe: 100, members: 500, steps: 20}   # or false: none
          pretrain: {roberta-mini: {max_length: 64, max_tokens: 6000000}}   # see pretrain.py

A model named in the selection is an alias of `models:`, the hub id in an alias's `source`
(meta-llama/Llama-2-7b-hf -> llama-2-7b), a name in `aliases:`, or a local model directory.
Precedence in a cell: profile < overrides < model_overrides < the command line. A cell that sets
neither save_every nor save_points saves ANALYSIS_POINTS checkpoints for the analysis to read.

A model under `pretrain:` is first pretrained from scratch with masked-LM on each dataset's
training split, in stages of their own (`pretrain/<model>-<dataset>[-phase<k>]`: only the keys
given there, no profile, overrides or command line); its cells finetune the last stage's best/.
"""

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MLXModelsError
from ..explain.runner import METHODS
from ..registry import config_file, dataset_registry, read_config_yaml
from ..train.config import CLI_ONLY, TrainConfig, check_keys, load_train_config, resolve_model_alias
from . import pretrain

# Training keys a study sets itself, per cell: never in overrides or on the study's command line.
STUDY_SETS = CLI_ONLY | {"model", "dataset", "data_dir", "profile"}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STUDY_ROOT = Path("results") / "study"  # relative to the working directory, as train.py's results/
# The analysis of every checkpoint (study/analysis.py): its settings and their defaults.
ANALYSIS = {"methods": ["ig"], "probe": 100, "members": 500, "steps": 20, "random_draws": 3}
ANALYSIS_MIN = {"probe": 1, "members": 1, "steps": 2, "random_draws": 1}
ANALYSIS_POINTS = 5


@dataclass(frozen=True)
class Cell:
    """One model on one dataset: a train.py run of its own."""

    model: str  # the selection's model as train.py --model takes it: an alias or a local model path
    name: str  # the model's short name, for the run directory
    dataset: str
    args: tuple[str, ...]  # train.py arguments, all but --out
    folder: str = "runs"  # runs/ for a finetuning cell, pretrain/ for a pretraining stage
    pretrained: str | None = None  # the stage (pretrain/<id>) whose best/ checkpoint this run goes on from
    phase: int = 0  # a pretraining stage of several phases: its number (1, 2, ...)

    @property
    def id(self) -> str:
        return f"{self.name}-{self.dataset}" + (f"-phase{self.phase}" if self.phase else "")

    @property
    def run(self) -> str:
        """The run directory, relative to the study's."""
        return f"{self.folder}/{self.id}"

    @property
    def key(self) -> str:
        """Its name in status.json and in the study's messages: <id> for a cell, pretrain/<id> for a stage."""
        return self.id if self.folder == "runs" else self.run

    def train_args(self, out: Path) -> list[str]:
        """The cell's whole train.py command line, run directory included."""
        return [*self.args, "--out", str(out)]


@dataclass(frozen=True)
class Plan:
    name: str
    models: list[str]  # as the selection names them
    datasets: list[str]
    profile: str | None
    cells: list[Cell]
    analysis: dict | None = None  # ANALYSIS's keys; None: the study analyses nothing
    stages: list[Cell] = field(default_factory=list)  # pretraining, before the cells

    def describe(self) -> dict:
        """What identifies the study on disk (plan.json): a re-run must match it."""
        described = {
            "study": self.name,
            "models": self.models,
            "datasets": self.datasets,
            "profile": self.profile,
            "cells": {cell.id: list(cell.args) for cell in self.cells},
            "analysis": self.analysis,
        }
        if self.stages:  # only then: plan.json of a study without pretraining stays as it was
            described["pretraining"] = {stage.id: list(stage.args) for stage in self.stages}
        return described

    def stages_of(self, cells: list[Cell]) -> list[Cell]:
        """The pretraining stages that ``cells`` finetune (all their phases), in the plan's order."""
        wanted = {cell.pretrained for cell in cells}
        for stage in reversed(self.stages):  # a phase goes on from the one before it
            if stage.run in wanted:
                wanted.add(stage.pretrained)
        return [stage for stage in self.stages if stage.run in wanted]


def study_names(config_path: str | os.PathLike | None = None) -> list[str]:
    config_path = config_path or config_file()
    return list(_selection(config_path).get("studies") or {})


def load_plan(name: str, cli: dict, config_path: str | os.PathLike | None = None) -> Plan:
    """The study ``name`` of config.yaml with ``cli`` (checked training keys) over every cell;
    every cell's config is resolved as train.py would, so bad input fails before anything runs."""
    config_path = config_path or config_file()
    entry = _study_entry(name, config_path)
    where = f"model_selection.studies.{name} in {config_path}"
    if "models" in entry:
        models = _names(entry["models"], "models", f"model_selection.studies.{name}.models in {config_path}")
    else:  # the plan's own selection
        selected = _selection(config_path).get("selected_models")
        models = _names(selected, "models", f"model_selection.selected_models in {config_path}")
    datasets = _names(
        entry.get("datasets"), "datasets", f"model_selection.studies.{name}.datasets in {config_path}"
    )
    aliases = [model_alias(m, config_path, where) for m in models]
    data = [_dataset(d, config_path, where) for d in datasets]
    profile = entry.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise ConfigError(f"profile in {where} must be a profile name, got {profile!r}")
    if bad := sorted(set(cli) & STUDY_SETS):
        raise ConfigError(
            f"{', '.join(bad)} cannot be given with --study: the study sets them per cell "
            f"(narrow the study with --only MODEL and --datasets NAME)"
        )
    common = check_keys(entry.get("overrides") or {}, f"{where} overrides", STUDY_SETS)
    per_model = _per_model(entry, "model_overrides", models, aliases, config_path, where)
    pretraining = _per_model(entry, "pretrain", models, aliases, config_path, where)
    analysis = analysis_settings(entry.get("analysis", {}), f"model_selection.studies.{name}.analysis")
    cells, stages = [], []
    for alias in aliases:
        keys = common | per_model.get(alias, {}) | cli
        more, before = _model_runs(name, alias, data, profile, keys, pretraining.get(alias, []), config_path)
        cells, stages = cells + more, stages + before
    cells, finetune = _check_cells(name, cells, config_path, analysis)
    _check_stages(name, stages, finetune, config_path)
    return Plan(name, models, datasets, profile, cells, analysis, stages)


def _model_runs(
    study: str,
    alias: str,
    data: list[tuple[str, str | None]],
    profile: str | None,
    keys: dict,
    phases: list[dict],
    config_path: str | os.PathLike,
) -> tuple[list[Cell], list[Cell]]:
    """A model's cell on every dataset, after its pretraining stage there when it has ``phases``
    (the training keys of each): the first from scratch, each next one from the best/ checkpoint of
    the one before, the cell from the last one's."""
    short = resolve_model_alias(alias, config_path)["name"]
    cells, stages = [], []
    for dataset, data_dir in data:
        data_args = ["--dataset", dataset] + (["--data-dir", data_dir] if data_dir else [])
        model, before = alias, None
        for k, keys_k in enumerate(phases, 1):
            args = pretrain.stage_args(model, data_args, as_args(keys_k), first=before is None)
            phase = k if len(phases) > 1 else 0
            before = Cell(alias, short, dataset, tuple(args), "pretrain", before and before.run, phase)
            model = str(STUDY_ROOT / study / before.run / "best")  # what the stage leaves
            stages.append(before)
        args = ["--model", model, *data_args] + (["--profile", profile] if profile else []) + as_args(keys)
        cells.append(Cell(alias, short, dataset, tuple(args), pretrained=before and before.run))
    return cells, stages


def analysis_settings(value: Any, where: str) -> dict | None:
    """A study entry's ``analysis:`` (a mapping of ANALYSIS's keys, or false) with the defaults."""
    if value is False:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must map {', '.join(ANALYSIS)} to values, or be false")
    if unknown := sorted(set(value) - set(ANALYSIS)):
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; known: {', '.join(ANALYSIS)}")
    out = ANALYSIS | value
    methods = [out["methods"]] if isinstance(out["methods"], str) else out["methods"]
    if not methods or not isinstance(methods, list) or not set(methods) <= set(METHODS) - {"linear"}:
        raise ConfigError(
            f"{where}.methods must list methods of {', '.join(m for m in METHODS if m != 'linear')}; "
            f"got {out['methods']!r}"
        )
    for key, low in ANALYSIS_MIN.items():
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < low:
            raise ConfigError(f"{where}.{key} must be an integer of at least {low}, got {out[key]!r}")
    return out | {"methods": methods}


def model_alias(name: str, config_path: str | os.PathLike, where: str) -> str:
    """A selection's model name -> what train.py --model takes (see the module docstring)."""
    models = read_config_yaml(config_path)["models"]
    aliases = _selection(config_path).get("aliases") or {}
    if not isinstance(aliases, dict):
        raise ConfigError(f"model_selection.aliases in {config_path} must map the plan's names to aliases")
    if name in models:
        return name
    if name in aliases:
        if aliases[name] not in models:
            raise ConfigError(
                f"model_selection.aliases in {config_path} maps {name!r} to {aliases[name]!r}, which is "
                f"not an alias of models: ({', '.join(models)})"
            )
        return aliases[name]
    by_source = [alias for alias, entry in models.items() if entry.get("source") == name]
    if len(by_source) == 1:
        return by_source[0]
    path = Path(name).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return str(path.resolve())
    close = difflib.get_close_matches(name, [*models, *aliases], n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ConfigError(
        f"unknown model {name!r} in {where}; {hint}use an alias of models: ({', '.join(models)}), "
        f"a hub id in an alias's source, a name in model_selection.aliases, or a local model directory"
    )


def as_args(values: dict[str, Any]) -> list[str]:
    """Checked training keys -> train.py flags (--key value, --flag / --no-flag)."""
    args = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, "none" if value is None else str(value)]
    return args


# ---- the pieces of a study entry ------------------------------------------------------------------


def _selection(config_path: str | os.PathLike) -> dict:
    return read_config_yaml(config_path)["model_selection"]


def _study_entry(name: str, config_path: str | os.PathLike) -> dict:
    studies = _selection(config_path).get("studies") or {}
    if name not in studies:
        known = ", ".join(studies) or "none yet"
        raise ConfigError(
            f"unknown study {name!r}; studies in {config_path} model_selection.studies: {known}"
        )
    if not SAFE_NAME.fullmatch(name):
        raise ConfigError(
            f"study name {name!r} must be letters, digits, '.', '_' or '-' (it names a directory)"
        )
    return studies[name]


def _names(value: Any, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not value:
        raise ConfigError(f"the study selects no {what}; list them in {where}")
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of names, got {value!r}")
    if dup := sorted({v for v in value if value.count(v) > 1}):
        raise ConfigError(f"{', '.join(dup)} listed twice in {where}; keep one")
    return value


def _dataset(name: str, config_path: str | os.PathLike, where: str) -> tuple[str, str | None]:
    """(dataset name, data_dir): a registered dataset, or a directory of train/validation/test files."""
    registry = dataset_registry(config_path)
    if name in registry:
        return name, None
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve().name, str(path.resolve())
    raise ConfigError(
        f"unknown dataset {name!r} in {where}; registered: {', '.join(registry)} "
        f"(or a directory with train/validation/test files)"
    )


def _per_model(
    entry: dict, what: str, models: list[str], aliases: list[str], config_path: str | os.PathLike, where: str
) -> dict[str, dict]:
    """model_overrides: or pretrain: -> {alias: checked training keys} for the models it names."""
    section = entry.get(what) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{what} in {where} must map model names to training keys")
    out = {}
    for name, values in section.items():
        alias = model_alias(str(name), config_path, f"{where} {what}")
        if alias not in aliases:
            raise ConfigError(
                f"{what} in {where} names {name!r}, which the study does not select ({', '.join(models)})"
            )
        if what == "pretrain":
            out[alias] = pretrain.checked_phases(alias, values, f"{where} pretrain.{name}", config_path)
        else:
            out[alias] = check_keys(values or {}, f"{where} {what}.{name}", STUDY_SETS)
    return out


def _check_cells(
    study: str, cells: list[Cell], config_path: str | os.PathLike, analysis: dict | None
) -> tuple[list[Cell], dict[tuple[str, str], TrainConfig]]:
    """Each cell's config resolved as train.py resolves it (unknown keys, bounds, profile, data);
    with an analysis, a classifier whose probe fits every dataset's test split, and the cells that
    set no checkpoint spacing get --save-points ANALYSIS_POINTS. A cell that finetunes a pretraining
    stage is checked with its model's alias (the stage's best/ does not exist yet). Returns the
    cells and their configs by (model, dataset)."""
    seen, probed, configs, out = set(), set(), {}, []
    for cell in cells:
        if cell.id in seen:
            raise ConfigError(
                f"study {study}: two cells would share run {cell.id} (models or dataset directories "
                f"with the same name); rename one"
            )
        seen.add(cell.id)
        try:
            cfg = configs[cell.model, cell.dataset] = load_train_config(_checked_args(cell), config_path)
        except ConfigError as e:
            raise ConfigError(f"study {study}, cell {cell.id}: {e}") from e
        if analysis and cfg.task != "classify":
            raise ConfigError(
                f"study {study}, cell {cell.id}: the analysis explains classifiers, not task {cfg.task}; "
                f"set analysis: false in the study entry"
            )
        if analysis and cell.dataset not in probed:
            probed.add(cell.dataset)
            _check_probe(study, cfg, analysis["probe"], config_path)
        if analysis and cfg.save_every is None and cfg.save_points is None:
            cell = dataclasses.replace(cell, args=(*cell.args, "--save-points", str(ANALYSIS_POINTS)))
        out.append(cell)
    return out, configs


def _check_stages(
    study: str,
    stages: list[Cell],
    finetune: dict[tuple[str, str], TrainConfig],
    config_path: str | os.PathLike,
) -> None:
    """Each pretraining stage's config, and its model: one masked-LM can pretrain, with positions
    for the stage's and its cells' max_length."""
    for stage in stages:
        try:
            cfg = load_train_config(_checked_args(stage), config_path)
            if not stage.pretrained:  # the first phase: the architecture of every phase
                config = pretrain.architecture(cfg.model, cfg.model_config, config_path)
            lengths = {
                "pretraining": cfg.max_length,
                "finetuning": finetune[stage.model, stage.dataset].max_length,
            }
            pretrain.check_positions(cfg.model, config, lengths)
        except ConfigError as e:
            raise ConfigError(f"study {study}, pretraining {stage.run}: {e}") from e


def _checked_args(run: Cell) -> list[str]:
    """The arguments to check a run's config with: a run that goes on from a pretraining stage is
    checked with its model's alias (the stage's best/ does not exist yet)."""
    args = list(run.args)
    if run.pretrained:
        args[args.index("--model") + 1] = run.model
    return args


def _check_probe(study: str, cfg, probe: int, config_path: str | os.PathLike) -> None:
    """The probe texts come from the test split: it must hold as many. Data that cannot be read
    here (a hub dataset offline) is left to its cells, which fail with the reason."""
    from ..train.data import load_splits

    try:
        size = len(load_splits(cfg, config_path).test)
    except MLXModelsError:
        return
    if probe > size:
        raise ConfigError(
            f"study {study}: analysis.probe is {probe} but {cfg.dataset}'s test split has {size} texts; "
            f"lower analysis.probe to at most {size}"
        )
