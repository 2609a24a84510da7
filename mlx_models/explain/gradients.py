"""Gradient attributions on the word embeddings of an MLX classifier: Integrated Gradients and
gradient × input, batched, with MLX's autodiff.

The explained output is the probability of a target class, f(e) = softmax(model(e))[t], as a
function of the word embeddings e (B, L, D). Positions, token types and the attention mask stay
those of the input, which is what captum's LayerIntegratedGradients on the word-embedding layer
computes. IG integrates the gradient along the straight path from the baseline b to the input x:

    IG = (x - b) * sum_k w_k df/de(b + alpha_k (x - b))       (B, L, D), summed over D per token

Its completeness gap |sum IG - (f(x) - f(b))| measures the quadrature error.
"""

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..models.base import TaskModel

RULES = ("gauss-legendre", "trapezoid")


def quadrature(steps: int, rule: str = "gauss-legendre") -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) on [0, 1]; the weights sum to 1.

    Gauss-Legendre: numpy's nodes mapped to [0, 1], as captum's "gausslegendre". Trapezoid: alphas
    linspace(0, 1, steps) with weights 1/(steps-1), halved at both ends. (captum's
    "riemann_trapezoid" has the same alphas but steps of 1/steps, so its weights sum to
    1 - 1/steps and its attributions are (steps-1)/steps of these.)
    """
    if rule == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    if rule == "trapezoid":
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, steps), weights
    raise ValueError(f"unknown quadrature rule {rule!r}; use one of {RULES}")


def word_embeddings(model: nn.Module) -> nn.Module:
    """The word-embedding layer of a BERT, RoBERTa or Llama model (quantized ones too)."""
    base = model[model.base_model_prefix] if isinstance(model, TaskModel) else model
    for name in base.word_embeddings_path.split("."):
        base = base[name]
    return base


def embed(model: nn.Module, ids: mx.array) -> mx.array:
    return word_embeddings(model)(ids).astype(mx.float32)  # (B, L, D)


def class_probabilities(model: nn.Module, ids: mx.array, mask: mx.array) -> mx.array:
    """(B, C) softmax probabilities of the token ids."""
    return mx.softmax(model(ids, attention_mask=mask).astype(mx.float32), axis=-1, precise=True)


def target_probability(
    model: nn.Module, ids: mx.array, mask: mx.array, target: mx.array, embeds: mx.array
) -> mx.array:
    """(B,) softmax probability of class ``target[b]`` with word embeddings ``embeds``."""
    logits = model(ids, attention_mask=mask, inputs_embeds=embeds).astype(mx.float32)
    return mx.take_along_axis(mx.softmax(logits, axis=-1, precise=True), target[:, None], axis=-1)[:, 0]


def probability_and_gradient(
    model: nn.Module, ids: mx.array, mask: mx.array, target: mx.array, embeds: mx.array
) -> tuple[mx.array, mx.array]:
    """(f (B,), df/dembeds (B, L, D)). Rows are independent, so the gradient of the sum is the
    gradient of each row's own output."""

    def total(e):
        p = target_probability(model, ids, mask, target, e)
        return p.sum(), p

    (_, p), grad = mx.value_and_grad(total)(embeds)
    return p, grad


class Graphs:
    """``class_probabilities``, ``target_probability`` and ``probability_and_gradient`` of one
    model, compiled (one graph per input shape, the model's weights an input: a model that loads
    another checkpoint's weights stays right). A scorer keeps one for all its batches."""

    def __init__(self, model: nn.Module, compile: bool = True):
        self.model = model
        fns = partial(class_probabilities, model), partial(target_probability, model)
        fns += (partial(probability_and_gradient, model),)
        if compile:
            fns = tuple(mx.compile(f, inputs=[model.state]) for f in fns)
        self.classes, self.probability, self.gradient = fns


@dataclass
class Attribution:
    per_dim: np.ndarray  # (B, L, D): attribution of every embedding coordinate
    f_input: np.ndarray  # (B,) f(x)
    f_baseline: np.ndarray | None = None  # (B,) f(b), IG only

    @property
    def tokens(self) -> np.ndarray:
        return self.per_dim.sum(-1)  # (B, L)

    @property
    def completeness_gap(self) -> np.ndarray:
        """(B,) |sum of attributions - (f(x) - f(b))|."""
        return np.abs(self.per_dim.sum((1, 2)) - (self.f_input - self.f_baseline))


def gradient_x_input(
    model: nn.Module, ids: mx.array, mask: mx.array, target: mx.array, graphs: Graphs | None = None
) -> Attribution:
    graphs = graphs or Graphs(model)
    x = embed(model, ids)
    f, grad = graphs.gradient(ids, mask, target, x)
    return Attribution(np.array(x * grad), np.array(f))


def integrated_gradients(
    model: nn.Module,
    ids: mx.array,
    mask: mx.array,
    target: mx.array,
    baseline_ids: mx.array,
    *,
    steps: int = 50,
    rule: str = "gauss-legendre",
    rows: int = 64,
    graphs: Graphs | None = None,
) -> Attribution:
    """IG of ``target``'s probability from the baseline's word embeddings to the input's, with
    ``steps`` quadrature points; at most ``rows`` (examples x points) go through one pass."""
    graphs = graphs or Graphs(model)
    x, b = embed(model, ids), embed(model, baseline_ids)
    alphas, weights = quadrature(steps, rule)
    B = ids.shape[0]
    chunk = max(1, rows // B)
    total = mx.zeros_like(x)
    for i in range(0, steps, chunk):
        a = mx.array(alphas[i : i + chunk], mx.float32)[:, None, None, None]  # (n, 1, 1, 1)
        w = mx.array(weights[i : i + chunk], mx.float32)[:, None, None, None]
        n = a.shape[0]
        path = (b + a * (x - b)).reshape(n * B, *x.shape[1:])  # (n*B, L, D), point-major
        _, grad = graphs.gradient(_repeat(ids, n), _repeat(mask, n), _repeat(target, n), path)
        total = total + (w * grad.reshape(n, *x.shape)).sum(0)
        mx.eval(total)
    # f(x) and f(b) for the completeness gap: forward passes of both, at most ``rows`` rows each
    both = (_repeat(ids, 2), _repeat(mask, 2), _repeat(target, 2), mx.concatenate([x, b]))
    ends = mx.concatenate(
        [graphs.probability(*(a[i : i + rows] for a in both)) for i in range(0, 2 * B, rows)]
    )
    return Attribution(np.array((x - b) * total), np.array(ends[:B]), np.array(ends[B:]))


def _repeat(a: mx.array, n: int) -> mx.array:
    """``a`` stacked ``n`` times along the batch axis (the rows of every path point)."""
    return mx.tile(a, (n,) + (1,) * (a.ndim - 1))


def baseline_ids(ids: np.ndarray, keep: np.ndarray, token_id: int) -> np.ndarray:
    """The IG baseline: every token replaced by ``token_id`` (pad or mask) except where ``keep``
    (special tokens and padding)."""
    return np.where(keep, ids, token_id).astype(ids.dtype)
