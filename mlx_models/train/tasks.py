"""The training tasks: how token ids become a batch of inputs and targets, and each task's loss.

A batch is a dict of arrays: ``input_ids`` and ``attention_mask`` (B, L), and ``labels``: class
ids (B,) for classify; for mlm the original ids at the masked positions and -100 elsewhere
(B, L), with ``masked_at``/``masked_keep``: the flat positions of the masked tokens, padded to a
multiple of MASKED_MULTIPLE (the head runs on those rows only); for lm the input ids themselves
(B, L), shifted inside the loss. Every loss is
``loss_fn(model, batch) -> (mean loss, number of examples or predicted tokens)``.
"""

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..batching import PAD_MULTIPLE, collate
from ..models import cpu_ops

IGNORE = -100  # label of a token that is not predicted (HF's convention)
# The masked-LM head runs on the masked tokens only (ModernBERT's "sparse prediction"): ~15% of the
# rows of its largest GEMM. Their count is padded to a multiple of this, so few shapes compile.
MASKED_MULTIPLE = 64


def classify_loss(model: nn.Module, batch: dict) -> tuple[mx.array, mx.array]:
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).astype(mx.float32)
    labels = batch["labels"]
    return cpu_ops.cross_entropy(logits, labels).mean(), mx.array(labels.size)


def token_predictions(model: nn.Module, batch: dict, task: str) -> tuple[mx.array, mx.array, mx.array]:
    """(logits (..., V) in fp32, targets (...), which positions count (...)) of a language-model
    batch: the masked tokens for mlm (K gathered positions), every next real token for lm (B, L)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if task == "mlm":  # (K, V) logits of the K gathered positions
        at = batch["masked_at"]
        logits = model(ids, attention_mask=mask, positions=at)
        targets, keep = labels.reshape(-1)[at], batch["masked_keep"]
    else:
        logits, targets = model(ids[:, :-1], attention_mask=mask[:, :-1]), labels[:, 1:]
        keep = mask[:, 1:] != 0
    return logits.astype(mx.float32), targets, keep


def token_loss(model: nn.Module, batch: dict, task: str) -> tuple[mx.array, mx.array]:
    logits, targets, keep = token_predictions(model, batch, task)
    ce = cpu_ops.cross_entropy(logits, mx.maximum(targets, 0)) * keep
    n = keep.sum()
    return ce.sum() / mx.maximum(n, 1), n


def mlm_loss(model: nn.Module, batch: dict) -> tuple[mx.array, mx.array]:
    return token_loss(model, batch, "mlm")


def lm_loss(model: nn.Module, batch: dict) -> tuple[mx.array, mx.array]:
    return token_loss(model, batch, "lm")


LOSSES = {"classify": classify_loss, "mlm": mlm_loss, "lm": lm_loss}


@dataclass(frozen=True)
class Masking:
    """How masked-LM batches are masked, as HF's DataCollatorForLanguageModeling (and, with
    ``whole_words``, DataCollatorForWholeWordMask): ``probability`` of the real, non-special
    tokens (or of the words) are chosen; of those 80% become the mask token, 10% a random token,
    10% stay."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15
    continues_word: np.ndarray | None = None  # per token id: True for a piece inside a word

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, probability: float = 0.15, whole_words: bool = False) -> "Masking":
        continues = word_continuation_table(tokenizer) if whole_words else None
        return cls(
            tokenizer.mask_token_id, len(tokenizer), tuple(tokenizer.all_special_ids), probability, continues
        )


def word_continuation_table(tokenizer: Any) -> np.ndarray:
    """True for the token ids that continue a word: WordPiece's "##x", and for byte-level BPE and
    SentencePiece the pieces without the word-start marker ("Ġ", "▁")."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    specials = set(tokenizer.all_special_tokens)
    if any(t.startswith("##") for t in vocab):
        return np.array([t.startswith("##") for t in vocab])
    marker = "Ġ" if any(t.startswith("Ġ") for t in vocab) else "▁"
    return np.array([t not in specials and not t.startswith(marker) and t.isalnum() for t in vocab])


def mask_tokens(ids: np.ndarray, mask: np.ndarray, masking: Masking, rng: np.random.Generator):
    """Returns (masked ids, targets with IGNORE where nothing is predicted)."""
    special = np.isin(ids, masking.special_ids) | (mask == 0)
    if masking.continues_word is None:
        chosen = (rng.random(ids.shape) < masking.probability) & ~special
    else:  # a word is chosen as a whole: number the words of each row, draw one number per word
        starts = ~masking.continues_word[ids] | special
        starts[:, 1:] |= special[:, :-1]  # the first piece after <s> starts a word
        words = np.cumsum(starts, axis=1)
        draws = rng.random((ids.shape[0], ids.shape[1] + 1)) < masking.probability
        chosen = np.take_along_axis(draws, words, axis=1) & ~special
    targets = np.where(chosen, ids, IGNORE).astype(np.int32)
    ids = ids.copy()
    r = rng.random(ids.shape)
    ids[chosen & (r < 0.8)] = masking.mask_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    ids[rand] = rng.integers(0, masking.vocab_size, size=int(rand.sum()))
    return ids, targets


def make_batch(
    task: str,
    seqs: list[list[int]],
    labels: list[int] | None,
    *,
    pad_id: int,
    padding_side: str = "right",
    masking: Masking | None = None,
    rng: np.random.Generator | None = None,
    limit: int | None = None,
) -> dict[str, mx.array]:
    """Pad ``seqs`` (to a multiple of 16, at most ``limit``, the model's positions) and attach the
    targets of ``task`` (mlm masks with ``masking`` and ``rng``)."""
    ids, mask = collate(seqs, pad_id, padding_side, PAD_MULTIPLE, limit)
    if task == "classify":
        targets = np.asarray(labels, np.int32)
    elif task == "mlm":
        ids, targets = mask_tokens(ids, mask, masking, rng)
    else:
        targets = ids
    batch = {"input_ids": mx.array(ids), "attention_mask": mx.array(mask), "labels": mx.array(targets)}
    if task == "mlm":
        at, keep = masked_positions(targets)
        batch |= {"masked_at": mx.array(at), "masked_keep": mx.array(keep)}
    return batch


def masked_positions(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the predicted tokens, padded with index 0 to a multiple of MASKED_MULTIPLE,
    and which of them count."""
    at = np.flatnonzero(targets.ravel() != IGNORE)
    k = max(1, -(-len(at) // MASKED_MULTIPLE)) * MASKED_MULTIPLE
    return np.pad(at, (0, k - len(at))).astype(np.int32), np.arange(k) < len(at)
