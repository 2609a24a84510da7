"""Words shared by every model: token attributions summed onto the words of the original text.

WordPiece, byte-level BPE and SentencePiece cut "unwatchable" differently, so models are
compared on words defined once from the text (runs of letters/digits with inner apostrophes,
or runs of punctuation) and each token is placed on a word through the character offsets its
(fast) tokenizer reports (``return_offsets_mapping``).
"""

import re
from dataclasses import dataclass

import numpy as np

from .. import batching
from ..errors import ConfigError

WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")
NO_WORD = -1  # special tokens (CLS, SEP, BOS, ...) and pads


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the words of ``text``."""
    return [m.span() for m in WORD.finditer(text)]


def word_of_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """For each (non-special) token, the index of its word, or NO_WORD past the last word.

    A token counts for the word holding its first non-space character: byte-level BPE and
    SentencePiece offsets may include the space before a word ("Ġgreat", "▁great"), and a token
    running over a word boundary counts for the word it starts in. A whitespace-only token (a lone
    "Ġ" or "▁", or its empty span once RoBERTa trims offsets) counts for the word that follows
    it, whose space it is. Special tokens are the caller's to set apart.
    """
    ends = np.array([e for _, e in spans], dtype=np.int64)
    w = np.searchsorted(ends, np.array([s for s, _ in offsets], dtype=np.int64), side="right")
    return np.where(w < len(spans), w, NO_WORD).astype(np.int64)  # first word ending after the start


def word_scores(token_scores: np.ndarray, token_word: np.ndarray, n_words: int) -> np.ndarray:
    """Sum token scores per word; NaN for words no token reached (cut off by truncation)."""
    seen = token_word != NO_WORD
    out = np.zeros(n_words, dtype=np.float64)
    np.add.at(out, token_word[seen], np.asarray(token_scores, dtype=np.float64)[seen])
    reached = np.zeros(n_words, dtype=bool)
    reached[token_word[seen]] = True
    out[~reached] = np.nan
    return out


def seen_words(token_word: np.ndarray, n_words: int) -> np.ndarray:
    """(n_words,) bool: the words at least one token of the (truncated) input covers."""
    reached = np.zeros(n_words, dtype=bool)
    reached[token_word[token_word != NO_WORD]] = True
    return reached


def keep_tokens(ids: list[int], token_word: np.ndarray, keep: np.ndarray) -> list[int]:
    """The token ids left when only the words where ``keep`` is true stay (special tokens stay)."""
    kept = (token_word == NO_WORD) | keep[np.maximum(token_word, 0)]
    return [t for t, k in zip(ids, kept, strict=True) if k]


def join_words(text: str, spans: list[tuple[int, int]], keep: np.ndarray) -> str:
    """The text of the kept words, separated by single spaces (for bag-of-words models)."""
    return " ".join(text[s:e] for (s, e), k in zip(spans, keep, strict=True) if k)


@dataclass
class Tokenized:
    """One text through one tokenizer, aligned with its words."""

    ids: list[int]
    tokens: list[str]
    special: np.ndarray  # (L,) bool: kept in baselines, never dropped
    token_word: np.ndarray  # (L,) word index of each token or NO_WORD


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[Tokenized]:
    """Token ids (truncated and with special tokens, as in training) aligned with the words."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{type(tokenizer).__name__} is a slow tokenizer without character offsets; "
            "re-convert the model so that it carries tokenizer.json (a fast tokenizer)"
        )
    enc = batching.run_tokenizer(
        tokenizer, texts, max_length, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    out = []
    for text, ids, offsets, special in zip(
        texts, enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"], strict=True
    ):
        special = np.asarray(special, dtype=bool)
        token_word = np.where(special, NO_WORD, word_of_tokens(offsets, split_words(text)))
        out.append(Tokenized(list(ids), tokenizer.convert_ids_to_tokens(ids), special, token_word))
    return out
