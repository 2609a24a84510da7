"""A trained model back in memory, from a run directory, one of its checkpoints, or a converted model.

    load_trained("results/models/run")            # the run's best/ (else last/) checkpoint
    load_trained("results/models/run/iter-40")    # that checkpoint
    load_trained("mlx_model")                     # a directory written by convert.py

A run checkpoint holds what was trained (all weights, or LoRA adapters + head) and the training
config that rebuilds the rest from the base model (``trainer.build``).
"""

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import MLXModelsError, SourceError, WeightsError
from ..interop.loading import load_model, load_tokenizer, read_config
from ..interop.weights import is_mlx_checkpoint
from ..models import checkpoint_task
from . import run_dir as rd
from .config import TrainConfig

TRAIN_CONFIG = "train_config.json"


@dataclass
class Checkpoint:
    """What a checkpoint or model directory is, from its JSON files alone (no weights read)."""

    path: Path
    config: dict  # its config.json: the HF config (+ base_model and lora for a run checkpoint)
    cfg: TrainConfig | None  # the run's training config; None for a converted model

    @property
    def task(self) -> str:
        return self.cfg.task if self.cfg else checkpoint_task(self.config)

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def lora(self) -> bool:
        return self.cfg is not None and self.cfg.lora

    @property
    def tfidf(self) -> bool:
        """A TF-IDF baseline run's checkpoint: a scikit-learn pipeline, no weights."""
        return self.cfg is not None and self.cfg.model == "tfidf"

    @property
    def num_labels(self) -> int:
        return int(self.config.get("num_labels", 2))


@dataclass
class TfidfTrained(Checkpoint):
    """A TF-IDF baseline run back in memory: its fitted pipeline (best/ and last/ hold the same)."""

    pipeline: Any


@dataclass
class Trained(Checkpoint):
    model: nn.Module
    tokenizer: Any
    base: Path  # the MLX model the run was built on (the directory itself for a converted model)
    base_heads: dict[str, mx.array]  # the task head as the base model had it, before training


def locate(path: str | Path, checkpoint: str | None = None) -> Checkpoint:
    """The checkpoint ``path`` names: itself, the run's ``checkpoint`` (default best, else last),
    or a converted model directory."""
    path = Path(path)
    if not path.is_dir():
        raise SourceError(
            f"{path}: no such directory; give a run directory, a checkpoint or a converted model"
        )
    if (tfidf := locate_tfidf(path, checkpoint)) is not None:
        return tfidf
    is_one = checkpoint is None and (path / TRAIN_CONFIG).is_file()
    ckpt = path if is_one else rd.pick_checkpoint(path, checkpoint)
    if ckpt is not None and (ckpt / TRAIN_CONFIG).is_file():
        return Checkpoint(ckpt, read_config(ckpt), TrainConfig.from_json(ckpt / TRAIN_CONFIG))
    if checkpoint:
        raise SourceError(f"{path} has no checkpoint {checkpoint!r} (with {TRAIN_CONFIG}); try best or last")
    if not is_mlx_checkpoint(path):
        raise SourceError(
            f"{path} is not a run directory, a checkpoint or a converted model; "
            "give a directory written by train.py or convert.py"
        )
    return Checkpoint(path, read_config(path), None)


def locate_tfidf(path: Path, checkpoint: str | None) -> Checkpoint | None:
    """The checkpoint of a TF-IDF baseline run that ``path`` (the run or one of its checkpoints)
    and ``checkpoint`` name; None for anything else. Its training config is the run's."""
    for run, ckpt in ((path, rd.pick_checkpoint(path, checkpoint)), (path.parent, path)):
        if ckpt is not None and (ckpt / rd.TFIDF_MODEL).is_file() and (run / rd.CONFIG).is_file():
            cfg = TrainConfig.from_json(run / rd.CONFIG)
            return Checkpoint(ckpt, _tfidf_config(ckpt), cfg) if cfg.model == "tfidf" else None
    return None


def _tfidf_config(ckpt: Path) -> dict:
    """What a model's config.json says, for a TF-IDF fit: its kind and its number of classes."""
    return {"model_type": "tfidf", "num_labels": len(_read_pipeline(ckpt).classes_)}


def _read_pipeline(ckpt: Path):
    """The fitted pipeline, read once per file version (locate and load_trained both need it)."""
    stat = (ckpt / rd.TFIDF_MODEL).stat()
    return _pipeline_at(str(ckpt / rd.TFIDF_MODEL), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _pipeline_at(path: str, mtime_ns: int, size: int):
    import joblib

    try:
        return joblib.load(path)
    except Exception as e:  # a truncated or foreign file: joblib raises whatever unpickling meets
        raise WeightsError(f"{path} cannot be read ({e}); use another checkpoint") from e


def inputs_of(c: Checkpoint) -> list[Path]:
    """What reading ``c`` reads from disk: the checkpoint and its base model (an --out must hold neither)."""
    base = getattr(c, "base", None) or c.config.get("base_model")
    return [c.path, *([Path(base)] if base else [])]


def load_trained(
    path: str | Path, checkpoint: str | None = None, reuse: Trained | TfidfTrained | None = None
) -> Trained | TfidfTrained:
    """The model a run checkpoint or converted model holds, ready to score. ``reuse``, a checkpoint
    of the same run loaded before, lends its built model: only the trained weights are read."""
    where = locate(path, checkpoint)
    if where.tfidf:
        return TfidfTrained(**vars(where), pipeline=_read_pipeline(where.path))
    if isinstance(reuse, Trained) and reuse.cfg is not None and reuse.path.parent == where.path.parent:
        rd.restore_weights(reuse.model, where.path)
        reuse.model.eval()
        return dataclasses.replace(reuse, path=where.path, config=where.config, cfg=where.cfg)
    if where.cfg is None:
        model = load_model(where.path)
        return Trained(
            **vars(where),
            model=model,
            tokenizer=load_tokenizer(where.path),
            base=where.path,
            base_heads=_heads(model),
        )
    model, tokenizer, base = rebuild(where)
    heads = _heads(model)
    rd.restore_weights(model, where.path)
    model.eval()
    return Trained(**vars(where), model=model, tokenizer=tokenizer, base=base, base_heads=heads)


def rebuild(where: Checkpoint) -> tuple[nn.Module, Any, Path]:
    """The model a run checkpoint was trained as (its weights not yet restored), its tokenizer and
    its base model, built as --eval-only does: a from-scratch run's tokenizer and config come from
    RUN/init."""
    from .build import build  # the training machinery: only for run checkpoints

    run_dir = str(where.path.parent)
    cfg = dataclasses.replace(where.cfg, grad_checkpoint=False, resume=None, eval_only=run_dir, out=run_dir)
    return build(cfg, where.config["num_labels"])


def _heads(model: nn.Module) -> dict[str, mx.array]:
    heads = tuple(f"{h}." for h in model.head_modules)
    return {k: v for k, v in tree_flatten(model.parameters()) if k.startswith(heads)}


def label_names(cfg: TrainConfig | None, num_labels: int) -> list[str]:
    """The run's class names (config.yaml's label_names, else the labels of its local files), else
    transformers' LABEL_i."""
    from ..registry import dataset_registry

    names = None
    if cfg is not None:
        names = dataset_registry().get(cfg.dataset, {}).get("label_names")
        if names is None and cfg.data_dir is not None:
            names = _local_label_names(cfg)
    if not names or len(names) != num_labels:
        return [f"LABEL_{i}" for i in range(num_labels)]
    return [str(n) for n in names]


def _local_label_names(cfg: TrainConfig) -> list[str] | None:
    from .data import load_splits

    try:
        return load_splits(cfg).label_names
    except MLXModelsError:  # the run's files moved since: fall back to LABEL_i
        return None
