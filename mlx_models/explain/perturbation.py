"""Model-agnostic word attributions: occlusion (leave one word out) and SHAP.

Both only call the model: ``proba_kept(keep (M, W) bool) -> (M, C)`` scores the text with only
the kept words (a transformer drops the other words' tokens, a bag-of-words model their
text), ``proba_texts(list of str) -> (N, C)`` scores strings.
"""

from collections.abc import Callable

import numpy as np

from .words import split_words

ProbaKept = Callable[[np.ndarray], np.ndarray]
ProbaTexts = Callable[[list[str]], np.ndarray]


def occlusion_masks(seen: np.ndarray) -> np.ndarray:
    """(seen words, W) keep masks: the seen words less one, for each of them."""
    idx = np.flatnonzero(seen)
    keep = np.repeat(seen[None], len(idx), axis=0)
    keep[np.arange(len(idx)), idx] = False
    return keep


def occlusion_scores(p_without: np.ndarray, seen: np.ndarray, p_full: float) -> np.ndarray:
    """(W,) f(x) - f(x without word w) from ``p_without`` (the target's probability under each of
    ``occlusion_masks(seen)``); NaN for the words not seen."""
    scores = np.full(len(seen), np.nan)
    scores[np.flatnonzero(seen)] = p_full - p_without
    return scores


def occlusion(proba_kept: ProbaKept, seen: np.ndarray, target: int, p_full: float) -> np.ndarray:
    """(W,) f(x) - f(x without word w) for every seen word; NaN for the words not seen."""
    return occlusion_scores(proba_kept(occlusion_masks(seen))[:, target], seen, p_full)


class WordTokenizer:
    """The shared words (words.split_words) as a tokenizer for shap's Text masker, so SHAP's
    coalitions are made of the same words for every model."""

    def __call__(self, s: str, return_offsets_mapping: bool = True) -> dict:
        spans = split_words(s)
        out = {"input_ids": list(range(len(spans)))}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out


class Shap:
    """shap's Partition explainer with a Text masker over the shared words: a masked word is
    replaced by ``mask_token`` (shap's default: the model's mask token, else "...")."""

    def __init__(self, proba_texts: ProbaTexts, mask_token: str, max_evals: int = 500, batch_size: int = 16):
        import shap

        masker = shap.maskers.Text(WordTokenizer(), mask_token=mask_token, collapse_mask_token=False)
        self.explainer = shap.explainers.Partition(lambda xs: proba_texts([str(x) for x in xs]), masker)
        self.max_evals, self.batch_size = max_evals, batch_size

    def __call__(self, text: str, target: int) -> tuple[np.ndarray, float]:
        """(SHAP value per word of ``text``, base value: f of the fully masked text). By
        efficiency, the values sum to f(text) - base value."""
        ex = self.explainer([text], max_evals=self.max_evals, batch_size=self.batch_size, silent=True)
        return np.asarray(ex.values[0])[:, target], float(np.asarray(ex.base_values[0])[target])
