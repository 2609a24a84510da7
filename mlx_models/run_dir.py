"""A training run's directory on disk: checkpoints, their config.json, recovery after a crash.

results/models/<run>/
  config.json               the resolved training config
  metrics.jsonl, curves.png (metrics.py)
  iter-<step>/ best/ last/  checkpoints, each written atomically (temp dir, then rename):
    model.safetensors or adapters.safetensors (LoRA: adapters + head), optimizer.safetensors,
    rng.safetensors, trainer_state.json, train_config.json, config.json, tokenizer files
"""

import dataclasses
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from .config import TrainConfig, save_train_config
from .errors import ConfigError
from .io import atomic_dir, atomic_write_json
from .models import architecture

CONFIG = "config.json"
STATE = "trainer_state.json"


@dataclass
class TrainState:
    """Where a run is: enough to continue it exactly."""

    micro_batch: int
    grad_accum: int
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # next batch of the epoch's order
    best_loss: float | None = None
    bad_evals: int = 0  # evaluations since the best one


def create(run_dir: Path, cfg: TrainConfig) -> None:
    run_dir.mkdir(parents=True)
    save_train_config(cfg, run_dir / CONFIG)


def recover(run_dir: Path) -> None:
    """Undo what a kill left: a checkpoint swap cut between its two renames (the old copy put
    aside, the new one not yet in place) is rolled back; stale temp directories are removed."""
    for aside in sorted(run_dir.glob(".*.old-*")):
        final = run_dir / aside.name[1:].rsplit(".old-", 1)[0]
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, final)
    for tmp in run_dir.glob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def model_config(base: Path, model: nn.Module, task: str, **extra) -> dict:
    """The config.json of a trained model (a checkpoint or a fused one): the base model's, with
    this head's architecture and label count."""
    config = json.loads((base / CONFIG).read_text())
    config = {k: v for k, v in config.items() if k not in ("id2label", "label2id")}
    config["num_labels"] = getattr(model.args, "num_labels", 2)
    config["architectures"] = [architecture(config["model_type"], task)]
    return config | extra


def trained_weights(model: nn.Module, lora: bool) -> dict[str, mx.array]:
    """What a checkpoint holds: adapters + head for LoRA, every weight otherwise."""
    return dict(tree_flatten(model.trainable_parameters() if lora else model.parameters()))


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: optim.Optimizer,
    state: TrainState,
    cfg: TrainConfig,
    tokenizer,
    base: Path,
) -> None:
    with atomic_dir(path, force=True) as tmp:
        name = "adapters.safetensors" if cfg.lora else "model.safetensors"
        mx.save_safetensors(str(tmp / name), trained_weights(model, cfg.lora), metadata={"format": "mlx"})
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        mx.save_safetensors(str(tmp / "rng.safetensors"), {"key": mx.random.state[0]})
        atomic_write_json(tmp / STATE, dataclasses.asdict(state))
        save_train_config(cfg, tmp / "train_config.json")
        lora = {"lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets}}
        config = model_config(base, model, cfg.task, base_model=str(base), **(lora if cfg.lora else {}))
        atomic_write_json(tmp / CONFIG, config)
        tokenizer.save_pretrained(str(tmp))


def restore_weights(model: nn.Module, path: Path) -> None:
    name = "adapters.safetensors" if (path / "adapters.safetensors").exists() else "model.safetensors"
    model.load_weights(list(mx.load(str(path / name)).items()), strict=False)


def restore_checkpoint(path: Path, model: nn.Module, optimizer: optim.Optimizer) -> TrainState:
    """Weights, optimizer state, random state and trainer state of the checkpoint at ``path``."""
    if not (path / STATE).exists():
        raise ConfigError(f"{path} has no checkpoint to resume from; start a new run instead")
    restore_weights(model, path)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    # mx.random.state is read-only in MLX >= 0.31; key(s) is [s >> 32, s & 0xFFFFFFFF].
    hi, lo = (int(x) for x in np.array(mx.load(str(path / "rng.safetensors"))["key"]))
    mx.random.seed((hi << 32) | lo)
    state = TrainState(**json.loads((path / STATE).read_text()))
    print(f"resuming {path.parent} at step {state.step}", file=sys.stderr)
    return state


def checkpoint_step(path: Path) -> int:
    return json.loads((path / STATE).read_text())["step"]
