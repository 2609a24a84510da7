"""Shared pieces: result rows, timing, memory measures, the MLX and PyTorch train-step harnesses.

``import mlx_models`` comes first: it loads OpenBLAS, which must precede ``mlx.core``.
"""

import mlx_models  # noqa: F401, I001  (OpenBLAS before MLX)

import gc
import json
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import torch_peers

from mlx_models.train.config import TrainConfig
from mlx_models.train.step import TrainStep, make_optimizer

LR = 1e-4
MLX_PEAK = "MLX peak (`mx.get_peak_memory`)"
RSS_PEAK = "RSS high-water delta (VmHWM), child process"


@dataclass
class Row:
    name: str
    tokens: int = 0  # per step
    steps: int = 0  # timed steps wanted
    step: Callable[[], float] | None = field(default=None, repr=False)  # one train step -> loss
    deferred: Callable[[], None] | None = field(default=None, repr=False)  # runs all its steps at once
    warmup_s: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    peak_gb: float | None = None
    memory: str = ""
    error: str | None = None

    @property
    def step_s(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.step_s if self.times else None


def _error(e: Exception) -> str:
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}"


def prepare(name: str, fn: Callable[[], Row]) -> Row:
    """Build and warm up one row (its peak memory is measured here); a failure becomes a row
    with the error instead of ending the run."""
    print(f"  preparing: {name}", file=sys.stderr, flush=True)
    try:
        row = fn()
    except Exception as e:  # noqa: BLE001  (any peer failure is reported in its row)
        traceback.print_exc()
        row = Row(name, error=_error(e))
    row.name = name
    gc.collect()
    mx.clear_cache()
    print(f"  ready: {row}", file=sys.stderr, flush=True)
    return row


def warm_up(row: Row, warmup: int) -> Row:
    for _ in range(warmup):
        tic = time.perf_counter()
        check(row.step())
        row.warmup_s.append(time.perf_counter() - tic)
    return row


def time_interleaved(rows: list[Row]) -> list[Row]:
    """Timed steps round-robin over the rows, so that load drifting on a shared machine hits
    every row alike; each row stops after its own number of steps. Deferred rows (a child
    process) run once, half-way through the rounds. Frees the models after."""
    rounds = max((row.steps for row in rows if row.step), default=0)
    for r in range(rounds + 1):
        if r == rounds // 2:
            for row in rows:
                if row.deferred and not row.error:
                    print(f"  running: {row.name}", file=sys.stderr, flush=True)
                    try:
                        row.deferred()
                    except Exception as e:  # noqa: BLE001
                        row.error = _error(e)
        for row in rows:
            if row.error or not row.step or r >= row.steps:
                continue
            try:
                tic = time.perf_counter()
                check(row.step())
                row.times.append(time.perf_counter() - tic)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                row.error = _error(e)
        print(f"  timed round {r + 1}", file=sys.stderr, flush=True)
    for row in rows:
        row.step = row.deferred = None
    gc.collect()
    mx.clear_cache()
    return rows


def check(loss: float) -> None:
    if loss != loss or loss in (float("inf"), float("-inf")):
        raise FloatingPointError(f"non-finite loss {loss}")


# --- harnesses ----------------------------------------------------------------------------------


BENCH_CONFIG = TrainConfig(learning_rate=LR, warmup_ratio=0.0, lr_schedule="constant")


def mlx_row(
    model: nn.Module,
    loss_fn: Callable,
    batch: dict,
    tokens: int,
    warmup: int,
    steps: int,
    compiled: bool = True,
) -> Row:
    """The trainer's own step (``mlx_models.train.step.TrainStep`` with ``make_optimizer``: AdamW with
    HF Trainer's decay groups, gradient clipping at 1.0, compiled), for every MLX row alike, so
    the rows differ only in the model. Peak memory (minus what other live rows hold) counts
    weights, optimizer state and the warm-up steps."""
    gc.collect()  # garbage of earlier rows must not be freed inside this row's measurement
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.eval(model.parameters())
    mx.reset_peak_memory()
    optimizer = make_optimizer(BENCH_CONFIG, max(steps + warmup, 1))
    optimizer.init(model.trainable_parameters())
    step = TrainStep(model, optimizer, loss_fn, max_grad_norm=BENCH_CONFIG.max_grad_norm, compile=compiled)
    row = warm_up(Row("", tokens, steps, lambda: step([batch])[0]), warmup)
    row.peak_gb, row.memory = (mx.get_peak_memory() - base) / 1e9, MLX_PEAK
    return row


def eval_row(model: nn.Module, task: str, batch: dict, tokens: int, warmup: int, steps: int) -> Row:
    """Evaluation as the trainer runs it (``mlx_models.train.evaluation.Evaluator``: the compiled,
    gradient-free forward with its loss and predictions, in eval mode) on one batch; a "step"
    is one evaluation batch (the trainer's default: 4 x the training batch)."""
    from mlx_models.train.evaluation import Evaluator

    gc.collect()
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.eval(model.parameters())
    mx.reset_peak_memory()
    model.eval()
    scorer = Evaluator(model, task)
    row = warm_up(Row("", tokens, steps, lambda: float(scorer(batch)[0][0])), warmup)
    row.peak_gb, row.memory = (mx.get_peak_memory() - base) / 1e9, MLX_PEAK
    return row


def torch_row(kind: str, cfg: dict, tokens: int, warmup: int, steps: int, in_process: bool = False) -> Row:
    """A PyTorch peer, run in a clean child process, or with ``in_process`` in this one, which has
    imported mlx_models (OpenBLAS loaded globally) and run MLX: the two side by side show whether
    mlx_models slows PyTorch down (see mlx_models/_blas.py). Memory only from the child."""
    row = Row("", tokens, steps, memory="–" if in_process else RSS_PEAK)
    cfg = cfg | {"warmup": warmup, "steps": steps}

    def child() -> dict:
        cmd = [sys.executable, str(Path(__file__).with_name("torch_peers.py")), kind, json.dumps(cfg)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def run() -> None:
        out = torch_peers.main(kind, cfg) if in_process else child()
        row.warmup_s, row.times = out["warmup_s"], out["times"]
        row.peak_gb = None if in_process else out["peak_gb"]

    row.deferred = run
    return row


# --- tables -------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def table(rows: list[Row]) -> str:
    lines = [
        "| | tokens/s | s/step (median) | peak memory GB | memory measure | warm-up+timed steps |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.name} | failed: {r.error} | | | | |")
        else:
            lines.append(
                f"| {r.name} | {_fmt(r.tokens_per_s, '.0f')} | {_fmt(r.step_s, '.2f')} | "
                f"{_fmt(r.peak_gb, '.2f')} | {r.memory} | {len(r.warmup_s)}+{len(r.times)} |"
            )
    return "\n".join(lines)


def ratio_table(pairs: list[tuple[str, Row, Row]]) -> str:
    """Speed ratio (tokens/s a ÷ b) and memory ratio (peak a ÷ b) for each (label, a, b)."""
    lines = ["| | speed (tokens/s) | peak memory |", "|---|---:|---:|"]
    for label, a, b in pairs:
        ok = not (a.error or b.error)
        speed = f"{a.tokens_per_s / b.tokens_per_s:.2f}×" if ok else "–"
        mem = f"{a.peak_gb / b.peak_gb:.2f}×" if ok and a.peak_gb and b.peak_gb else "–"
        lines.append(f"| {label} | {speed} | {mem} |")
    return "\n".join(lines)


def describe(cfg: dict) -> str:
    """The shape of a model config: hidden size, layers, heads, intermediate size, vocabulary."""
    layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    return (
        f"{cfg['hidden_size']} hidden, {layers} layers, {heads} heads, "
        f"intermediate {cfg['intermediate_size']}, vocab {cfg['vocab_size']}"
    )


def section(title: str, desc: str, rows: list[Row], pairs: list[tuple[str, Row, Row]]) -> str:
    """A section of results.md: the description, the rows, the ratios."""
    return f"## {title}\n\n{desc}\n\n{table(rows)}\n\nRatios:\n\n{ratio_table(pairs)}\n"
