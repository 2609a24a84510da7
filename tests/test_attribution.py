"""Gradient attributions against their reference: captum's LayerIntegratedGradients and
LayerGradientXActivation on the transformers model with the same weights (word-embedding layer,
same baseline, steps and rule), on padded batches of tiny BERT/RoBERTa/Llama and the real MiniLM.
"""

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from captum import attr as captum

from hf_fixtures import SENTENCES, padded_batch
from mlx_models import load_model, load_tokenizer
from mlx_models.explain.gradients import (
    baseline_ids,
    embed,
    gradient_x_input,
    integrated_gradients,
    quadrature,
)
from mlx_models.interop.loading import read_config
from mlx_models.parity.reference import torch_model

STEPS = 50
CAPTUM_RULE = {"gauss-legendre": "gausslegendre", "trapezoid": "riemann_trapezoid"}
# captum's riemann_trapezoid steps are 1/n (weights summing to 1 - 1/n) where the trapezoid rule
# on linspace(0, 1, n) has 1/(n-1): its attributions are exactly (n-1)/n of the rule's.
CAPTUM_SCALE = {"gauss-legendre": 1.0, "trapezoid": STEPS / (STEPS - 1)}
TARGETS = np.array([0, 1, 2, 1])  # tiny classifiers have 3 labels


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def inputs(tok, side: str = "right", texts=SENTENCES):
    batch = padded_batch(tok, texts, side)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask.min() == 0  # really padded
    keep = np.isin(ids, tok.all_special_ids) | (mask == 0)
    return ids, mask, baseline_ids(ids, keep, pad_id(tok))


def probabilities(hf):
    return lambda ids, mask: torch.softmax(hf(input_ids=ids, attention_mask=mask).logits, dim=-1)


def captum_ig(hf, ids, mask, base, target, rule: str) -> np.ndarray:
    t = lambda a: torch.from_numpy(np.asarray(a).astype(np.int64))  # noqa: E731
    lig = captum.LayerIntegratedGradients(probabilities(hf), hf.get_input_embeddings())
    attr = lig.attribute(
        t(ids), baselines=t(base), target=t(target), additional_forward_args=(t(mask),), n_steps=STEPS,
        method=CAPTUM_RULE[rule],
    )  # fmt: skip
    return attr.detach().numpy() * CAPTUM_SCALE[rule]


def captum_grad_x_input(hf, ids, mask, target) -> np.ndarray:
    t = lambda a: torch.from_numpy(np.asarray(a).astype(np.int64))  # noqa: E731
    layer = captum.LayerGradientXActivation(probabilities(hf), hf.get_input_embeddings())
    return layer.attribute(t(ids), target=t(target), additional_forward_args=(t(mask),)).detach().numpy()


CASES = [
    ("bert", "right"),
    ("roberta", "right"),
    ("llama", "right"),
    ("llama", "left"),
]


@pytest.mark.parametrize("rule", list(CAPTUM_RULE))
@pytest.mark.parametrize("model_type,side", CASES)
def test_integrated_gradients_match_captum(tiny, model_type, side, rule):
    hf_dir, mlx_dir = tiny(model_type, "classify")
    model, tok = load_model(mlx_dir), load_tokenizer(mlx_dir)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, attn_implementation="eager")
    ids, mask, base = inputs(tok, side)
    ours = integrated_gradients(
        model,
        mx.array(ids),
        mx.array(mask),
        mx.array(TARGETS),
        mx.array(base),
        steps=STEPS,
        rule=rule,
        rows=48,
    )  # rows=48: several passes of a batch, one of them partial
    ref = captum_ig(hf.eval(), ids, mask, base, TARGETS, rule)
    assert np.abs(ref).max() > 1e-6  # attributions that are not all zero
    assert rel_err(ours.per_dim, ref) <= 1e-4
    assert rel_err(ours.tokens, ref.sum(-1)) <= 1e-4
    assert (ours.tokens[mask == 0] == 0).all()  # pads equal their baseline: nothing to attribute
    # f(x) and f(b) are the path's ends: the gap is what the quadrature leaves.
    assert (ours.completeness_gap <= 1e-3 * np.abs(ours.f_input - ours.f_baseline) + 1e-7).all()


@pytest.mark.parametrize("model_type,side", CASES)
def test_gradient_x_input_matches_captum(tiny, model_type, side):
    hf_dir, mlx_dir = tiny(model_type, "classify")
    model, tok = load_model(mlx_dir), load_tokenizer(mlx_dir)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, attn_implementation="eager")
    ids, mask, _ = inputs(tok, side)
    ours = gradient_x_input(model, mx.array(ids), mx.array(mask), mx.array(TARGETS))
    ref = captum_grad_x_input(hf.eval(), ids, mask, TARGETS)
    assert rel_err(ours.per_dim, ref) <= 1e-4
    probs = probabilities(hf)(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)))
    expected = probs.detach().numpy()[np.arange(len(TARGETS)), TARGETS]
    np.testing.assert_allclose(ours.f_input, expected, atol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "llama"])
def test_inputs_embeds_replace_the_word_embeddings(tiny, model_type):
    """The same as the ids' own embeddings; and any embeddings give transformers' hidden states
    (base model, right padding: RoBERTa's positions then agree at the real tokens)."""
    hf_dir, mlx_dir = tiny(model_type, "base")
    model, tok = load_model(mlx_dir), load_tokenizer(mlx_dir)
    ids, mask, _ = inputs(tok)
    out = lambda **kw: model(mx.array(ids), attention_mask=mx.array(mask), **kw)  # noqa: E731
    first = lambda o: np.array(o[0] if isinstance(o, tuple) else o)  # noqa: E731
    np.testing.assert_array_equal(first(out(inputs_embeds=embed(model, mx.array(ids)))), first(out()))
    rng = np.random.default_rng(0)
    e = rng.normal(0, 0.5, (*ids.shape, model.args.hidden_size)).astype(np.float32)
    hf = transformers.AutoModel.from_pretrained(hf_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(inputs_embeds=torch.from_numpy(e), attention_mask=torch.from_numpy(mask.astype(np.int64)))
    real = mask.astype(bool)
    ours = first(out(inputs_embeds=mx.array(e)))
    assert np.abs(ours[real] - ref.last_hidden_state.numpy()[real]).max() <= 1e-4


def test_minilm_matches_captum_and_is_complete(minilm):
    """The real MiniLM (a seeded classifier head, scaled so the classes are far from 50/50):
    captum parity at 50 Gauss-Legendre steps, and the completeness gap below 1% of |f(x) - f(b)|."""
    mx.random.seed(0)
    model, tok = load_model(minilm, "classify"), load_tokenizer(minilm)
    model.classifier.weight = 50 * model.classifier.weight
    texts = [
        "I loved this movie: the acting was superb and the story kept me on the edge of my seat.",
        "Terrible. A waste of two hours.",
        "The plot made no sense, and the ending felt rushed, but the music was wonderful.",
        "A man is eating a piece of bread while reading the newspaper in the park.",
    ]
    ids, mask, base = inputs(tok, texts=texts)
    target = np.array([0, 1, 0, 1])
    ours = integrated_gradients(model, mx.array(ids), mx.array(mask), mx.array(target), mx.array(base))
    delta = np.abs(ours.f_input - ours.f_baseline)
    assert delta.min() > 0.02, delta  # a real change of the probability to explain
    assert (ours.completeness_gap < 1e-2 * delta).all(), ours.completeness_gap / delta
    hf = torch_model(model, read_config(minilm), "classify", device="cpu")
    ref = captum_ig(hf, ids, mask, base, target, "gauss-legendre")
    assert rel_err(ours.per_dim, ref) <= 1e-4


@pytest.mark.parametrize("steps", [2, 5, 50])
def test_quadrature_rules(steps):
    for rule in ("gauss-legendre", "trapezoid"):
        alphas, weights = quadrature(steps, rule)
        assert weights.sum() == pytest.approx(1.0) and (0 <= alphas).all() and (alphas <= 1).all()
    # Gauss-Legendre with n points integrates polynomials of degree 2n - 1 exactly; trapezoid, lines.
    a, w = quadrature(steps, "gauss-legendre")
    assert (w * a ** (2 * steps - 1)).sum() == pytest.approx(1 / (2 * steps))
    a, w = quadrature(steps, "trapezoid")
    assert (w * (3 * a + 1)).sum() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="unknown quadrature rule"):
        quadrature(steps, "simpson")


@pytest.mark.parametrize("model_type", ["bert", "roberta", "llama"])
def test_captum_convergence_delta_runs_the_baseline_ids(tiny, model_type):
    """captum's convergence delta takes f(baseline) from the baseline's token ids, not from the end
    of the path it integrated (baseline word embeddings, input ids): the same for BERT, but RoBERTa's
    positions come from the ids and Llama's classifier pools the last non-pad token by id."""
    hf_dir, mlx_dir = tiny(model_type, "classify")
    model, tok = load_model(mlx_dir), load_tokenizer(mlx_dir)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, attn_implementation="eager")
    ids, mask, base = inputs(tok)
    ours = integrated_gradients(model, mx.array(ids), mx.array(mask), mx.array(TARGETS), mx.array(base))
    t = lambda a: torch.from_numpy(np.asarray(a).astype(np.int64))  # noqa: E731
    lig = captum.LayerIntegratedGradients(probabilities(hf.eval()), hf.get_input_embeddings())
    _, delta = lig.attribute(
        t(ids), baselines=t(base), target=t(TARGETS), additional_forward_args=(t(mask),),
        n_steps=STEPS, return_convergence_delta=True,
    )  # fmt: skip
    by_ids = probabilities(hf)(t(base), t(mask)).detach().numpy()[np.arange(4), TARGETS]
    np.testing.assert_allclose(delta.numpy(), by_ids - ours.f_baseline, atol=1e-6)
    change = np.abs(ours.f_input - ours.f_baseline).max()
    if model_type == "bert":
        assert np.abs(delta.numpy()).max() <= 1e-3 * change + 1e-7
    else:
        assert np.abs(delta.numpy()).max() > 0.3 * change  # as large as what is being explained
