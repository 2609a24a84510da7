"""The training tasks: how token ids become a batch of inputs and targets, and each task's loss.

A batch is a dict of arrays: ``input_ids`` and ``attention_mask`` (B, L), and ``labels``: class
ids (B,) for classify; for mlm the original ids at the masked positions and -100 elsewhere
(B, L); for lm the input ids themselves (B, L), shifted inside the loss. Every loss is
``loss_fn(model, batch) -> (mean loss, number of examples or predicted tokens)``.
"""

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .batching import PAD_MULTIPLE, collate

IGNORE = -100  # label of a token that is not predicted (HF's convention)


def classify_loss(model: nn.Module, batch: dict) -> tuple[mx.array, mx.array]:
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).astype(mx.float32)
    labels = batch["labels"]
    return nn.losses.cross_entropy(logits, labels, reduction="mean"), mx.array(labels.size)


def mlm_loss(model: nn.Module, batch: dict) -> tuple[mx.array, mx.array]:
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).astype(mx.float32)
    targets = batch["labels"]
    keep = targets != IGNORE
    ce = nn.losses.cross_entropy(logits, mx.maximum(targets, 0)) * keep
    n = keep.sum()
    return ce.sum() / mx.maximum(n, 1), n


def lm_loss(model: nn.Module, batch: dict) -> tuple[mx.array, mx.array]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(ids[:, :-1], attention_mask=mask[:, :-1]).astype(mx.float32)
    keep = mask[:, 1:] != 0
    ce = nn.losses.cross_entropy(logits, batch["labels"][:, 1:]) * keep
    n = keep.sum()
    return ce.sum() / mx.maximum(n, 1), n


LOSSES = {"classify": classify_loss, "mlm": mlm_loss, "lm": lm_loss}


def mask_tokens(ids: np.ndarray, mask: np.ndarray, tokenizer: Any, rng: np.random.Generator):
    """BERT masking: 15% of real, non-special tokens; 80% [MASK], 10% random, 10% unchanged.
    Returns (masked ids, targets with IGNORE where nothing is predicted)."""
    special = np.isin(ids, tokenizer.all_special_ids) | (mask == 0)
    chosen = (rng.random(ids.shape) < 0.15) & ~special
    targets = np.where(chosen, ids, IGNORE).astype(np.int32)
    ids = ids.copy()
    r = rng.random(ids.shape)
    ids[chosen & (r < 0.8)] = tokenizer.mask_token_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    ids[rand] = rng.integers(0, len(tokenizer), size=int(rand.sum()))
    return ids, targets


def make_batch(
    task: str,
    seqs: list[list[int]],
    labels: list[int] | None,
    *,
    pad_id: int,
    padding_side: str = "right",
    tokenizer: Any = None,
    rng: np.random.Generator | None = None,
) -> dict[str, mx.array]:
    """Pad ``seqs`` and attach the targets of ``task`` (mlm masks with ``tokenizer`` and ``rng``)."""
    ids, mask = collate(seqs, pad_id, padding_side, PAD_MULTIPLE)
    if task == "classify":
        targets = np.asarray(labels, np.int32)
    elif task == "mlm":
        ids, targets = mask_tokens(ids, mask, tokenizer, rng)
    else:
        targets = ids
    return {"input_ids": mx.array(ids), "attention_mask": mx.array(mask), "labels": mx.array(targets)}
