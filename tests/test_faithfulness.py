"""Faithfulness on a constructed model where the answer is known, TF-IDF contributions that are
exact, and the drift statistics."""

import math

import numpy as np
import pytest

from mlx_models.explain.drift import mass_share, rank_agreement
from mlx_models.explain.faithfulness import K_PERCENT, aopc, random_rankings, top_k_masks
from mlx_models.explain.perturbation import occlusion
from mlx_models.explain.tfidf import class_coefficients, non_predictive, word_contributions
from mlx_models.explain.words import split_words
from mlx_models.train.tfidf import DEFAULT_PARAMS, pipeline
from sentiment import sentiment_splits


def logistic_bag(weights: np.ndarray, bias: float = 0.0):
    """A two-class model whose log-odds are the sum of the kept words' weights."""

    def proba_kept(keep: np.ndarray) -> np.ndarray:
        p1 = 1 / (1 + np.exp(-(keep @ weights + bias)))
        return np.stack([1 - p1, p1], axis=1)

    return proba_kept


def test_aopc_by_hand():
    # 10 words, one decisive (+4), one against (-1): k = 1, 5, 10, 20, 50 % -> top 1, 1, 1, 2, 5 words
    w = np.array([0, 4, 0, 0, -1, 0, 0, 0, 0, 0.5])
    model, seen = logistic_bag(w), np.ones(10, dtype=bool)
    p = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    full = p(3.5)
    (comp, suff), *_ = aopc(model, [w], seen, 1, full)
    # without the top words: -> 3.5-4, -> 3.5-4, -> -0.5, -> -1 (4 and 0.5 gone), -> -1 (zeros go too)
    expected_comp = np.mean([full - p(-0.5)] * 3 + [full - p(-1.0)] * 2)
    # only the top words: {4}, {4}, {4}, {4, 0.5}, {4, 0.5, three zeros}
    expected_suff = np.mean([full - p(4.0)] * 3 + [full - p(4.5)] * 2)
    assert comp == pytest.approx(expected_comp) and suff == pytest.approx(expected_suff)


def test_true_attributions_beat_random_which_beat_reversed():
    rng = np.random.default_rng(0)
    w = rng.normal(size=40)
    model, seen = logistic_bag(w, bias=0.3), np.ones(40, dtype=bool)
    target = int(model(seen[None])[0].argmax())
    toward = w if target == 1 else -w  # attribution towards the explained class
    full = model(seen[None])[0, target]
    truth, reverse = aopc(model, [toward, -toward], seen, target, full)
    rand = aopc(model, random_rankings(seen, rng, 20), seen, target, full).mean(0)
    assert truth[0] > rand[0] > reverse[0]  # comprehensiveness: higher is better
    assert truth[1] < rand[1] < reverse[1]  # sufficiency: lower is better


def test_unseen_words_are_never_ranked_or_dropped():
    scores = np.array([5.0, np.nan, 1.0, 2.0])
    seen = ~np.isnan(scores)
    without, only = top_k_masks(scores, seen, ks=(1, 50))
    assert (without[:, 1] == False).all() and (only[:, 1] == False).all()  # noqa: E712
    assert only[0].tolist() == [True, False, False, False]  # 1% of 3 words: the top one
    assert only[1].tolist() == [True, False, False, True]  # 50% of 3: two words (ceil)


def test_occlusion_on_the_constructed_model():
    w = np.array([2.0, -1.0, 0.0])
    model, seen = logistic_bag(w), np.array([True, True, False])
    full = model(seen[None])[0, 1]
    scores = occlusion(model, seen, 1, full)
    p = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert scores[0] == pytest.approx(p(1) - p(-1)) and scores[1] == pytest.approx(p(1) - p(2))
    assert np.isnan(scores[2])


@pytest.fixture(scope="module")
def tfidf_models():
    rows = sentiment_splits()["train"]
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    binary = pipeline(DEFAULT_PARAMS | {"min_df": 1}, seed=0).fit(texts, labels)
    three = [y if i % 3 else 2 for i, y in enumerate(labels)]  # a third class, for the multinomial case
    multi = pipeline(DEFAULT_PARAMS | {"min_df": 1}, seed=0).fit(texts, three)
    return texts, binary, multi


def test_tfidf_contributions_sum_to_the_decision_function(tfidf_models):
    texts, binary, multi = tfidf_models
    probe = texts[:5] + ["What a wonderful, wonderful film; the wonderful cast!", "Unknown words only."]
    for model, classes in ((binary, (0, 1)), (multi, (0, 1, 2))):
        decision = model.decision_function(probe)
        for i, text in enumerate(probe):
            for t in classes:
                contributions = word_contributions(model, text, split_words(text), t)
                _, intercept = class_coefficients(model, t)
                d = decision[i] if decision.ndim == 1 else decision[i, t]
                d = -d if decision.ndim == 1 and t == 0 else d  # class 0's log-odds
                # float32 features (the baseline vectorizer's dtype): exact to float32 rounding
                assert contributions.sum() + intercept == pytest.approx(d, rel=1e-6, abs=1e-6), (text, t)
    text = "What a wonderful, wonderful film; the wonderful cast!"
    c = word_contributions(binary, text, split_words(text), 1)
    words = [text[s:e] for s, e in split_words(text)]
    assert c[words.index("wonderful")] > 0 and c[words.index(",")] == 0  # punctuation is no feature
    assert c[words.index("wonderful")] == pytest.approx(c[words.index("wonderful") + 2])  # shared out


def test_non_predictive_words(tfidf_models):
    _, binary, _ = tfidf_models
    flags = non_predictive(binary, ["wonderful", "terrible", ",", "zyzzyva", "The"])
    # sentiment words are predictive; punctuation, unknown words and "the" (in every class alike) not
    assert flags.tolist() == [False, False, True, True, True]


def test_rank_agreement_and_mass_share():
    a = [np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, np.nan, 1])]
    same = rank_agreement(a, a)
    assert same == {"spearman": 1.0, "kendall": 1.0, "n": 2}
    flipped = rank_agreement(a, [-x for x in a])
    assert flipped["spearman"] == -1.0 and flipped["kendall"] == -1.0
    # constant scores have no ranking and are left out, as are examples with < 3 common words
    assert rank_agreement([np.ones(4), np.array([1.0, 2])], [np.arange(4.0), np.array([2.0, 1])])["n"] == 0
    share = mass_share([np.array([3.0, -1, np.nan, 0])], [np.array([True, False, True, True])])
    assert share == {"mass_share": 0.75, "word_share": pytest.approx(2 / 3)}


def test_k_percent_are_erasers():
    assert K_PERCENT == (1, 5, 10, 20, 50)
