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


def aopc_masks(rankings: list[np.ndarray], seen: np.ndarray, ks=K_PERCENT) -> np.ndarray:
    """(len(rankings) x 2 x len(ks), W) keep masks: without, then only, the top words of each."""
    return np.concatenate([np.concatenate(top_k_masks(r, seen, ks)) for r in rankings])


def aopc_scores(p_kept: np.ndarray, p_full: float, ks=K_PERCENT) -> np.ndarray:
    """(rankings, 2): comprehensiveness and sufficiency AOPC from ``p_kept``, the target's
    probability under each of ``aopc_masks``."""
    return (p_full - p_kept.reshape(-1, 2, len(ks))).mean(-1)  # (rankings, without/only, k) -> mean


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
    return aopc_scores(proba_kept(aopc_masks(rankings, seen, ks))[:, target], p_full, ks)


def random_rankings(seen: np.ndarray, rng: np.random.Generator, draws: int) -> list[np.ndarray]:
    return [rng.random(len(seen)) for _ in range(draws)]
