"""The MLX training loop: full finetuning or LoRA/QLoRA for classify, mlm and lm.

    run(cfg) = set-up -> start or resume -> loop (step, evaluate, checkpoint) -> test report

The step is `step.TrainStep` (compiled, accumulation, clipping); batches come from
`tasks.make_batch`; checkpoints live in `run_dir`; evaluation is `evaluation.evaluate`.
"""

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from tqdm import tqdm

from . import run_dir as rd
from .adapters import import_adapter, load_into
from .batching import batch_order, encode, pad_id_for
from .config import TrainConfig
from .data import Splits, load_splits
from .errors import ConfigError, MLXModelsError
from .evaluation import evaluate
from .loading import load_model, load_tokenizer, read_config, resolve
from .lora import apply_lora
from .metrics import append_metrics, plot_curves, truncate_metrics
from .step import TrainStep, make_optimizer
from .tasks import LOSSES, make_batch

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
Fault = Callable[[int, int], None]  # fault(step, micro_batch): tests raise out-of-memory from it


class OutOfMemory(MLXModelsError):
    pass


def is_oom(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "allocat" in text


def build(cfg: TrainConfig, num_labels: int) -> tuple[nn.Module, Any, Path]:
    """(model, tokenizer, model directory) ready for training as ``cfg`` says."""
    directory = resolve(cfg.model, quantize_bits=cfg.quantize)
    overrides = {"num_labels": num_labels} if cfg.task == "classify" else {}
    if cfg.dropout is not None:
        overrides.update(dict.fromkeys(DROPOUT_KEYS, cfg.dropout))
    mx.random.seed(cfg.seed)
    model = load_model(directory, cfg.task, config_overrides=overrides)
    tokenizer = load_tokenizer(directory)
    if cfg.task == "mlm" and tokenizer.mask_token_id is None:
        raise ConfigError(f"{cfg.model} has no mask token, so it cannot train masked-LM; use --task lm")
    if cfg.lora:
        dropout = cfg.lora_dropout if cfg.dropout is None else cfg.dropout
        apply_lora(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, dropout)
    elif "quantization" in read_config(directory):
        raise ConfigError(f"{directory} is quantized: train it with --lora (QLoRA)")
    if cfg.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(model.layers[0])
    return model, tokenizer, directory


@dataclass
class Run:
    """Everything a training run holds while it trains."""

    cfg: TrainConfig
    dir: Path
    splits: Splits
    model: nn.Module
    tokenizer: Any
    base: Path
    data: dict[str, tuple[list[list[int]], list[int] | None]]  # train, validation, probe
    optimizer: optim.Optimizer
    total_steps: int
    eval_every: int
    step: TrainStep | None = None  # built once the optimizer state is final (after a resume)

    @property
    def group(self) -> int:  # examples per optimizer step
        return self.cfg.batch_size * self.cfg.grad_accum

    def evaluate(self, name: str) -> dict:
        encoded, labels = self.data[name]
        return evaluate(
            self.model,
            self.cfg.task,
            encoded,
            labels,
            batch_size=self.cfg.batch_size,
            pad_id=pad_id_for(self.tokenizer),
            padding_side=self.cfg.padding_side,
            tokenizer=self.tokenizer,
            seed=self.cfg.seed,
        )

    def save(self, name: str, state: rd.TrainState) -> None:
        rd.save_checkpoint(
            self.dir / name, self.model, self.optimizer, state, self.cfg, self.tokenizer, self.base
        )


def setup(cfg: TrainConfig) -> Run:
    splits = load_splits(cfg)  # bad data fails here, before anything is written
    adapter = None
    if cfg.adapter and not cfg.resume:  # its LoRA settings become the run's (and are saved)
        cfg, adapter = import_adapter(cfg, splits.num_labels)
    model, tokenizer, base = build(cfg, splits.num_labels)
    if adapter is not None:
        load_into(model, adapter)
    data = {}
    for name in ("train", "validation"):
        split = getattr(splits, name)
        data[name] = (encode(tokenizer, split.texts, cfg.max_length), split.labels)
    # A fixed train subset as large as validation, scored like it: train vs validation curves.
    encoded, labels = data["train"]
    probe = np.random.default_rng(cfg.seed).permutation(len(encoded))[: len(data["validation"][0])]
    data["probe"] = ([encoded[i] for i in probe], None if labels is None else [labels[i] for i in probe])
    steps_per_epoch = -(-len(encoded) // (cfg.batch_size * cfg.grad_accum))
    total_steps = steps_per_epoch * cfg.epochs if cfg.max_steps is None else cfg.max_steps
    optimizer = make_optimizer(cfg, total_steps)
    optimizer.init(model.trainable_parameters())
    eval_every = cfg.eval_every or steps_per_epoch
    return Run(cfg, Path(cfg.out), splits, model, tokenizer, base, data, optimizer, total_steps, eval_every)


def start_or_resume(run: Run) -> rd.TrainState:
    if not run.cfg.resume:
        rd.create(run.dir, run.cfg)
        return rd.TrainState(micro_batch=run.cfg.batch_size, grad_accum=run.cfg.grad_accum)
    rd.recover(run.dir)
    state = rd.restore_checkpoint(run.dir / "last", run.model, run.optimizer)
    truncate_metrics(run.dir, state.step)
    return state


def run(cfg: TrainConfig, fault: Fault | None = None) -> dict:
    """Train as ``cfg`` says, score the best checkpoint on the test split; returns the test record.
    ``fault(step, micro_batch)`` is called before every optimizer step (tests inject failures)."""
    if cfg.eval_only:
        return evaluate_run(cfg)
    run = setup(cfg)
    state = start_or_resume(run)
    clip, loss_fn = cfg.max_grad_norm, LOSSES[cfg.task]
    run.step = TrainStep(run.model, run.optimizer, loss_fn, max_grad_norm=clip, compile=cfg.compile)
    if cfg.memory_limit:
        mx.set_memory_limit(int(cfg.memory_limit * 1024**3))
    kind = ("LoRA" if cfg.lora else "full") + (", 4-bit base" if cfg.quantize else "")
    print(
        f"training {cfg.model} ({kind}) on {len(run.data['train'][0])} examples from "
        f"{run.splits.source}: {run.total_steps} steps -> {run.dir}",
        file=sys.stderr,
    )
    if run.total_steps == 0:  # --max-steps 0: score the starting weights (an imported --adapter)
        run.save("last", state)
    else:
        train_loop(run, state, fault)
    return test_and_report(cfg, run.dir, run.model, run.splits, run.tokenizer)


def train_loop(run: Run, state: rd.TrainState, fault: Fault | None) -> None:
    run.model.train()
    mx.reset_peak_memory()
    bar = tqdm(total=run.total_steps, initial=state.step, desc="train", unit="step", file=sys.stderr)
    running, tokens, tic = [], 0, time.perf_counter()
    try:
        for idx, b, n_batches in positions(run, state):
            loss, n = optimizer_step(run, state, idx, b, fault)
            state.step, state.batch = state.step + 1, b + 1
            running.append(loss)
            tokens += n
            bar.update(1)
            memory = f"{mx.get_active_memory() / 1e9:.2f}/{mx.get_peak_memory() / 1e9:.2f}"
            bar.set_postfix(
                loss=f"{loss:.4f}", tok_s=f"{tokens / (time.perf_counter() - tic):.0f}", mem_gb=memory
            )
            done, stop = state.step >= run.total_steps, False
            if state.step % run.eval_every == 0 or done:
                stop = evaluate_and_keep_best(run, state, state.epoch + state.batch / n_batches, running)
                running = []
            save_periodic(run, state, final=done or stop)
            if done or stop:
                break
    finally:
        bar.close()


def positions(run: Run, state: rd.TrainState) -> Iterator[tuple[list[int], int, int]]:
    """(batch indices, batch number, batches per epoch) from the saved data position on."""
    lengths = [len(s) for s in run.data["train"][0]]
    while state.step < run.total_steps:
        order = batch_order(lengths, run.group, run.cfg.seed, state.epoch)
        for b in range(state.batch, len(order)):
            yield order[b], b, len(order)
        state.epoch, state.batch = state.epoch + 1, 0


def micro_batches(run: Run, state: rd.TrainState, idx: list[int], b: int) -> list[dict]:
    cfg, (encoded, labels) = run.cfg, run.data["train"]
    rng = np.random.default_rng((cfg.seed, state.epoch, b))  # masks depend on the position: resume-safe
    out = []
    for i in range(0, len(idx), state.micro_batch):
        part = idx[i : i + state.micro_batch]
        out.append(
            make_batch(
                cfg.task,
                [encoded[j] for j in part],
                None if labels is None else [labels[j] for j in part],
                pad_id=pad_id_for(run.tokenizer),
                padding_side=cfg.padding_side,
                tokenizer=run.tokenizer,
                rng=rng,
            )
        )
    return out


def optimizer_step(run: Run, state: rd.TrainState, idx: list[int], b: int, fault: Fault | None):
    """One optimizer step over ``idx``; on out-of-memory halve the micro-batch and retry."""
    while True:
        try:
            if fault:
                fault(state.step, state.micro_batch)
            return run.step(micro_batches(run, state, idx, b))
        except Exception as e:
            if not is_oom(e):
                raise
            if state.micro_batch == 1:
                raise OutOfMemory(
                    "out of memory at micro-batch 1; lower --max-length, add --grad-checkpoint, "
                    "use --lora (with --quantize 4) or raise --memory-limit"
                ) from e
            state.micro_batch //= 2
            state.grad_accum = -(-run.group // state.micro_batch)
            print(
                f"out of memory at step {state.step + 1}: micro-batch -> {state.micro_batch}, "
                f"accumulation -> {state.grad_accum} (same effective batch {run.group}); retrying",
                file=sys.stderr,
            )
            mx.clear_cache()


def evaluate_and_keep_best(run: Run, state: rd.TrainState, epoch: float, running: list[float]) -> bool:
    """Evaluate, record, keep best/; returns True when early stopping says stop."""
    val, tr = run.evaluate("validation"), run.evaluate("probe")
    mem = {"active_gb": mx.get_active_memory() / 1e9, "peak_gb": mx.get_peak_memory() / 1e9}
    common = {"step": state.step, "epoch": round(epoch, 4)}
    append_metrics(
        run.dir, {"split": "train", **common, **tr, "running_loss": float(np.mean(running)), **mem}
    )
    append_metrics(run.dir, {"split": "validation", **common, **val})
    plot_curves(run.dir, title=f"{run.dir.name} ({run.splits.source})")
    tqdm.write(
        f"step {state.step}: train loss {tr['loss']:.4f}, validation loss {val['loss']:.4f}"
        + (f", accuracy {val['accuracy']:.4f}" if "accuracy" in val else ""),
        file=sys.stderr,
    )
    if state.best_loss is None or val["loss"] < state.best_loss:
        state.best_loss, state.bad_evals = val["loss"], 0
        run.save("best", state)
        return False
    state.bad_evals += 1
    patience = run.cfg.early_stopping_patience
    return patience is not None and state.bad_evals >= patience


def save_periodic(run: Run, state: rd.TrainState, final: bool) -> None:
    periodic = bool(run.cfg.save_every) and state.step % run.cfg.save_every == 0
    if periodic:
        run.save(f"iter-{state.step}", state)
    if periodic or final:
        run.save("last", state)


def test_and_report(cfg: TrainConfig, run_dir: Path, model: nn.Module, splits: Splits, tokenizer) -> dict:
    """Score the best checkpoint on the test split: one JSON line, and a metrics.jsonl record."""
    best = run_dir / ("best" if (run_dir / "best").exists() else "last")
    rd.restore_weights(model, best)
    result = evaluate(
        model,
        cfg.task,
        encode(tokenizer, splits.test.texts, cfg.max_length),
        splits.test.labels,
        batch_size=cfg.batch_size,
        pad_id=pad_id_for(tokenizer),
        padding_side=cfg.padding_side,
        tokenizer=tokenizer,
        seed=cfg.seed,
    )
    record = {"split": "test", "checkpoint": best.name, "step": rd.checkpoint_step(best)}
    record |= result | {"peak_gb": mx.get_peak_memory() / 1e9}
    append_metrics(run_dir, record)
    plot_curves(run_dir, title=f"{run_dir.name} ({splits.source})")
    print(json.dumps(record, sort_keys=True))
    return record


def evaluate_run(cfg: TrainConfig) -> dict:
    """``train.py --eval-only RUN``: reload the best checkpoint and score the test split."""
    splits = load_splits(dataclasses.replace(cfg, eval_only=None))
    model, tokenizer, _ = build(cfg, splits.num_labels)
    return test_and_report(cfg, Path(cfg.out), model, splits, tokenizer)
