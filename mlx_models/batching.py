"""Tokenization and batching: token ids, length-bucketed batch order, padded arrays."""

from typing import Any

import numpy as np

PAD_MULTIPLE = 16  # few distinct batch shapes -> few mx.compile traces


def encode(
    tokenizer: Any, texts: list[str], max_length: int | None, *, add_special_tokens: bool = True
) -> list[list[int]]:
    """Token ids, truncated to max_length (None: not truncated). No token_type_ids: single-sentence
    BERT type ids are all zero (the model's default) and RoBERTa has none."""
    out = run_tokenizer(tokenizer, texts, max_length, add_special_tokens=add_special_tokens)
    return [list(ids) for ids in out["input_ids"]]


def run_tokenizer(tokenizer: Any, texts: list[str], max_length: int | None, **extra: Any):
    """The tokenizer's output for ``encode`` (``extra`` asks for more, e.g. character offsets)."""
    return tokenizer(
        list(texts),
        truncation=max_length is not None,
        max_length=max_length,
        return_token_type_ids=False,
        return_attention_mask=False,
        **extra,
    )


def batch_order(
    lengths: "list[int] | np.ndarray", batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """Batches of example indices; each index appears exactly once.

    Training (shuffle): a permutation seeded by (seed, epoch), sorted by length within chunks of
    50 batches so padding is small, then the batch order is shuffled. The result depends only on
    its arguments, so a resumed run skips the first k batches and sees the same batches.
    Evaluation (no shuffle): longest first, so an out-of-memory shows up on the first batch.
    """
    lengths = np.asarray(lengths)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng((seed, epoch))
    perm = rng.permutation(len(lengths))
    batches = []
    chunk = 50 * batch_size
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def token_budget_batches(
    lengths: "list[int] | np.ndarray", tokens: int, multiple: int = 1
) -> list[list[int]]:
    """Inference batches, longest first, each of at most ``tokens`` padded tokens (widths rounded up
    to ``multiple``): short sequences go many to a batch, so a pass costs what a full one does and
    the number of distinct shapes stays small."""
    lengths = np.asarray(lengths)
    order, batches, i = np.argsort(-lengths, kind="stable"), [], 0
    while i < len(order):
        width = max(1, -(-int(lengths[order[i]]) // multiple) * multiple)
        rows = max(1, tokens // width)
        batches.append(order[i : i + rows].tolist())
        i += rows
    return batches


def pad_id_for(tokenizer: Any) -> int:
    """Llama has no pad token: pad with eos (any id works; padding is masked everywhere)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def collate(
    seqs: list[list[int]],
    pad_id: int,
    padding_side: str = "right",
    pad_to_multiple_of: int = 1,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int32 (B, L). Llama has no pad token, so the caller picks
    pad_id; models pool by the mask, so its value does not matter. Rounding L up to a multiple
    keeps the number of distinct shapes (and so of mx.compile traces) small; never past ``limit``
    (the model's positions) when the sequences fit it."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
    longest = max((len(s) for s in seqs), default=0)
    width = max(1, -(-longest // pad_to_multiple_of) * pad_to_multiple_of)
    if limit and longest <= limit:
        width = max(1, min(width, limit))
    ids = np.full((len(seqs), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), width), dtype=np.int32)
    for i, s in enumerate(seqs):
        cols = slice(0, len(s)) if padding_side == "right" else slice(width - len(s), width)
        ids[i, cols] = s
        mask[i, cols] = 1
    return ids, mask
