"""The optimizer and the compiled train step, shared by the trainer and the benchmarks."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from . import adamw
from .adamw import global_norm
from .config import TrainConfig
from .distributed import World


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
    make = partial(adamw.AdamW, learning_rate=schedule(cfg, total_steps), bias_correction=True)
    no_decay = lambda _, p: p.ndim < 2  # noqa: E731
    return optim.MultiOptimizer([make(weight_decay=0.0), make(weight_decay=cfg.weight_decay)], [no_decay])


@dataclass
class Pending:
    """A rank's part of an optimizer step, computed but not applied: summed gradients and sums."""

    grad: Any
    loss_sum: float  # the loss summed over the examples (classify) or predicted tokens (mlm, lm)
    count: int  # how many of those
    tokens: int  # real (not padding) input tokens


class TrainStep:
    """One optimizer step over a list of micro-batches, on one rank or data-parallel.

    ``accumulate`` runs forward and backward of each micro-batch (one compiled function capturing
    the model and random state, one ``mx.eval`` each) and sums the gradients of the summed loss;
    ``apply`` sums them over the ranks, divides by the global count of examples (or predicted
    tokens, so that the mean is that of the whole global batch however it is split), clips to
    ``max_grad_norm`` and updates (a second compiled function). Split in two so that every rank
    can agree on an out-of-memory retry before any rank enters the gradient all-reduce."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        loss_fn: Callable,
        *,
        max_grad_norm: float | None = None,
        compile: bool = True,
        world: World | None = None,
    ):
        self.model, self.world = model, world or World(None)
        self.state = [model.state, optimizer.state, mx.random.state]
        group = self.world.group

        def summed(model, batch):
            loss, n = loss_fn(model, batch)
            return loss * n, n

        loss_and_grad = nn.value_and_grad(model, summed)

        def accumulate(batch: dict, prev_grad):
            (loss_sum, n), grad = loss_and_grad(model, batch)
            if prev_grad is not None:
                grad = tree_map(lambda a, b: a + b, grad, prev_grad)
            return loss_sum, n, grad

        def update(grad, count: mx.array):
            if group is not None:  # mean over ranks x ranks = the sum
                grad = tree_map(lambda g: g * group.size(), nn.average_gradients(grad, group=group))
            scale = 1.0 / count  # the mean; then clipped as optim.clip_grad_norm does
            if max_grad_norm:
                scale = scale * mx.minimum(max_grad_norm / (global_norm(grad) * scale + 1e-6), 1.0)
            adamw.update(optimizer, model, grad, scale)

        compiled = partial(mx.compile, inputs=self.state, outputs=self.state)
        self._accumulate = compiled(accumulate) if compile else accumulate
        self._update = compiled(update) if compile else update

    def accumulate(self, batches: list[dict]) -> Pending:
        grad, loss_sum, count, tokens = None, 0.0, 0, 0
        for batch in batches:
            loss, n, grad = self._accumulate(batch, grad)
            mx.eval(loss, n, grad, self.state)
            loss_sum, count = loss_sum + loss.item(), count + n.item()
            tokens += int(batch["attention_mask"].sum().item())
        if grad is None:  # no example for this rank in the batch: it still takes part, with zeros
            grad = tree_map(mx.zeros_like, self.model.trainable_parameters())
        return Pending(grad, loss_sum, count, tokens)

    def apply(self, p: Pending) -> tuple[float | None, int]:
        """Update; returns (mean loss of the global batch, its real tokens). A global batch with
        nothing to predict (masked-LM: no token masked) has no gradient: no update, loss None."""
        sums = np.array([p.loss_sum, p.count, p.tokens])
        loss_sum, count, tokens = self.world.total(sums, "the step's loss and token counts").tolist()
        if count == 0:  # every rank sees the same global count: all skip together
            return None, int(tokens)
        with self.world.waiting("the gradient all-reduce"):
            self._update(p.grad, mx.array(count))
            mx.eval(self.state)
        return loss_sum / count, int(tokens)

    def __call__(self, batches: list[dict]) -> tuple[float | None, int]:
        """accumulate then apply: one optimizer step (one process)."""
        return self.apply(self.accumulate(batches))
