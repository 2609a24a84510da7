"""AdamW with its float32 CPU update in one kernel, and the gradient scaling folded into it.

MLX's optimizer and ``clip_grad_norm`` are a dozen elementwise passes over the parameters and
gradients, each on one core (their share of a step: benchmarks/profile.md). Here the mean
over the examples and the clipping factor become one scalar (``update``) that the update
kernel (mlx_models/kernels) multiplies in, and the global norm is one kernel reading each gradient
once. Without the kernels (Metal, CUDA, not built), or for other dtypes, MLX's own ops run.
"""

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from .. import kernels
from ..models.cpu_ops import kernel_takes


class AdamW(optim.AdamW):
    """``mlx.optimizers.AdamW``: the same formula and state (``m``, ``v``), so checkpoints move
    freely between the two. ``gradient_scale`` (None or a scalar array) multiplies the gradients
    inside the update; ``update`` sets it for one call."""

    gradient_scale: mx.array | None = None

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        s = self.gradient_scale
        if not kernel_takes(gradient, parameter, state["m"], state["v"]):
            gradient = gradient if s is None else (gradient * s).astype(gradient.dtype)
            return super().apply_single(gradient, parameter, state)
        lr = self.learning_rate.astype(mx.float32)
        (b1, b2), step = self.betas, self.step
        c1, c2 = lr, mx.array(1.0)
        if self.bias_correction:
            c1, c2 = lr / (1 - b1**step), mx.rsqrt(1 - b2**step)
        constants = [mx.array(c) for c in (b1, 1 - b1, b2, 1 - b2)]  # 1 - b in float64, as Adam's
        s = mx.array(1.0) if s is None else s
        k = mx.stack([1 - lr * self.weight_decay, *constants, c1, c2, mx.array(self.eps), s]).astype(
            mx.float32
        )
        parameter, state["m"], state["v"] = kernels.native.adamw(
            parameter, gradient, state["m"], state["v"], k
        )
        return parameter


def global_norm(grads) -> mx.array:
    """The L2 norm of all the gradients together, as ``optim.clip_grad_norm`` computes it."""

    def squared(g: mx.array) -> mx.array:
        if kernel_takes(g):
            return kernels.native.sum_squares(g)
        return (g.astype(mx.float32) if g.dtype == mx.float16 else g).square().sum()

    return mx.sqrt(sum((squared(g) for _, g in tree_flatten(grads)), mx.array(0.0)))


def update(optimizer: optim.Optimizer, model, grads, scale: mx.array) -> None:
    """``optimizer.update(model, grads * scale)``; the scale multiplied in by the update kernel
    when the optimizer is our AdamW, or a MultiOptimizer of them, so no pass scales the gradients."""
    parts = getattr(optimizer, "optimizers", [optimizer])
    if not all(isinstance(o, AdamW) for o in parts):
        return optimizer.update(model, tree_map(lambda g: (g * scale).astype(g.dtype), grads))
    for o in parts:
        o.gradient_scale = scale
    try:
        optimizer.update(model, grads)
    finally:  # the scale is this call's (a traced array under mx.compile)
        for o in parts:
            o.gradient_scale = None
