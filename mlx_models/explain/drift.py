"""How explanations move between checkpoints (the overfitting picture): rank correlation of the
word attributions of the same texts (scipy's Spearman rho and Kendall tau), and how much of the
attribution mass sits on words a TF-IDF model finds non-predictive."""

import warnings

import numpy as np
from scipy import stats


def rank_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    """Mean Spearman and Kendall correlation between the word scores of the same examples under
    two explanations, over the words both saw. Examples with fewer than 3 such words, or with
    constant scores (no ranking), are left out; ``n`` says how many counted."""
    rhos, taus = [], []
    for x, y in zip(a, b, strict=True):
        both = ~(np.isnan(x) | np.isnan(y))
        if both.sum() < 3 or np.ptp(x[both]) == 0 or np.ptp(y[both]) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            rhos.append(stats.spearmanr(x[both], y[both]).statistic)
            taus.append(stats.kendalltau(x[both], y[both]).statistic)
    if not rhos:
        return {"spearman": None, "kendall": None, "n": 0}
    return {"spearman": float(np.mean(rhos)), "kendall": float(np.mean(taus)), "n": len(rhos)}


def mass_share(scores: list[np.ndarray], flagged: list[np.ndarray]) -> dict:
    """Share of the total |attribution| on flagged words (e.g. non-predictive for TF-IDF), and the
    share of the seen words that are flagged: what a uniform attribution would put there."""
    mass = flagged_mass = 0.0
    words = flagged_words = 0
    for s, f in zip(scores, flagged, strict=True):
        seen = ~np.isnan(s)
        mass += np.abs(s[seen]).sum()
        flagged_mass += np.abs(s[seen & f]).sum()
        words += int(seen.sum())
        flagged_words += int((seen & f).sum())
    return {
        "mass_share": flagged_mass / mass if mass > 0 else None,
        "word_share": flagged_words / words if words else None,
    }


def top_k_overlap(a: list[np.ndarray], b: list[np.ndarray], k: int) -> dict:
    """Mean share of the k highest-scored words (over the words both saw) that two explanations of
    the same texts have in common; texts with fewer than k such words, or constant scores on one
    side (no ranking; ties would count as agreement), are left out."""
    shares = []
    for x, y in zip(a, b, strict=True):
        both = np.flatnonzero(~(np.isnan(x) | np.isnan(y)))
        if len(both) < k or np.ptp(x[both]) == 0 or np.ptp(y[both]) == 0:
            continue
        shares.append(len(_top(x, both, k) & _top(y, both, k)) / k)
    return {"top_k_overlap": float(np.mean(shares)) if shares else None, "k": k, "n": len(shares)}


def _top(scores: np.ndarray, among: np.ndarray, k: int) -> set[int]:
    """The indices in ``among`` of the k highest scores (ties: the earlier word)."""
    return set(among[np.argsort(-scores[among], kind="stable")[:k]].tolist())
