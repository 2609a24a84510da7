"""Evaluating a model on a split: loss, and accuracy/precision/recall/F1 (classify) or perplexity and
token accuracy (mlm: of the masked tokens; lm: of the next tokens).

An `Evaluator` is the model's compiled, gradient-free forward with its loss and predictions: one
graph per padded batch shape, one host sync per batch. Under mlx.launch each rank scores its
share of the examples and the sums are added over the ranks."""

import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..batching import batch_order
from ..models import cpu_ops
from .distributed import World
from .metrics import classification_metrics
from .tasks import Masking, make_batch, token_predictions


class Evaluator:
    """``scorer(batch) -> (summed loss, count, correct, predictions)`` for ``model`` on ``task``,
    compiled with the model's parameters as inputs (so it follows training)."""

    def __init__(self, model: nn.Module, task: str, compile: bool = True):
        self.model, self.task = model, task

        def score(batch: dict):
            if task == "classify":
                logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).astype(mx.float32)
                targets, keep = batch["labels"], mx.ones(batch["labels"].shape, mx.bool_)
            else:
                logits, targets, keep = token_predictions(model, batch, task)
            ce = cpu_ops.cross_entropy(logits, mx.maximum(targets, 0)) * keep
            predicted = mx.argmax(logits, axis=-1)
            hits = ((predicted == targets) & keep).sum()
            return mx.stack([ce.sum(), keep.sum().astype(mx.float32), hits.astype(mx.float32)]), predicted

        self._score = mx.compile(score, inputs=[model.state]) if compile else score

    def __call__(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        sums, predicted = self._score(batch)
        mx.eval(sums, predicted)
        return np.array(sums, np.float64), np.array(predicted)


def evaluate(
    scorer: Evaluator,
    encoded: list[list[int]],
    labels: list[int] | None,
    *,
    batch_size: int,
    pad_id: int,
    padding_side: str = "right",
    masking: Masking | None = None,
    seed: int = 0,
    world: World | None = None,
) -> dict:
    """Mean loss per example (classify) or per predicted token (mlm, lm) over ``encoded``, in
    eval mode (the model's mode is restored after), and the tokens scored per second. Masked-LM masks
    are drawn from a fixed seed, so evaluations compare."""
    world, task = world or World(None), scorer.task
    share = world.part(list(range(len(encoded))))
    num_labels = getattr(scorer.model.args, "num_labels", 2)
    sums = np.zeros(4)  # loss, count, hits, tokens
    confusion = np.zeros((num_labels, num_labels), np.int64)
    tic = time.perf_counter()
    rng = np.random.default_rng((seed + 1, world.rank))
    training = scorer.model.training  # restored after: a model in eval mode stays in it
    scorer.model.eval()
    for part in batch_order([len(encoded[i]) for i in share], batch_size, seed, 0, shuffle=False):
        idx = [share[i] for i in part]
        batch = make_batch(
            task, [encoded[i] for i in idx], None if labels is None else [labels[i] for i in idx],
            pad_id=pad_id, padding_side=padding_side, masking=masking, rng=rng,
            limit=scorer.model.args.max_positions,
        )  # fmt: skip
        batch_sums, predicted = scorer(batch)
        sums += [*batch_sums, sum(len(encoded[i]) for i in idx)]
        if task == "classify":
            np.add.at(confusion, ([labels[i] for i in idx], predicted), 1)
    scorer.model.train(training)
    loss, count, hits, tokens = world.total(sums, "the evaluation sums").tolist()
    speed = round(tokens / max(time.perf_counter() - tic, 1e-9), 1)
    out = {"loss": loss / max(count, 1), "n": len(encoded), "tokens_per_s": speed}
    if task == "classify":
        confusion = world.total(confusion, "the evaluation sums")
        golds, preds = (np.repeat(idx, confusion.ravel()).tolist() for idx in np.indices(confusion.shape))
        return out | classification_metrics(golds, preds, num_labels)
    return out | {"perplexity": float(np.exp(min(out["loss"], 50))), "accuracy": hits / max(count, 1)}
