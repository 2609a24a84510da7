"""ERASER faithfulness (DeYoung et al., 2020): does removing the words an explanation ranks
highest change the prediction (comprehensiveness), and do they alone keep it (sufficiency)?

For k in K_PERCENT, the top-k% of the seen words (at least one) by attribution towards the
explained class:
    comprehensiveness_k = p(x) - p(x without the top words)    higher: the words mattered
    sufficiency_k       = p(x) - p(only the top words)          lower: the words suffice
AOPC is the mean over the k. A random attribution is the reference any method must beat.
"""

import math

import numpy as np

from .perturbation import ProbaKept

K_PERCENT = (1, 5, 10, 20, 50)


def top_k_masks(scores: np.ndarray, seen: np.ndarray, ks=K_PERCENT) -> tuple[np.ndarray, np.ndarray]:
    """(keep masks without the top words, keep masks with only them), each (len(ks), W)."""
    idx = np.flatnonzero(seen)
    order = idx[np.argsort(-scores[idx], kind="stable")]
    without = np.repeat(seen[None], len(ks), axis=0)
    only = np.zeros_like(without)
    for i, k in enumerate(ks):
        top = order[: max(1, math.ceil(k / 100 * len(idx)))]
        without[i, top], only[i, top] = False, True
    return without, only


def aopc(
    proba_kept: ProbaKept,
    rankings: list[np.ndarray],
    seen: np.ndarray,
    target: int,
    p_full: float,
    ks=K_PERCENT,
) -> np.ndarray:
    """(len(rankings), 2): comprehensiveness and sufficiency AOPC of one example under each word
    ranking (attribution scores), with one model call for all of them."""
    keep = np.concatenate([np.concatenate(top_k_masks(r, seen, ks)) for r in rankings])
    p = proba_kept(keep)[:, target].reshape(len(rankings), 2, len(ks))  # (rankings, without/only, k)
    return (p_full - p).mean(-1)


def random_rankings(seen: np.ndarray, rng: np.random.Generator, draws: int) -> list[np.ndarray]:
    return [rng.random(len(seen)) for _ in range(draws)]
