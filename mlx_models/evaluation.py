"""Scoring a model on a split: loss, and accuracy/precision/recall/F1 or perplexity."""

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .batching import batch_order
from .metrics import classification_metrics
from .tasks import LOSSES, make_batch


def evaluate(
    model: nn.Module,
    task: str,
    encoded: list[list[int]],
    labels: list[int] | None,
    *,
    batch_size: int,
    pad_id: int,
    padding_side: str = "right",
    tokenizer: Any = None,
    seed: int = 0,
) -> dict:
    """Mean loss per example (classify) or per predicted token (mlm, lm) over ``encoded``, in
    eval mode. Masked-LM masks are drawn from a fixed seed, so evaluations compare."""
    model.eval()
    total, count, preds = 0.0, 0, []
    rng = np.random.default_rng(seed + 1)
    order = batch_order([len(s) for s in encoded], batch_size, seed, 0, shuffle=False)
    for idx in order:
        part = None if labels is None else [labels[i] for i in idx]
        batch = make_batch(
            task,
            [encoded[i] for i in idx],
            part,
            pad_id=pad_id,
            padding_side=padding_side,
            tokenizer=tokenizer,
            rng=rng,
        )
        if task == "classify":
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).astype(mx.float32)
            loss = nn.losses.cross_entropy(logits, batch["labels"], reduction="sum")
            preds += np.array(mx.argmax(logits, axis=-1)).tolist()
            total, count = total + loss.item(), count + len(idx)
        else:
            loss, n = LOSSES[task](model, batch)
            total, count = total + loss.item() * n.item(), count + n.item()
    model.train()
    out = {"loss": total / max(count, 1), "n": len(encoded)}
    if task == "classify":
        golds = [labels[i] for idx in order for i in idx]
        out |= classification_metrics(golds, preds, model.args.num_labels)
    else:
        out["perplexity"] = float(np.exp(min(out["loss"], 50)))
    return out
