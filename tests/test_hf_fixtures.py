"""The offline HF fixtures behave: models reload exactly, tokenizers round-trip, real quirks are kept."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from hf_fixtures import SENTENCES, build_hf_model, make_hf_model, make_tokenizer, padded_batch

AUTO = {
    "base": transformers.AutoModel,
    "mlm": transformers.AutoModelForMaskedLM,
    "classify": transformers.AutoModelForSequenceClassification,
    "lm": transformers.AutoModelForCausalLM,
}
COMBOS = [(m, h) for m in ("bert", "roberta") for h in ("base", "mlm", "classify")] + [
    ("llama", h) for h in ("base", "lm", "classify")
]


def _outputs(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v).long() for k, v in batch.items()})
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("model_type,head", COMBOS)
def test_model_reloads_with_identical_outputs(tmp_path: Path, model_type: str, head: str) -> None:
    out_dir = make_hf_model(tmp_path, model_type, head, seed=3)
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    model, info = AUTO[head].from_pretrained(out_dir, attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert type(model).__name__.lower().startswith(model_type)

    expected = build_hf_model(model_type, head, tok, seed=3)
    for side in ("right", "left"):
        batch = padded_batch(tok, SENTENCES, padding_side=side)
        got = _outputs(model, batch)
        assert torch.isfinite(got).all()
        assert torch.equal(got, _outputs(expected, batch))
    if head == "classify":
        assert got.shape == (len(SENTENCES), 3)


@pytest.mark.parametrize("model_type,head", [("bert", "mlm"), ("roberta", "classify"), ("llama", "lm")])
def test_every_parameter_is_rerandomized(model_type: str, head: str, tmp_path: Path) -> None:
    tok = make_tokenizer(model_type, tmp_path)
    model = build_hf_model(model_type, head, tok)
    biases, norms = [], []
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert (p != 0).all(), name
            biases.append(p.flatten())
        elif p.ndim == 1:  # norm weights
            assert (p != 1).all(), name
            norms.append(p.flatten())
        else:
            assert 0.01 < p.std() < 0.03, name
    if biases:
        assert 0.08 < torch.cat(biases).std() < 0.12
    assert 0.08 < torch.cat(norms).std() < 0.12 and abs(torch.cat(norms).mean() - 1) < 0.02


@pytest.mark.parametrize("model_type,head", [("bert", "mlm"), ("roberta", "base"), ("llama", "lm")])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, model_type: str, head: str) -> None:
    def files(name: str, seed: int) -> tuple[bytes, bytes]:
        out_dir = make_hf_model(tmp_path / name, model_type, head, seed=seed)
        return (out_dir / "model.safetensors").read_bytes(), (out_dir / "tokenizer.json").read_bytes()

    (weights_a, tok_a), (weights_b, tok_b), (weights_c, tok_c) = files("a", 0), files("b", 0), files("c", 1)
    assert weights_a == weights_b and tok_a == tok_b
    assert weights_a != weights_c and tok_a == tok_c  # the seed changes the weights, never the tokenizer


@pytest.mark.parametrize("kind", ["bert", "roberta", "llama"])
def test_tokenizer_round_trips(tmp_path: Path, kind: str) -> None:
    tok = make_tokenizer(kind, tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert 300 <= len(loaded) <= 500
    for text in SENTENCES:
        ids = loaded(text)["input_ids"]
        assert ids == tok(text)["input_ids"]
        decoded = loaded.decode(ids, skip_special_tokens=True)
        assert decoded == (text.lower() if kind == "bert" else text)
        assert ids[0] == (loaded.cls_token_id if kind == "bert" else loaded.bos_token_id)


def test_bert_tokenizer_specials_and_token_types(tmp_path: Path) -> None:
    make_tokenizer("bert", tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    enc = tok(["a b", "longer text here"], padding=True)
    assert set(enc) == {"input_ids", "token_type_ids", "attention_mask"}
    assert tok.pad_token_id == 0
    assert enc["input_ids"][0][0] == tok.cls_token_id and tok.sep_token_id in enc["input_ids"][0]
    assert enc["input_ids"][0][-1] == 0 and enc["attention_mask"][0][-1] == 0


def test_roberta_tokenizer_ids(tmp_path: Path) -> None:
    make_tokenizer("roberta", tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tok("Hello world")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert "<mask>" in tok.convert_ids_to_tokens(tok("Hello <mask> world")["input_ids"])


def test_roberta_config_quirks(tmp_path: Path) -> None:
    config = transformers.AutoConfig.from_pretrained(make_hf_model(tmp_path, "roberta", "base"))
    assert (config.pad_token_id, config.type_vocab_size, config.layer_norm_eps) == (1, 1, 1e-5)
    assert config.max_position_embeddings == 64 + 2


def test_llama_tokenizer_has_no_pad_and_prepends_bos(tmp_path: Path) -> None:
    make_tokenizer("llama", tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok.pad_token is None and tok.pad_token_id is None
    ids = tok("Hello world")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids


def test_llama_tied_and_overrides(tmp_path: Path) -> None:
    rope = {"rope_type": "linear", "factor": 2.0}
    out_dir = make_hf_model(tmp_path, "llama", "lm", tie_word_embeddings=True, rope_scaling=rope)
    model = transformers.AutoModelForCausalLM.from_pretrained(out_dir)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert model.config.num_key_value_heads == 2

    untied = build_hf_model("llama", "lm", make_tokenizer("llama", tmp_path / "tok"))
    assert not torch.equal(untied.lm_head.weight, untied.model.embed_tokens.weight)


def test_llama_classify_pads_with_eos(tmp_path: Path) -> None:
    config = transformers.AutoConfig.from_pretrained(make_hf_model(tmp_path, "llama", "classify"))
    assert config.pad_token_id == config.eos_token_id and config.num_labels == 3


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch(tmp_path: Path, side: str) -> None:
    tok = make_tokenizer("llama", tmp_path)
    batch = padded_batch(tok, SENTENCES, padding_side=side)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert all(a.dtype == np.int32 for a in batch.values())
    lengths = [len(tok(s)["input_ids"]) for s in SENTENCES]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert all(b - a >= 5 for a, b in itertools.pairwise(lengths))  # clearly different lengths
    short = 0 if side == "right" else -1
    assert batch["attention_mask"][0, short] == 1 and batch["attention_mask"][0, -1 - short] == 0
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.eos_token_id).all()
    custom = padded_batch(tok, SENTENCES, padding_side=side, pad_id=7)["input_ids"]
    assert (custom[batch["attention_mask"] == 0] == 7).all()
