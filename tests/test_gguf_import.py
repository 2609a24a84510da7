"""GGUF in without a second rounding: llama.cpp's Q4_0/Q4_1/Q8_0 blocks kept as MLX affine groups
of 32 (`convert.py model.gguf -q`), against gguf's own dequantizer and transformers' GGUF loader."""

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from mlx.utils import tree_flatten

import convert as convert_cli
from hf_fixtures import SENTENCES
from mlx_models import load_model, load_tokenizer
from mlx_models.batching import collate
from mlx_models.conversion import convert
from mlx_models.gguf_blocks import to_affine
from mlx_models.loading import read_config
from mlx_models.quant import dequantized_weights
from mlx_models.reference import torch_forward


@pytest.mark.parametrize("qtype,bits", [(Q.Q4_0, 4), (Q.Q4_1, 4), (Q.Q8_0, 8)])
def test_blocks_become_affine_groups_bit_exactly(qtype, bits):
    rng = np.random.default_rng(0)
    w = (0.05 * rng.standard_normal((48, 96)) + 0.01).astype(np.float32)
    data = quantize(w, qtype)
    wq, scales, biases = (mx.array(a) for a in to_affine(data, qtype))
    got = np.array(mx.dequantize(wq, scales, biases, 32, bits))
    want = dequantize(data, qtype)
    np.testing.assert_array_equal(got, want)
    assert np.abs(want - w).max() > 1e-4  # the blocks really are rounded: nothing trivial passed
    ref = mx.quantize(mx.array(w), 32, bits)  # the layout MLX itself writes
    assert [(a.shape, a.dtype) for a in (wq, scales, biases)] == [(a.shape, a.dtype) for a in ref]


@pytest.fixture(scope="module")
def smollm2_kept(tmp_path_factory, smollm2_gguf):
    """SmolLM2 (Q4_1 linears, Q8_0 embedding) converted with -q: the blocks kept."""
    out = tmp_path_factory.mktemp("smollm2-kept") / "mlx"
    return convert(str(smollm2_gguf), out, dtype="float32", q_bits=4, progress=False)


def test_kept_blocks_equal_the_dequantized_file_bit_for_bit(smollm2_kept, smollm2):
    q = read_config(smollm2_kept)["quantization"]
    assert q["model.embed_tokens"] == {"group_size": 32, "bits": 8, "mode": "affine"}  # Q8_0
    layers = {k: v for k, v in q.items() if k.startswith("model.layers.")}
    assert len(layers) == 30 * 7 and all(
        v == {"group_size": 32, "bits": 4, "mode": "affine"} for v in layers.values()
    )
    kept = load_model(smollm2_kept)
    assert kept.model.layers[0].mlp.down_proj.group_size == 32
    dense = dict(tree_flatten(load_model(smollm2).parameters()))  # gguf.dequantize, in fp32
    kept = dequantized_weights(kept)
    assert kept.keys() == dense.keys()
    different = [k for k in dense if not mx.array_equal(kept[k], dense[k]).item()]
    assert not different, different[:5]


def logits(model, ids, mask) -> np.ndarray:
    return np.array(model(mx.array(ids), attention_mask=mx.array(mask)))


def test_kept_vs_requantized_against_transformers_gguf_loader(
    smollm2_kept, smollm2_gguf, smollm2_torch, tmp_path
):
    """max |Δlogit| against transformers' loader: kept blocks ~2e-4 (fp32 noise, as the fp32 path),
    re-quantized at group 64 ~15 with half the argmaxes changed (benchmarks/gguf_import.py)."""
    requantized = tmp_path / "requantized"
    argv = [str(smollm2_gguf), "--out", str(requantized), "--dtype", "float32", "-q", "--requantize"]
    assert convert_cli.main(argv) == 0
    assert read_config(requantized)["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    tok = load_tokenizer(smollm2_kept)
    seqs = [tok(s, add_special_tokens=False)["input_ids"] for s in SENTENCES]
    ids, mask = collate(seqs, tok.eos_token_id, "left")
    real = mask.astype(bool)
    want = torch_forward(smollm2_torch, ids, mask, "lm")[real]
    kept = logits(load_model(smollm2_kept), ids, mask)[real]
    requant = logits(load_model(requantized), ids, mask)[real]
    d_kept, d_requant = np.abs(kept - want).max(), np.abs(requant - want).max()
    assert d_kept <= 1e-3, d_kept
    assert (kept.argmax(-1) == want.argmax(-1)).all()
    assert d_requant > 100 * d_kept, (d_kept, d_requant)


def test_mlx_lm_reads_the_per_layer_quantization(smollm2_kept):
    import mlx_lm

    ours = load_model(smollm2_kept)
    theirs, _ = mlx_lm.load(str(smollm2_kept))
    assert theirs.model.embed_tokens.bits == 8 and theirs.model.layers[3].self_attn.k_proj.group_size == 32
    ids = mx.array([[1, 504, 3458, 282, 4649, 314]])
    np.testing.assert_allclose(np.array(ours(ids)), np.array(theirs(ids)), atol=1e-4, rtol=1e-4)
