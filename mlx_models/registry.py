"""config.yaml, the registry every command reads: model aliases, datasets, training profiles, the
default run and the study selection. Its sections and entry keys are checked here; what training
keys mean is checked by `train.config`.

The default is the config.yaml shipped with the package; ``MLX_MODELS_CONFIG`` (or a command's
``--config``) names another.
"""

import functools
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# The config.yaml shipped with the package (in a checkout: a link to the one at its top).
SHIPPED_CONFIG = Path(__file__).resolve().parent / "config.yaml"
SECTIONS = ("models", "datasets", "profiles", "default_run", "model_selection")
MODEL_KEYS = ("source", "quantize", "train", "params", "config")
DATASET_KEYS = ("hub", "text", "label", "num_labels", "label_names", "embedded")
SELECTION_KEYS = ("selected_models", "aliases", "studies")  # model_selection: (study/plan.py)
STUDY_KEYS = ("models", "datasets", "profile", "overrides", "model_overrides", "analysis", "pretrain")


def config_file() -> Path:
    """The config.yaml in force: ``MLX_MODELS_CONFIG`` (set by ``--config``; a study's cells inherit
    it), else the shipped one."""
    return Path(os.environ.get("MLX_MODELS_CONFIG") or SHIPPED_CONFIG)


def read_config_yaml(config_path: str | os.PathLike | None = None) -> dict:
    """config.yaml's sections, checked; parsed once per file version."""
    path = Path(config_path or config_file())
    try:
        stat = path.stat()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; pass an existing config.yaml") from e
    return _read_yaml(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_yaml(path: Path, mtime_ns: int, size: int) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}; pass an existing config.yaml") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping with sections {', '.join(SECTIONS)}")
    unknown = [str(k) for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(unknown)} in {path}; allowed: {', '.join(SECTIONS)}"
        )
    sections = {name: data.get(name) or {} for name in SECTIONS}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ConfigError(f"section {name}: in {path} must be a mapping")
        entries = section.items() if name in ("models", "datasets") else []
        for entry, value in entries:
            _check_entry(f"{name}.{entry} in {path}", value, MODEL_KEYS if name == "models" else DATASET_KEYS)
    _check_selection(sections["model_selection"], path)
    return sections


def _check_selection(section: dict, path: Path) -> None:
    """model_selection's keys; what the names mean is checked when a study runs (study_plan.py)."""
    _check_entry(f"model_selection: in {path}", section, SELECTION_KEYS)
    studies = section.get("studies") or {}
    if not isinstance(studies, dict):
        raise ConfigError(f"model_selection.studies in {path} must be a mapping of study names")
    for study, value in studies.items():
        _check_entry(f"model_selection.studies.{study} in {path}", value, STUDY_KEYS)


def _check_entry(where: str, entry: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with keys among {', '.join(allowed)}")
    unknown = [str(k) for k in entry if k not in allowed]
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(allowed)}")


def dataset_registry(config_path: str | os.PathLike | None = None) -> dict[str, dict]:
    return read_config_yaml(config_path)["datasets"]
