"""One model explained on a list of texts: its prediction, the word scores of every method, IG's
completeness gap and ERASER faithfulness per method (next to random word rankings).

Two kinds of model answer the same questions: `MLXScorer` (a BERT, RoBERTa or Llama checkpoint:
gradient methods on the word embeddings) and `TfidfScorer` (the TF-IDF baseline: its exact
linear contributions). Occlusion, SHAP and faithfulness only call the model, so they are shared;
occlusion and the faithfulness deletions score the variants of every text in one batched pass.
"""

import sys
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from ..batching import PAD_MULTIPLE, batch_order, collate, encode, pad_id_for, token_budget_batches
from ..errors import ConfigError, WeightsError
from ..interop.loading import load_tokenizer
from ..train.trained import Checkpoint, TfidfTrained, Trained
from . import tfidf as tfidf
from .faithfulness import aopc_masks, aopc_scores, random_rankings
from .gradients import Graphs, baseline_ids, gradient_x_input, integrated_gradients
from .perturbation import Shap, occlusion_masks, occlusion_scores
from .words import Tokenized, join_words, keep_tokens, seen_words, split_words, tokenize, word_scores

METHODS = ("ig", "grad-input", "occlusion", "shap", "linear")
GRADIENT_METHODS = ("ig", "grad-input")


@dataclass
class Options:
    steps: int = 50  # IG quadrature points
    rule: str = "gauss-legendre"  # or trapezoid
    baseline: str = "pad"  # IG baseline token: pad or mask
    batch_size: int = 16  # texts per forward pass
    rows: int = 64  # IG: texts x points per forward/backward pass
    shap_evals: int = 500  # model calls per text for SHAP (shap's default)
    random_draws: int = 3  # random rankings per text for the faithfulness baseline
    seed: int = 0


@dataclass
class Example:
    text: str
    label: int | None
    spans: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.spans = split_words(self.text)

    @property
    def words(self) -> list[str]:
        return [self.text[s:e] for s, e in self.spans]


@dataclass
class Explained:
    """One example through one model."""

    tokens: Tokenized
    proba: np.ndarray  # (C,)
    target: int
    seen: np.ndarray  # (W,) bool
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (W,), NaN where unseen
    token_scores: dict[str, np.ndarray] = field(default_factory=dict)  # gradient methods, (L,)
    completeness: dict | None = None  # IG: gap, f(x), f(baseline)
    faithfulness: dict[str, tuple[float, float]] = field(default_factory=dict)  # + "random"


class MLXScorer:
    """A BERT, RoBERTa or Llama classifier: ig, grad-input, occlusion, shap."""

    @staticmethod
    def methods(requested: list[str], where: Checkpoint) -> list[str]:
        if "linear" in requested:
            raise ConfigError(
                f"method linear is the TF-IDF baseline's; {where.path.parent} is a {where.cfg.model} run"
            )
        return requested

    @staticmethod
    def check(where: Checkpoint, baseline: str) -> None:
        """What can be refused before the model is built."""
        if baseline == "mask" and load_tokenizer(where.path).mask_token_id is None:
            raise ConfigError(
                f"{where.path.parent}: the model's tokenizer has no mask token; use --baseline pad"
            )

    def __init__(self, model, tokenizer, max_length: int, padding_side: str, options: Options):
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.max_length, self.padding_side = max_length, padding_side
        self.pad_id = pad_id_for(tokenizer)
        self.mask_token = tokenizer.mask_token or "..."  # shap's rule for its Text masker
        if options.baseline == "mask" and tokenizer.mask_token_id is None:
            raise ConfigError("this model's tokenizer has no mask token; use --baseline pad")
        self.baseline_id = tokenizer.mask_token_id if options.baseline == "mask" else self.pad_id
        self.graphs = Graphs(model)

    def prepare(self, examples: list[Example]) -> list[Tokenized]:
        return tokenize(self.tokenizer, [e.text for e in examples], self.max_length)

    def seen(self, example: Example, tok: Tokenized) -> np.ndarray:
        return seen_words(tok.token_word, len(example.spans))

    def batches(self, seqs: list[list[int]], multiple: int = 1):
        """Length-sorted padded batches; a width rounded up to ``multiple`` (fewer compiled shapes),
        never past the model's positions."""
        limit = self.model.args.max_positions
        for idx in batch_order([len(s) for s in seqs], self.options.batch_size, 0, 0, shuffle=False):
            ids, mask = collate([seqs[i] for i in idx], self.pad_id, self.padding_side, multiple, limit)
            yield idx, ids, mask

    def proba_ids(self, seqs: list[list[int]]) -> np.ndarray:
        """Class probabilities; batches of batch_size x max_length tokens (short texts, like the
        words an explanation keeps, go many to a pass)."""
        out = np.zeros((len(seqs), self.model.args.num_labels))
        budget, limit = self.options.batch_size * self.max_length, self.model.args.max_positions
        for idx in token_budget_batches([len(s) for s in seqs], budget, PAD_MULTIPLE):
            ids, mask = collate([seqs[i] for i in idx], self.pad_id, self.padding_side, PAD_MULTIPLE, limit)
            out[idx] = np.array(self.graphs.classes(mx.array(ids), mx.array(mask)))
        return out

    def proba_examples(self, examples: list[Example], toks: list[Tokenized]) -> np.ndarray:
        return self.proba_ids([t.ids for t in toks])

    def proba_texts(self, texts: list[str]) -> np.ndarray:
        return self.proba_ids(encode(self.tokenizer, texts, self.max_length))

    def proba_kept(self, kept: list[tuple[Example, Tokenized, np.ndarray]]) -> list[np.ndarray]:
        """Per (example, its tokens, keep masks (M, W)): (M, C) probabilities with only the kept words."""
        seqs = [keep_tokens(tok.ids, tok.token_word, k) for _, tok, masks in kept for k in masks]
        return split_rows(self.proba_ids(seqs), kept)

    def gradient(self, method: str, toks: list[Tokenized], targets: np.ndarray) -> list[tuple]:
        """Per example: (token scores (L,), IG completeness record or None)."""
        out = [None] * len(toks)
        o = self.options
        for idx, ids, mask in tqdm(list(self.batches([t.ids for t in toks])), desc=method, file=sys.stderr):
            keep, _ = collate(
                [t.special.astype(int).tolist() for t in (toks[i] for i in idx)], 1, self.padding_side
            )
            args = (self.model, mx.array(ids), mx.array(mask), mx.array(targets[idx]))
            if method == "ig":
                base = mx.array(baseline_ids(ids, keep.astype(bool), self.baseline_id))
                a = integrated_gradients(
                    *args, base, steps=o.steps, rule=o.rule, rows=o.rows, graphs=self.graphs
                )
            else:
                a = gradient_x_input(*args, graphs=self.graphs)
            tokens = a.tokens
            for row, i in enumerate(idx):
                record = None
                if method == "ig":
                    gap, fx, fb = a.completeness_gap[row], a.f_input[row], a.f_baseline[row]
                    record = {"gap": float(gap), "f_input": float(fx), "f_baseline": float(fb)}
                out[i] = (tokens[row][mask[row].astype(bool)], record)
        return out


class TfidfScorer:
    """The TF-IDF baseline: linear, occlusion, shap."""

    mask_token = "..."  # the vectorizer ignores it: a masked word is a dropped word

    @staticmethod
    def methods(requested: list[str], where: Checkpoint) -> list[str]:
        """The gradient methods are answered by the exact linear contributions."""
        return list(dict.fromkeys("linear" if m in GRADIENT_METHODS else m for m in requested))

    @staticmethod
    def check(where: Checkpoint, baseline: str) -> None:
        """Any baseline token: the vectorizer has none."""

    def __init__(self, pipeline):
        classes = list(pipeline.classes_)
        if classes != list(range(len(classes))):
            raise ConfigError(f"the TF-IDF model's classes are {classes}; expected 0..{len(classes) - 1}")
        self.pipeline = pipeline

    def prepare(self, examples: list[Example]) -> list[Tokenized]:
        return [tfidf.tokenized(self.pipeline, e.text, e.spans) for e in examples]

    def seen(self, example: Example, tok: Tokenized) -> np.ndarray:
        return np.ones(len(example.spans), dtype=bool)  # no truncation

    def proba_examples(self, examples: list[Example], toks: list[Tokenized]) -> np.ndarray:
        return self.proba_texts([e.text for e in examples])

    def proba_texts(self, texts: list[str]) -> np.ndarray:
        return self.pipeline.predict_proba(list(texts))

    def proba_kept(self, kept: list[tuple[Example, Tokenized, np.ndarray]]) -> list[np.ndarray]:
        texts = [join_words(e.text, e.spans, k) for e, _, masks in kept for k in masks]
        return split_rows(self.proba_texts(texts), kept)

    def linear(self, example: Example, target: int) -> np.ndarray:
        return tfidf.word_contributions(self.pipeline, example.text, example.spans, target)


def scorer_type(where: Checkpoint) -> type[MLXScorer] | type[TfidfScorer]:
    """The scorer a trained checkpoint answers with: the one place a TF-IDF run differs."""
    return TfidfScorer if where.tfidf else MLXScorer


def scorer_for(trained: Trained | TfidfTrained, options: Options, max_length: int | None = None):
    """A trained model (``load_trained``) as a scorer; ``max_length`` defaults to its run's."""
    if isinstance(trained, TfidfTrained):
        return TfidfScorer(trained.pipeline)
    cfg = trained.cfg
    max_length = max_length or cfg.max_length
    return MLXScorer(trained.model, trained.tokenizer, max_length, cfg.padding_side, options)


def explain_examples(
    scorer, examples: list[Example], methods: list[str], target: str, options: Options
) -> list[Explained]:
    """Every method's word scores and faithfulness for ``examples``; ``target`` is "pred" (the
    predicted class) or "gold" (the label)."""
    toks = scorer.prepare(examples)
    proba = scorer.proba_examples(examples, toks)
    if not np.isfinite(proba).all():
        raise WeightsError(
            "the model gives non-finite probabilities; its weights are broken, explain another checkpoint"
        )
    targets = proba.argmax(1) if target == "pred" else np.array([e.label for e in examples])
    out = [
        Explained(t, p, int(y), scorer.seen(e, t))
        for e, t, p, y in zip(examples, toks, proba, targets, strict=True)
    ]
    for method in methods:
        score(scorer, method, examples, out, options)
    faithfulness(scorer, examples, out, methods, options)
    return out


CHUNK = 64  # texts whose perturbed variants are scored together: batches fill, memory stays bounded


def kept_probabilities(scorer, examples: list[Example], out: list[Explained], masks_of, desc: str):
    """(explained, (M, C) probabilities under its keep masks ``masks_of(explained)``) per example,
    the variants of CHUNK texts at a time sorted by length into the same batches."""
    bar = tqdm(total=len(out), desc=desc, file=sys.stderr)
    for i in range(0, len(out), CHUNK):
        part = out[i : i + CHUNK]
        kept = [(e, o.tokens, masks_of(o)) for e, o in zip(examples[i : i + CHUNK], part, strict=True)]
        yield from zip(part, scorer.proba_kept(kept), strict=True)
        bar.update(len(part))
    bar.close()


def split_rows(p: np.ndarray, kept: list[tuple[Example, Tokenized, np.ndarray]]) -> list[np.ndarray]:
    """The rows of ``p`` back per example: as many as its keep masks."""
    return np.split(p, np.cumsum([len(masks) for *_, masks in kept])[:-1])


def faithfulness(scorer, examples: list[Example], out: list[Explained], methods: list[str], options: Options):
    """Each method's comprehensiveness and sufficiency AOPC, and random rankings' (their mean)."""
    rng = np.random.default_rng(options.seed)  # drawn example by example, in order

    def masks_of(o: Explained) -> np.ndarray:
        rankings = [o.scores[m] for m in methods] + random_rankings(o.seen, rng, options.random_draws)
        return aopc_masks(rankings, o.seen)

    for o, p in kept_probabilities(scorer, examples, out, masks_of, "faithfulness"):
        result = aopc_scores(p[:, o.target], o.proba[o.target])
        o.faithfulness = {m: tuple(map(float, r)) for m, r in zip(methods, result, strict=False)}
        o.faithfulness["random"] = tuple(map(float, result[len(methods) :].mean(0)))


def score(scorer, method: str, examples: list[Example], out: list[Explained], options: Options) -> None:
    """Fill ``method``'s word scores into ``out``."""
    if method in GRADIENT_METHODS:
        results = scorer.gradient(method, [o.tokens for o in out], np.array([o.target for o in out]))
        for e, o, (tokens, record) in zip(examples, out, results, strict=True):
            o.token_scores[method] = tokens
            o.scores[method] = word_scores(tokens, o.tokens.token_word, len(e.spans))
            o.completeness = record or o.completeness
        return
    if method == "occlusion":
        for o, p in kept_probabilities(scorer, examples, out, lambda o: occlusion_masks(o.seen), method):
            o.scores[method] = occlusion_scores(p[:, o.target], o.seen, o.proba[o.target])
        return
    if method == "shap":
        shap = Shap(scorer.proba_texts, scorer.mask_token, options.shap_evals, options.batch_size)
    for e, o in tqdm(list(zip(examples, out, strict=True)), desc=method, file=sys.stderr):
        if method == "linear":
            o.scores[method] = scorer.linear(e, o.target)
        else:
            o.scores[method] = shap_scores(shap, e, o)


def shap_scores(shap: Shap, e: Example, o: Explained) -> np.ndarray:
    """SHAP over the words the model sees (the text up to the last seen word); NaN elsewhere."""
    n = int(np.flatnonzero(o.seen).max()) + 1
    values, _ = shap(e.text[: e.spans[n - 1][1]], o.target)
    assert len(values) == n, (len(values), n)  # the masker splits the prefix into the same words
    scores = np.full(len(e.spans), np.nan)
    scores[:n] = values
    scores[~o.seen] = np.nan
    return scores


@dataclass
class Column:
    """One model or checkpoint explained on the examples: a column of the report."""

    run: str  # run directory name
    checkpoint: str  # best, last, iter-N
    step: int
    methods: list[str]
    explained: list[Explained]

    @property
    def label(self) -> str:
        return f"{self.run}/{self.checkpoint}"
