"""A training run's directory on disk: checkpoints, their config.json, recovery after a crash.

results/models/<run>/
  config.json               the resolved training config
  metrics.jsonl, curves.png (metrics.py)
  iter-<step>/ best/ last/  checkpoints, each written atomically (temp dir, then rename):
    model.safetensors or adapters.safetensors (LoRA: adapters + head), optimizer.safetensors,
    rng.safetensors, trainer_state.json, train_config.json, config.json, tokenizer files
"""

import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import ConfigError, WeightsError
from ..interop import weights
from ..io import Lock, atomic_dir, atomic_write_json, is_locked, read_json, save_safetensors, take_lock
from ..models import architecture
from .config import TrainConfig, save_train_config

CONFIG = "config.json"
STATE = "trainer_state.json"
TFIDF_MODEL = "model.joblib"  # the TF-IDF baseline's checkpoint: its fitted scikit-learn pipeline


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
    tokens: int = 0  # real (not padding) tokens trained on
    ranks: int = 1  # data-parallel processes: a resume needs as many


BUSY = (
    "{run_dir} is being written by process {{pid}} (a training run, --resume or --eval-only); wait "
    "for it to end, or stop it"
)


def lock(run_dir: Path) -> Lock:
    """Make this process the run's one writer (training, --resume, --eval-only); rank 0 alone
    calls it. ``release()`` it when done; a killed writer's lock is free."""
    return take_lock(run_dir, BUSY.format(run_dir=run_dir))


def check_unlocked(run_dir: Path) -> None:
    """Refuse at once, before any work, a run that another live process is writing."""
    if (pid := is_locked(run_dir)) is not None:
        raise ConfigError(BUSY.format(run_dir=run_dir).format(pid=pid))


@contextlib.contextmanager
def one_writer(run_dir: Path, main: bool = True) -> Iterator[None]:
    """``lock`` held while the block writes the run (rank 0's; other ranks do not write)."""
    held = lock(run_dir) if main else None
    try:
        yield
    finally:
        if held is not None:
            held.release()


def create(run_dir: Path, cfg: TrainConfig) -> None:
    run_dir.mkdir(parents=True)
    save_train_config(cfg, run_dir / CONFIG)


def is_checkpoint(path: Path) -> bool:
    """A complete checkpoint: a trained model's (its trainer state written last) or a TF-IDF fit."""
    return any((path / f).is_file() for f in (STATE, TFIDF_MODEL))


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run (best/, last/, iter-N/), oldest step first."""
    found = [p for p in run_dir.iterdir() if not p.name.startswith(".") and is_checkpoint(p)]
    return sorted(found, key=lambda p: (checkpoint_step(p), p.name != "last"))


def pick_checkpoint(run_dir: Path, name: str | None = None) -> Path | None:
    """The checkpoint of a run that a command means: ``name`` (best, last or iter-N) when given,
    else best/ (the lowest validation loss), else last/; None when the run has no such complete
    checkpoint. The one place that decides it: --eval-only, locate/load_trained (export, the
    study), fuse. explain names its checkpoints (best by default, iter-N, all)."""
    for candidate in [name] if name else ["best", "last"]:
        if is_checkpoint(run_dir / candidate):
            return run_dir / candidate
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to continue from: the furthest one (last/ on a tie). Clear what a kill left
    half done first (`clear_stale`)."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


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
        save_safetensors(tmp / name, trained_weights(model, cfg.lora), metadata={"format": "mlx"})
        save_safetensors(tmp / "optimizer.safetensors", dict(tree_flatten(optimizer.state)))
        save_safetensors(tmp / "rng.safetensors", {"key": mx.random.state[0]})
        atomic_write_json(tmp / STATE, dataclasses.asdict(state))
        save_train_config(cfg, tmp / "train_config.json")
        settings = {
            "rank": cfg.lora_rank,
            "alpha": cfg.lora_alpha,
            "targets": cfg.lora_targets,
            "dora": cfg.dora,
        }
        lora = {"lora": settings}
        config = model_config(base, model, cfg.task, base_model=str(base), **(lora if cfg.lora else {}))
        atomic_write_json(tmp / CONFIG, config)
        tokenizer.save_pretrained(str(tmp))


def restore_weights(model: nn.Module, path: Path) -> None:
    """Load a checkpoint's weights (all of them, or adapters + head) into ``model``; every tensor
    in the file must be one of the model's, with the same shape, and the task head must be there
    (the model was built with a new one: nothing else would say it is missing)."""
    name = "adapters.safetensors" if (path / "adapters.safetensors").exists() else "model.safetensors"
    try:
        tensors = mx.load(str(path / name))
    except Exception as e:  # MLX raises RuntimeError/ValueError for missing or truncated files
        raise WeightsError(f"{path / name} is missing or unreadable ({e}); use another checkpoint") from e
    expected = weights.parameter_shapes(model)
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if unknown := sorted(set(found) - set(expected)):
        raise WeightsError(f"{path / name} holds weights the model does not have: {', '.join(unknown[:5])}")
    heads = tuple(f"{h}." for h in getattr(model, "head_modules", ()))
    head = {k: s for k, s in expected.items() if k.startswith(heads)}
    weights.check_weights(found, head, expected, where=str(path / name))
    model.load_weights(list(tensors.items()), strict=False)


def restore_checkpoint(
    path: Path, model: nn.Module, optimizer: optim.Optimizer, ranks: int = 1
) -> TrainState:
    """Weights, optimizer state, random state and trainer state of the checkpoint at ``path``."""
    saved = checkpoint_state(path)
    if saved.ranks != ranks:  # the global batches (and dropout streams) would differ: not exact
        raise ConfigError(
            f"{path} was trained on {saved.ranks} rank(s); resume it with {saved.ranks} "
            f"(train.py --ranks {saved.ranks}), not {ranks}"
        )
    restore_weights(model, path)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    # mx.random.state is read-only in MLX >= 0.31; key(s) is [s >> 32, s & 0xFFFFFFFF].
    hi, lo = (int(x) for x in np.array(mx.load(str(path / "rng.safetensors"))["key"]))
    mx.random.seed((hi << 32) | lo)
    state = checkpoint_state(path)
    print(f"resuming {path.parent} at step {state.step} ({path.name}/)", file=sys.stderr)
    return state


def checkpoint_state(path: Path) -> TrainState:
    return TrainState(**read_json(path / STATE, WeightsError, "use another checkpoint"))


def checkpoint_step(path: Path) -> int:
    """The optimizer steps behind a checkpoint; a TF-IDF fit is one step."""
    return checkpoint_state(path).step if (path / STATE).is_file() else 1
