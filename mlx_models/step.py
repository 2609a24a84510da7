"""The optimizer and the compiled train step, shared by the trainer and the benchmarks."""

from collections.abc import Callable
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from .config import TrainConfig


def schedule(cfg: TrainConfig, total_steps: int) -> Callable:
    """Linear warm-up from 0 (warmup_steps, else warmup_ratio of the steps), then linear or cosine
    decay to min_learning_rate, or constant: HF's get_*_schedule_with_warmup."""
    lr, end = cfg.learning_rate, cfg.min_learning_rate
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    decay_steps = max(total_steps - warmup, 1)
    decay = {
        "linear": optim.linear_schedule(lr, end, decay_steps),
        "cosine": optim.cosine_decay(lr, decay_steps, end),
        "constant": lambda _: mx.array(lr),
    }[cfg.lr_schedule]
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optim.Optimizer:
    """AdamW as torch defines it and HF's Trainer sets it up: no weight decay on biases and norm
    weights (the 1-D parameters). bias_correction: MLX's default is off; without it the first
    updates are ~3x larger and finetuning a pretrained encoder collapses to chance."""
    adamw = partial(optim.AdamW, learning_rate=schedule(cfg, total_steps), bias_correction=True)
    no_decay = lambda _, p: p.ndim < 2  # noqa: E731
    return optim.MultiOptimizer([adamw(weight_decay=0.0), adamw(weight_decay=cfg.weight_decay)], [no_decay])


class TrainStep:
    """One optimizer step over a list of micro-batches.

    Each micro-batch runs forward and backward in one compiled function that captures the
    model, the optimizer and the random state; gradients are summed over the micro-batches,
    and on the last one averaged, clipped to ``max_grad_norm`` and applied. One ``mx.eval``
    per micro-batch."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        loss_fn: Callable,
        *,
        max_grad_norm: float | None = None,
        compile: bool = True,
    ):
        self.state = [model.state, optimizer.state, mx.random.state]
        loss_and_grad = nn.value_and_grad(model, loss_fn)

        def micro_step(batch: dict, prev_grad, update: bool, accum: int):
            (loss, n), grad = loss_and_grad(model, batch)
            if prev_grad is not None:
                grad = tree_map(lambda a, b: a + b, grad, prev_grad)
            if update:
                if accum > 1:
                    grad = tree_map(lambda g: g / accum, grad)
                if max_grad_norm:
                    grad, _ = optim.clip_grad_norm(grad, max_grad_norm)
                optimizer.update(model, grad)
                grad = None
            return loss, n, grad

        compiled = partial(mx.compile, inputs=self.state, outputs=self.state)
        self.micro_step = compiled(micro_step) if compile else micro_step

    def __call__(self, batches: list[dict]) -> tuple[float, int]:
        """Run the step; returns (mean loss over the micro-batches, real tokens seen)."""
        grad, loss_sum, tokens = None, 0.0, 0
        for k, batch in enumerate(batches):
            loss, _, grad = self.micro_step(batch, grad, k == len(batches) - 1, len(batches))
            mx.eval(loss, grad, self.state)
            loss_sum += loss.item()
            tokens += int(batch["attention_mask"].sum().item())
        return loss_sum / len(batches), tokens
