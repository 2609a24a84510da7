"""Exact attributions of the TF-IDF baseline (baseline.py: TfidfVectorizer + LogisticRegression).

The decision function of a class is linear in the TF-IDF features, d_t(x) = sum_j c_tj x_j + b_t,
so coefficient x feature value is an exact decomposition: the contributions of a text sum to
d_t(x) - b_t, the log-odds of the class for two labels (Integrated Gradients from the zero
vector gives the same numbers on a linear model). A feature (an n-gram) is shared equally by
its occurrences, and an occurrence by its n tokens; each token lies inside one word.
"""

import re

import numpy as np

from .words import NO_WORD, Tokenized, word_of_tokens


def _steps(pipeline):
    return pipeline.named_steps["tfidf"], pipeline.named_steps["clf"]


def class_coefficients(pipeline, target: int) -> tuple[np.ndarray, float]:
    """(coefficients (F,), intercept) of class ``target``'s decision function. With two classes
    scikit-learn stores one row, the log-odds of class 1; class 0 is its negation."""
    _, clf = _steps(pipeline)
    if clf.coef_.shape[0] == 1:
        sign = 1.0 if target == 1 else -1.0
        return sign * clf.coef_[0], sign * float(clf.intercept_[0])
    return clf.coef_[target], float(clf.intercept_[target])


def analyzer_tokens(pipeline, text: str) -> list[tuple[str, tuple[int, int]]]:
    """The vectorizer's word tokens of ``text`` (after its preprocessing and stop words), with
    their character spans in ``text``."""
    vec, _ = _steps(pipeline)
    preprocess, stop = vec.build_preprocessor(), vec.get_stop_words() or ()
    found = ((preprocess(m.group()), m.span()) for m in re.finditer(vec.token_pattern, text))
    return [(term, span) for term, span in found if term not in stop]


def tokenized(pipeline, text: str, spans: list[tuple[int, int]]) -> Tokenized:
    """The analyzer's tokens aligned with the words, as a transformer's tokens are."""
    tokens = analyzer_tokens(pipeline, text)
    token_word = word_of_tokens([span for _, span in tokens], spans)
    return Tokenized([], [t for t, _ in tokens], np.zeros(len(tokens), dtype=bool), token_word)


def token_contributions(pipeline, text: str, target: int) -> np.ndarray:
    """(n_tokens,) coefficient x feature value of every n-gram in ``text``, shared out over the
    analyzer tokens (see analyzer_tokens); the sum is d_target(x) - intercept."""
    vec, _ = _steps(pipeline)
    coef, _ = class_coefficients(pipeline, target)
    x = vec.transform([text])  # (1, F) sparse
    value = dict(zip(x.indices.tolist(), x.data.tolist(), strict=True))
    terms = [t for t, _ in analyzer_tokens(pipeline, text)]
    lo, hi = vec.ngram_range
    occurrences: dict[int, list[range]] = {}
    for n in range(lo, hi + 1):
        for i in range(len(terms) - n + 1):
            j = vec.vocabulary_.get(" ".join(terms[i : i + n]))
            if j is not None:
                occurrences.setdefault(j, []).append(range(i, i + n))
    out = np.zeros(len(terms))
    for j, where in occurrences.items():
        share = coef[j] * value.get(j, 0.0) / len(where)
        for tokens in where:
            out[list(tokens)] += share / len(tokens)
    return out


def non_predictive(pipeline, words: list[str]) -> np.ndarray:
    """(n_words,) bool: words the TF-IDF model finds non-predictive. A word is predictive when one
    of its tokens is a unigram feature whose largest |coefficient| over the classes is at least the
    median over all unigram features; out-of-vocabulary words and punctuation are not."""
    vec, clf = _steps(pipeline)
    unigrams = {t: j for t, j in vec.vocabulary_.items() if " " not in t}
    strength = np.abs(clf.coef_).max(axis=0)
    threshold = np.median(strength[list(unigrams.values())])
    out = np.ones(len(words), dtype=bool)
    for w, word in enumerate(words):
        ids = [unigrams[t] for t, _ in analyzer_tokens(pipeline, word) if t in unigrams]
        out[w] = not ids or strength[ids].max() < threshold
    return out


def word_contributions(pipeline, text: str, spans: list[tuple[int, int]], target: int) -> np.ndarray:
    """(n_words,) exact contributions per word; words without a feature get 0."""
    tok = tokenized(pipeline, text, spans)
    scores = np.zeros(len(spans))
    on_word = tok.token_word != NO_WORD
    np.add.at(scores, tok.token_word[on_word], token_contributions(pipeline, text, target)[on_word])
    return scores
