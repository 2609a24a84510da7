"""Memorization and calibration of one checkpoint, and a run's data map across its checkpoints.

- Membership inference by loss threshold (Yeom et al. 2018; Mireshghallah et al. 2022 compare
  full finetuning and adapters with it): how well an example's loss tells the training examples
  from held-out ones, as the ROC AUC of -loss (0.5: no better than chance; 1: every training
  example has a lower loss than every held-out one).
- Expected calibration error (Guo et al. 2017): the gap between confidence and accuracy, over 15
  equal-width confidence bins, weighted by the bins' sizes.
- Data map (Swayamdipta et al. 2020, dataset cartography): per training example, the mean
  (confidence) and standard deviation (variability) of the gold label's probability across the
  checkpoints of a run, and how often it was predicted right (correctness).
"""

import numpy as np
from sklearn.metrics import roc_auc_score

ECE_BINS = 15
# Data-map regions: variability at least AMBIGUOUS is ambiguous; else confidence at least EASY
# is easy to learn, below it hard to learn.
AMBIGUOUS, EASY = 0.2, 0.5


def gold_loss(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per example cross-entropy of the gold label, from (N, C) probabilities."""
    gold = proba[np.arange(len(labels)), labels]
    return -np.log(np.clip(gold, 1e-12, 1.0))


def membership_auc(member_loss: np.ndarray, heldout_loss: np.ndarray) -> float | None:
    """ROC AUC of the loss-threshold attack: members are the positives, scored by -loss."""
    if not len(member_loss) or not len(heldout_loss):
        return None
    truth = np.r_[np.ones(len(member_loss)), np.zeros(len(heldout_loss))]
    return float(roc_auc_score(truth, -np.r_[member_loss, heldout_loss]))


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins (0, 1/bins], ... of |accuracy - mean confidence| x the bin's share."""
    confidence = proba.max(1)
    correct = proba.argmax(1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def data_map(gold: np.ndarray, correct: np.ndarray) -> dict:
    """(K checkpoints, N examples) gold-label probabilities and correctness -> per example
    confidence, variability (population standard deviation, as dataset cartography) and
    correctness, each example's region, and the share of each region."""
    confidence, variability = gold.mean(0), gold.std(0)
    region = np.where(variability >= AMBIGUOUS, "ambiguous", np.where(confidence >= EASY, "easy", "hard"))
    return {
        "confidence": confidence,
        "variability": variability,
        "correctness": correct.mean(0),
        "region": region,
        "share": {r: float(np.mean(region == r)) for r in ("easy", "ambiguous", "hard")},
    }
