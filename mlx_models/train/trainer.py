"""The MLX training loop: full finetuning or LoRA/DoRA (on a 4-bit base too) for classify, mlm and lm.

    run(cfg) = set-up -> start or resume -> loop (step, evaluate, checkpoint) -> test report

The step is `step.TrainStep` (compiled, accumulation, clipping); batches come from
`tasks.make_batch`; checkpoints live in `run_dir`; evaluation is `evaluation.evaluate`.
"""

import contextlib
import dataclasses
import hashlib
import math
import shutil
import signal
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

from ..batching import batch_order, pad_id_for
from ..cli import deferred_signals, stop_for
from ..errors import MLXModelsError
from ..interop.adapters import load_into
from ..io import Lock, clear_stale
from . import run_dir as rd
from . import scratch
from .build import accumulation, build, examples, import_adapter, load_data, total_steps
from .config import TrainConfig
from .data import Splits
from .distributed import World, world
from .evaluation import Evaluator, evaluate
from .final_eval import TrainingError, curve_axis, evaluate_run, masking_for, test_and_report
from .metrics import append_metrics, plot_curves, truncate_metrics
from .reporting import reporting
from .step import TrainStep, make_optimizer
from .tasks import LOSSES, Masking, make_batch

# Options that ranks may set each for itself; `out` too: under a plain mlx.launch each rank stamps
# its default run directory with its own clock, and only rank 0 writes (a resume compares `resume`).
PER_RANK = ("memory_limit", "dist_timeout", "out")
Fault = Callable[[int, int], None]  # fault(step, micro_batch): tests raise out-of-memory from it


class OutOfMemory(MLXModelsError):
    pass


def is_oom(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "allocat" in text


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
    save_every: int | None
    save_at: frozenset[int]  # --save-points: the steps of iter-<step>/, each evaluated
    masking: Masking | None
    accum: int  # micro-batches per optimizer step, on each rank
    world: World
    step: TrainStep | None = None  # built once the optimizer state is final (after a resume)
    scorer: Evaluator | None = None
    saved_at: float = dataclasses.field(default_factory=time.monotonic)  # when last/ was written
    lock: Lock | None = None  # rank 0's: it alone writes the run directory (run_dir.lock)

    @property
    def group(self) -> int:  # examples per optimizer step: the global batch, over every rank
        return self.cfg.batch_size * self.accum * self.world.size

    def evaluate(self, name: str) -> dict:
        encoded, labels = self.data[name]
        return evaluate(
            self.scorer,
            encoded,
            labels,
            batch_size=self.cfg.eval_batch_size or 4 * self.cfg.batch_size,
            pad_id=pad_id_for(self.tokenizer),
            padding_side=self.cfg.padding_side,
            masking=self.masking,
            seed=self.cfg.seed,
            world=self.world,
        )

    def save(self, name: str, state: rd.TrainState) -> None:
        """Write a checkpoint (rank 0 alone writes)."""
        if not self.world.main:
            return
        if name == "last":
            self.saved_at = time.monotonic()
        rd.save_checkpoint(
            self.dir / name, self.model, self.optimizer, state, self.cfg, self.tokenizer, self.base
        )


def setup(cfg: TrainConfig) -> Run:
    """Data, model, examples and optimizer; bad input fails here, before anything is written."""
    w = world()
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in PER_RANK}
    w.check_same(options, "training options")
    accum = accumulation(cfg, w.size)
    splits = load_data(cfg)
    w.check_same({n: data_digest(getattr(splits, n)) for n in ("train", "validation", "test")}, "data")
    adapter = None
    if cfg.adapter and not cfg.resume:  # its LoRA settings become the run's (and are saved)
        cfg, adapter = import_adapter(cfg, splits.num_labels)
    model, tokenizer, base = build(cfg, splits.num_labels, splits.train.texts)
    if adapter is not None:
        load_into(model, adapter)
    data = examples(cfg, splits, tokenizer)
    steps, per_epoch = total_steps(cfg, len(data["train"][0]), cfg.batch_size * accum * w.size)
    optimizer = make_optimizer(cfg, steps)
    optimizer.init(model.trainable_parameters())
    eval_every = cfg.eval_every or (steps if cfg.save_points else per_epoch)  # save points are evaluated
    return Run(
        cfg, Path(cfg.out), splits, model, tokenizer, base, data, optimizer, steps, eval_every,
        cfg.save_every, save_steps(cfg.save_points, steps), masking_for(cfg, tokenizer), accum, w,
    )  # fmt: skip


def save_steps(points: int | None, steps: int) -> frozenset[int]:
    """--save-points N: the steps of N checkpoints spread evenly over the run, the last at its end."""
    return frozenset(round(i * steps / points) for i in range(1, points + 1)) - {0} if points else frozenset()


def data_digest(split) -> str:
    """What the ranks compare of a split: its size and a hash of its texts and labels."""
    h = hashlib.sha1(repr(split.labels).encode())
    for text in split.texts:
        h.update(text.encode())
    return f"{len(split.texts)} examples, {h.hexdigest()[:12]}"


def resume_advice(run_dir: Path) -> str:
    """After a lost rank (rank 0's word): what the run kept, and how to go on."""
    if run_dir.is_dir() and rd.checkpoints(run_dir):
        return f"the checkpoints written so far are kept: continue with --resume {run_dir}"
    return "no checkpoint was written: run the same command again"


def start_or_resume(run: Run) -> rd.TrainState:
    """A new run directory (rank 0 writes it, once every rank has checked its arguments), or the
    state of the furthest checkpoint of the run to resume (a run killed before its first
    checkpoint starts again from step 0)."""
    cfg, w = run.cfg, run.world
    fresh = rd.TrainState(micro_batch=cfg.batch_size, grad_accum=run.accum, ranks=w.size)
    if not cfg.resume:
        w.barrier("the start of the run")
        if w.main:
            rd.create(run.dir, cfg)
            run.lock = rd.lock(run.dir)
            if cfg.from_scratch:
                scratch.save(run.base, scratch.config_for(cfg, run.tokenizer), run.tokenizer)
        return fresh
    if w.main:
        run.lock = rd.lock(run.dir)  # before anything is cleared: another process may be writing
        clear_stale(run.dir)  # what a kill left half done
    w.barrier("rank 0's recovery of the run directory")
    ckpt = rd.latest_checkpoint(run.dir)
    if ckpt is None:
        if w.main:
            print(f"notice: {run.dir} has no checkpoint yet: starting it again from step 0", file=sys.stderr)
        state = fresh
    else:
        state = rd.restore_checkpoint(ckpt, run.model, run.optimizer, ranks=w.size)
        last = run.dir / "last"
        if not rd.is_checkpoint(last) or rd.checkpoint_step(last) < state.step:
            run.save("last", state)  # killed between ckpt and last/: last/ catches up first
    if w.main:
        truncate_metrics(run.dir, state.step)
    return state


def run(cfg: TrainConfig, fault: Fault | None = None) -> dict:
    """Train as ``cfg`` says, score the best checkpoint on the test split; returns the test record.
    ``fault(step, micro_batch)`` is called before every optimizer step (tests inject failures)."""
    world().timeout = cfg.dist_timeout
    if cfg.eval_only or cfg.resume:
        rd.check_unlocked(Path(cfg.out))  # before minutes of set-up; taken for real at the start
    if cfg.eval_only:
        return evaluate_run(cfg)
    run = setup(cfg)
    if run.world.main:
        run.world.advice = lambda: resume_advice(run.dir)
    try:
        return train_and_test(run, fault)
    finally:
        if run.lock is not None:
            run.lock.release()


def train_and_test(run: Run, fault: Fault | None) -> dict:
    cfg = run.cfg
    state = start_or_resume(run)
    clip, loss_fn = cfg.max_grad_norm, LOSSES[cfg.task]
    run.step = TrainStep(
        run.model, run.optimizer, loss_fn, max_grad_norm=clip, compile=cfg.compile, world=run.world
    )
    run.scorer = Evaluator(run.model, cfg.task, compile=cfg.compile)
    if cfg.memory_limit:
        mx.set_memory_limit(int(cfg.memory_limit * 1024**3))
    redo = state.step + 1 if cfg.resume else None  # TensorBoard drops what a resumed run redoes
    try:
        with reporting(cfg, run.dir, main=run.world.main, purge_from=redo):
            announce(run)
            if run.total_steps == 0:  # --max-steps 0: score the starting weights (an imported --adapter)
                run.save("last", state)
                run.world.barrier("the starting checkpoint")
            else:
                train_loop(run, state, fault)
            return test_and_report(cfg, run.dir, run.model, run.splits, run.tokenizer, run.world)
    except BaseException:
        new = not cfg.resume and run.world.main
        if new and not [c for c in rd.checkpoints(run.dir) if rd.checkpoint_step(c) > 0]:  # nothing trained
            shutil.rmtree(run.dir, ignore_errors=True)  # leave no trace (iter-0 holds only the start)
        raise


def announce(run: Run) -> None:
    """The run's first line on stderr (rank 0's): what trains on what, and where it goes."""
    cfg = run.cfg
    kind = {"full": "full", "lora": "LoRA", "dora": "DoRA"}[cfg.method]
    kind += f", {cfg.quantize}-bit base" if cfg.quantize else ""
    ranks = f", {run.world.size} ranks x {cfg.batch_size} x {run.accum}" if run.world.size > 1 else ""
    if run.world.main:
        print(
            f"training {cfg.model} ({kind}{ranks}) on {len(run.data['train'][0])} examples from "
            f"{run.splits.source}: {run.total_steps} steps -> {run.dir}",
            file=sys.stderr,
        )


def train_loop(run: Run, state: rd.TrainState, fault: Fault | None) -> None:
    """Steps until done or early-stopped; SIGINT/SIGTERM save last/ and stop at the next step."""
    run.model.train()
    mx.reset_peak_memory()
    bar = tqdm(
        total=run.total_steps, initial=state.step, desc="train", unit="step", file=sys.stderr,
        disable=not run.world.main,
    )  # fmt: skip
    running, tokens, tic = [], 0, time.perf_counter()
    if run.cfg.save_points and state.step == 0 and not rd.is_checkpoint(run.dir / "iter-0"):
        run.save("iter-0", state)  # the starting point of the spaced checkpoints
    with deferred_signals() as signals, contextlib.closing(bar):
        for idx, b, n_batches in positions(run, state):
            loss, n = optimizer_step(run, state, idx, b, fault)
            if loss is not None:  # None: nothing to predict in this step (no update)
                check_finite(run, state, "training loss", loss)
                running.append(loss)
            state.step, state.batch, state.tokens = state.step + 1, b + 1, state.tokens + n
            tokens += n
            speed = tokens / (time.perf_counter() - tic)  # this session's, evaluations included
            memory = f"{mx.get_active_memory() / 1e9:.2f}/{mx.get_peak_memory() / 1e9:.2f}"
            bar.update(1)
            bar.set_postfix(loss="-" if loss is None else f"{loss:.4f}", tok_s=f"{speed:.0f}", mem_gb=memory)
            done, stop = state.step >= run.total_steps, False
            if state.step % run.eval_every == 0 or done or state.step in run.save_at:
                epoch = state.epoch + state.batch / n_batches
                stop = evaluate_and_keep_best(run, state, epoch, running, speed)
                running = []
            halt = run.world.any(bool(signals), "a stop request (SIGINT/SIGTERM)")
            save_periodic(run, state, final=done or stop or halt)
            if halt:
                if run.world.main:
                    print(f"\nstopped at step {state.step}: saved {run.dir / 'last'}; "
                          f"continue with --resume {run.dir}", file=sys.stderr)  # fmt: skip
                raise stop_for(signals[0] if signals else signal.SIGTERM)
            if done or stop:
                break


def check_finite(run: Run, state: rd.TrainState, what: str, value: float) -> None:
    """A non-finite loss ends the run; the checkpoints written so far are kept as they are."""
    if math.isfinite(value):
        return
    kept = rd.checkpoints(run.dir)
    where = "no checkpoint was written"
    if kept:
        where = f"the last good checkpoint is {kept[-1]} (step {rd.checkpoint_step(kept[-1])})"
    raise TrainingError(
        f"the {what} became {value} at step {state.step + 1}: training diverged; {where}; start a new "
        f"run with a lower --learning-rate (now {run.cfg.learning_rate:g}) or --max-grad-norm"
    )


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
    idx = run.world.part(idx)  # this rank's share of the global batch
    rng = np.random.default_rng((cfg.seed, state.epoch, b, run.world.rank))  # by position: resume-safe
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
                masking=run.masking,
                rng=rng,
                limit=run.model.args.max_positions,
            )
        )
    return out


def optimizer_step(run: Run, state: rd.TrainState, idx: list[int], b: int, fault: Fault | None):
    """One optimizer step over ``idx``; when any rank runs out of memory, every rank halves its
    micro-batch (same global batch) and retries, together."""
    while True:
        pending, oom = None, None
        try:
            if fault:
                fault(state.step, state.micro_batch)
            pending = run.step.accumulate(micro_batches(run, state, idx, b))
        except Exception as e:
            if not is_oom(e):
                raise
            oom = e
        if not run.world.any(oom is not None, "the out-of-memory check"):
            return run.step.apply(pending)
        back_off(run, state, oom)


def back_off(run: Run, state: rd.TrainState, error: Exception | None) -> None:
    if state.micro_batch == 1:
        raise OutOfMemory(
            "out of memory at micro-batch 1; lower --max-length, add --grad-checkpoint, "
            "use --lora (with --quantize 4) or raise --memory-limit"
        ) from error
    state.micro_batch //= 2
    state.grad_accum = -(-run.cfg.batch_size * run.accum // state.micro_batch)
    print(
        f"out of memory at step {state.step + 1}: micro-batch -> {state.micro_batch}, "
        f"accumulation -> {state.grad_accum} (same effective batch {run.group}); retrying",
        file=sys.stderr,
    )
    mx.clear_cache()


def evaluate_and_keep_best(
    run: Run, state: rd.TrainState, epoch: float, running: list[float], tokens_per_s: float
) -> bool:
    """Evaluate, record, keep best/; returns True when early stopping says stop."""
    val, tr = run.evaluate("validation"), run.evaluate("probe")
    check_finite(run, state, "validation loss", val["loss"])
    if run.world.main:
        record_evaluation(
            run,
            state,
            epoch,
            val,
            tr | {"running_loss": float(np.mean(running)) if running else None},
            tokens_per_s,
        )
    if state.best_loss is None or val["loss"] < state.best_loss:
        state.best_loss, state.bad_evals = val["loss"], 0
        run.save("best", state)
        return False
    state.bad_evals += 1
    patience = run.cfg.early_stopping_patience
    return patience is not None and state.bad_evals >= patience


def record_evaluation(
    run: Run, state: rd.TrainState, epoch: float, val: dict, tr: dict, speed: float
) -> None:
    """metrics.jsonl, curves.png and a line on stderr: the training probe and validation scores."""
    mem = {"active_gb": mx.get_active_memory() / 1e9, "peak_gb": mx.get_peak_memory() / 1e9}
    common = {"step": state.step, "epoch": round(epoch, 4), "tokens": state.tokens}
    lr = {"learning_rate": float(run.optimizer.learning_rate)}  # of the last step
    append_metrics(run.dir, {"split": "train", **common, **tr, **lr, "tokens_per_s": round(speed, 1), **mem})
    append_metrics(run.dir, {"split": "validation", **common, **val})
    plot_curves(run.dir, title=f"{run.dir.name} ({run.splits.source})", x=curve_axis(run.cfg))
    tqdm.write(
        f"step {state.step}: train loss {tr['loss']:.4f}, validation loss {val['loss']:.4f}"
        + (f", accuracy {val['accuracy']:.4f}" if "accuracy" in val else ""),
        file=sys.stderr,
    )


def save_periodic(run: Run, state: rd.TrainState, final: bool) -> None:
    """iter-<step>/ every save_every steps; last/ then, at the end, and every save_minutes."""
    periodic = state.step in run.save_at or bool(run.save_every) and state.step % run.save_every == 0
    minutes = run.cfg.save_minutes
    timed = minutes is not None and time.monotonic() - run.saved_at >= 60 * minutes
    if periodic:
        run.save(f"iter-{state.step}", state)
    if periodic or final or timed:
        run.save("last", state)
