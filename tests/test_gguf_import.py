"""GGUF in without a second rounding: llama.cpp's Q4_0/Q4_1/Q8_0 blocks kept as MLX affine groups
of 32 (`convert.py model.gguf -q`), against gguf's own dequantizer and transformers' GGUF loader."""

import gguf
import mlx.core as mx
import numpy as np
import pytest
import transformers
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from gguf.quants import quantize as quantize_blocks
from mlx.utils import tree_flatten

import convert as convert_cli
from hf_fixtures import SENTENCES
from mlx_models import load_model, load_tokenizer
from mlx_models.batching import collate
from mlx_models.export.gguf_file import add_metadata, add_tokenizer, tensors
from mlx_models.interop.conversion import convert
from mlx_models.interop.gguf_blocks import to_affine
from mlx_models.interop.loading import read_config
from mlx_models.models.quant import dequantized_weights, quantize
from mlx_models.parity.reference import torch_forward
from mlx_models.train.trained import load_trained


@pytest.mark.parametrize("qtype,bits", [(Q.Q4_0, 4), (Q.Q4_1, 4), (Q.Q8_0, 8)])
def test_blocks_become_affine_groups_bit_exactly(qtype, bits):
    rng = np.random.default_rng(0)
    w = (0.05 * rng.standard_normal((48, 96)) + 0.01).astype(np.float32)
    data = quantize_blocks(w, qtype)
    wq, scales, biases = (mx.array(a) for a in to_affine(data, qtype))
    got = np.array(mx.dequantize(wq, scales, biases, 32, bits))
    want = dequantize(data, qtype)
    np.testing.assert_array_equal(got, want)
    assert np.abs(want - w).max() > 1e-4  # the blocks really are rounded: nothing trivial passed
    ref = mx.quantize(mx.array(w), 32, bits)  # the layout MLX itself writes
    assert [(a.shape, a.dtype) for a in (wq, scales, biases)] == [(a.shape, a.dtype) for a in ref]


def test_kept_blocks_equal_the_dequantized_file_bit_for_bit(smollm2_q4, smollm2):
    q = read_config(smollm2_q4)["quantization"]
    assert q["model.embed_tokens"] == {"group_size": 32, "bits": 8, "mode": "affine"}  # Q8_0
    layers = {k: v for k, v in q.items() if k.startswith("model.layers.")}
    assert len(layers) == 30 * 7 and all(
        v == {"group_size": 32, "bits": 4, "mode": "affine"} for v in layers.values()
    )
    kept = load_model(smollm2_q4)
    assert kept.model.layers[0].mlp.down_proj.group_size == 32
    dense = dict(tree_flatten(load_model(smollm2).parameters()))  # gguf.dequantize, in fp32
    kept = dequantized_weights(kept)
    assert kept.keys() == dense.keys()
    different = [k for k in dense if not mx.array_equal(kept[k], dense[k]).item()]
    assert not different, different[:5]


def logits(model, ids, mask) -> np.ndarray:
    return np.array(model(mx.array(ids), attention_mask=mx.array(mask)))


def test_kept_vs_requantized_against_transformers_gguf_loader(smollm2_q4, smollm2, smollm2_torch):
    """max |Δlogit| against transformers' loader: kept blocks ~2e-4 (fp32 noise, as the fp32 path);
    re-quantized at group 64 (what `convert.py -q --requantize` writes: the dequantized fp32
    weights through mx.quantize) ~15, with half the argmaxes changed (benchmarks/gguf_import.py)."""
    tok = load_tokenizer(smollm2_q4)
    seqs = [tok(s, add_special_tokens=False)["input_ids"] for s in SENTENCES]
    ids, mask = collate(seqs, tok.eos_token_id, "left")
    real = mask.astype(bool)
    want = torch_forward(smollm2_torch, ids, mask, "lm")[real]
    kept = logits(load_model(smollm2_q4), ids, mask)[real]
    requantized = load_model(smollm2)
    quantize(requantized, 4, 64)
    requant = logits(requantized, ids, mask)[real]
    d_kept, d_requant = np.abs(kept - want).max(), np.abs(requant - want).max()
    assert d_kept <= 1e-3, d_kept
    assert (kept.argmax(-1) == want.argmax(-1)).all()
    assert d_requant > 100 * d_kept, (d_kept, d_requant)


# A tiny Llama as a GGUF file with all three block types: Q8_0 embedding, Q4_0 attention, Q4_1 MLP.
QTYPES = {"token_embd": Q.Q8_0, "attn_": Q.Q4_0, "ffn_": Q.Q4_1}


@pytest.fixture(scope="module")
def tiny_blocks_gguf(tiny, tmp_path_factory):
    _, mlx_dir = tiny("llama", "lm")
    t = load_trained(mlx_dir)
    path = tmp_path_factory.mktemp("gguf") / "tiny-q4.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    add_metadata(writer, t.model.args, "float32", "tiny")
    add_tokenizer(writer, t.tokenizer, t.model.args.vocab_size)
    for name, a in tensors(t, "float32").items():
        qtype = next((q for k, q in QTYPES.items() if name.startswith(k) or f".{k}" in name), None)
        if qtype is None or a.ndim != 2:
            writer.add_tensor(name, a)
        else:
            writer.add_tensor(name, quantize_blocks(a, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_tiny_gguf_blocks_kept_or_requantized(tiny_blocks_gguf, tmp_path):
    """convert.py -q keeps every block type bit-exactly (group 32, 4 or 8 bits per tensor) and
    matches transformers' GGUF loader; --requantize gives group 64 and a second rounding."""
    kept, requantized = tmp_path / "kept", tmp_path / "requantized"
    common = [str(tiny_blocks_gguf), "--dtype", "float32", "-q"]
    assert convert_cli.main([*common, "--out", str(kept)]) == 0
    assert convert_cli.main([*common, "--out", str(requantized), "--requantize"]) == 0
    q = read_config(kept)["quantization"]
    assert q["model.embed_tokens"]["bits"] == 8 and q["model.layers.1.mlp.up_proj"] == {
        "group_size": 32,
        "bits": 4,
        "mode": "affine",
    }
    assert read_config(requantized)["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    dense = dict(
        tree_flatten(
            load_model(
                convert(str(tiny_blocks_gguf), tmp_path / "fp32", dtype="float32", progress=False)
            ).parameters()
        )
    )
    weights = dequantized_weights(load_model(kept))
    assert all(mx.array_equal(weights[k], dense[k]).item() for k in dense)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_blocks_gguf.parent, gguf_file=tiny_blocks_gguf.name
    )
    tok = load_tokenizer(kept)
    ids, mask = collate([tok(s)["input_ids"] for s in SENTENCES], tok.eos_token_id, "right")
    real = mask.astype(bool)
    want = torch_forward(ref.eval(), ids, mask, "lm")[real]
    d_kept = np.abs(logits(load_model(kept), ids, mask)[real] - want).max()
    d_requant = np.abs(logits(load_model(requantized), ids, mask)[real] - want).max()
    assert d_kept <= 1e-4 and d_requant > 10 * d_kept, (d_kept, d_requant)


def test_mlx_lm_reads_the_per_layer_quantization(smollm2_q4):
    import mlx_lm

    ours = load_model(smollm2_q4)
    theirs, _ = mlx_lm.load(str(smollm2_q4))
    assert theirs.model.embed_tokens.bits == 8 and theirs.model.layers[3].self_attn.k_proj.group_size == 32
    ids = mx.array([[1, 504, 3458, 282, 4649, 314]])
    np.testing.assert_allclose(np.array(ours(ids)), np.array(theirs(ids)), atol=1e-4, rtol=1e-4)
