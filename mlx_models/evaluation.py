"""Scoring a model on a split: loss, and accuracy/precision/recall/F1 (classify) or perplexity and
token accuracy (mlm: of the masked tokens; lm: of the next tokens)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .batching import batch_order
from .metrics import classification_metrics
from .tasks import Masking, make_batch, token_predictions


def evaluate(
    model: nn.Module,
    task: str,
    encoded: list[list[int]],
    labels: list[int] | None,
    *,
    batch_size: int,
    pad_id: int,
    padding_side: str = "right",
    masking: Masking | None = None,
    seed: int = 0,
) -> dict:
    """Mean loss per example (classify) or per predicted token (mlm, lm) over ``encoded``, in
    eval mode. Masked-LM masks are drawn from a fixed seed, so evaluations compare."""
    model.eval()
    loss_sum, count, hits, preds = 0.0, 0, 0, []
    rng = np.random.default_rng(seed + 1)
    order = batch_order([len(s) for s in encoded], batch_size, seed, 0, shuffle=False)
    for idx in order:
        part = None if labels is None else [labels[i] for i in idx]
        seqs = [encoded[i] for i in idx]
        batch = make_batch(
            task, seqs, part, pad_id=pad_id, padding_side=padding_side, masking=masking, rng=rng
        )
        if task == "classify":
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).astype(mx.float32)
            targets, keep = batch["labels"], mx.ones(batch["labels"].shape, mx.bool_)
        else:
            logits, targets, keep = token_predictions(model, batch, task)
        ce = nn.losses.cross_entropy(logits, mx.maximum(targets, 0)) * keep
        predicted = mx.argmax(logits, axis=-1)
        loss_sum += ce.sum().item()
        count += int(keep.sum().item())
        hits += int(((predicted == targets) & keep).sum().item())
        if task == "classify":
            preds += np.array(predicted).tolist()
    model.train()
    out = {"loss": loss_sum / max(count, 1), "n": len(encoded)}
    if task == "classify":
        golds = [labels[i] for idx in order for i in idx]
        return out | classification_metrics(golds, preds, model.args.num_labels)
    return out | {"perplexity": float(np.exp(min(out["loss"], 50))), "accuracy": hits / max(count, 1)}
