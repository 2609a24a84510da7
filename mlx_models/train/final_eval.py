"""A run's final evaluation: its best checkpoint scored on the test split (at the end of training,
and for `train.py --eval-only RUN`)."""

import dataclasses
import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..batching import pad_id_for
from ..errors import ConfigError, DataError, MLXModelsError
from ..interop.loading import read_config
from . import run_dir as rd
from .build import build, encode_split, load_data
from .config import TrainConfig
from .data import Splits
from .distributed import World, world
from .evaluation import Evaluator, evaluate
from .metrics import append_metrics, plot_curves
from .reporting import reporting
from .tasks import Masking


class TrainingError(MLXModelsError):
    """Training that cannot go on, or whose result is unusable (the loss diverged)."""


def masking_for(cfg: TrainConfig, tokenizer) -> Masking | None:
    if cfg.task != "mlm":
        return None
    return Masking.for_tokenizer(tokenizer, cfg.mlm_probability, cfg.whole_word_masking)


def curve_axis(cfg: TrainConfig) -> str:
    return "step" if cfg.task == "classify" else "tokens"  # pretraining: loss against tokens seen


def scored_checkpoint(run_dir: Path) -> Path:
    """best/ (lowest validation loss), else last/: the checkpoint a run is scored with."""
    if (ckpt := rd.pick_checkpoint(run_dir)) is not None:
        return ckpt
    raise ConfigError(f"{run_dir} has no checkpoint (best/ or last/) to evaluate; train or --resume it first")


def test_and_report(
    cfg: TrainConfig, run_dir: Path, model: nn.Module, splits: Splits, tokenizer, w: World | None = None
) -> dict:
    """Score the best checkpoint on the test split (sharded over the ranks): one JSON line on stdout
    and a metrics.jsonl record, from rank 0."""
    w = w or world()
    best = scored_checkpoint(run_dir)
    rd.restore_weights(model, best)
    encoded, labels = encode_split(cfg, splits, "test", tokenizer)
    result = evaluate(
        Evaluator(model, cfg.task, compile=cfg.compile), encoded, labels,
        batch_size=cfg.eval_batch_size or 4 * cfg.batch_size, pad_id=pad_id_for(tokenizer),
        padding_side=cfg.padding_side, masking=masking_for(cfg, tokenizer), seed=cfg.seed, world=w,
    )  # fmt: skip
    if not math.isfinite(result["loss"]):
        raise TrainingError(f"the test loss of {best} is {result['loss']}: its weights are not usable")
    state = rd.checkpoint_state(best)
    record = {"split": "test", "checkpoint": best.name, "step": state.step, "tokens": state.tokens}
    record |= result | {"peak_gb": mx.get_peak_memory() / 1e9}
    if w.main:
        append_metrics(run_dir, record)
        plot_curves(run_dir, title=f"{run_dir.name} ({splits.source})", x=curve_axis(cfg))
        print(json.dumps(record, sort_keys=True, allow_nan=False))
    return record


def evaluate_run(cfg: TrainConfig) -> dict:
    """``train.py --eval-only RUN``: reload the best checkpoint and score the test split."""
    run_dir = Path(cfg.out)
    head = read_config(scored_checkpoint(run_dir)).get("num_labels", 2)
    splits = load_data(dataclasses.replace(cfg, eval_only=None))
    if cfg.task == "classify" and splits.num_labels > head:
        raise DataError(
            f"the data has {splits.num_labels} labels but the classifier of {run_dir} has {head}; "
            "evaluate it on data with the labels it was trained on"
        )
    model, tokenizer, _ = build(cfg, head)
    main = world().main
    with rd.one_writer(run_dir, main), reporting(cfg, run_dir, main=main):  # from here it writes
        return test_and_report(cfg, run_dir, model, splits, tokenizer)
