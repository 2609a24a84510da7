"""MLX vs transformers + PyTorch, at the non-pad positions of padded batches.

Tiny random HF models go through the real convert path; the reference is the original HF
checkpoint loaded by transformers, so conversion bugs show up as well as model bugs.
"""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers

from hf_fixtures import SENTENCES, padded_batch
from mlx_models import load_model, load_tokenizer
from mlx_models.batching import collate
from mlx_models.interop.conversion import convert
from mlx_models.models import MODULES, family, tasks_of
from mlx_models.parity.check import DEFAULT_TOL, run_parity
from mlx_models.parity.check import main as parity_main
from mlx_models.parity.reference import torch_forward, torch_model

HF_CLASSES = {
    "base": transformers.AutoModel,
    "mlm": transformers.AutoModelForMaskedLM,
    "classify": transformers.AutoModelForSequenceClassification,
    "lm": transformers.AutoModelForCausalLM,
}
# Bounds of max |Δ| against fp32 transformers, same weights (tiny models, outputs of order 1).
ATOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1.5e-1}
CASES = [
    ("bert", "base", {}),
    ("bert", "mlm", {}),
    ("bert", "classify", {}),
    ("roberta", "base", {}),
    ("roberta", "mlm", {}),
    ("roberta", "classify", {}),
    ("llama", "base", {}),
    ("llama", "lm", {}),
    ("llama", "lm", {"tie_word_embeddings": True}),
    ("llama", "lm", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    (
        "llama",
        "lm",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            }
        },
    ),
    ("llama", "classify", {}),
]
EVERY_HEAD = [(model_type, head) for model_type in MODULES for head in tasks_of(model_type)]


def mlx_forward(model, batch) -> np.ndarray:
    out = model(mx.array(batch["input_ids"]), attention_mask=mx.array(batch["attention_mask"]))
    out = out[0] if isinstance(out, tuple) else out
    return np.array(out.astype(mx.float32))


def hf_forward(hf_dir, head, batch) -> np.ndarray:
    model = HF_CLASSES[head].from_pretrained(hf_dir, attn_implementation="eager").eval()
    return torch_forward(model, batch["input_ids"], batch["attention_mask"], head)


def max_diff(a, b, batch, head) -> float:
    if head != "classify":
        m = batch["attention_mask"].astype(bool)
        a, b = a[m], b[m]
    return float(np.abs(a - b).max())


def paddings(model_type):
    return ("right", "left") if family(model_type).causal else ("right",)


@pytest.mark.parametrize("model_type,head,overrides", CASES, ids=lambda c: str(c) if c else "")
def test_tiny_fp32_parity(tiny, model_type, head, overrides):
    hf_dir, mlx_dir = tiny(model_type, head, **overrides)
    tok = load_tokenizer(mlx_dir)
    model = load_model(mlx_dir)
    for side in paddings(model_type):
        batch = padded_batch(tok, SENTENCES, side)
        assert batch["attention_mask"].min() == 0  # really padded
        d = max_diff(mlx_forward(model, batch), hf_forward(hf_dir, head, batch), batch, head)
        assert d <= ATOL["float32"], f"{side} padding: max|Δ| {d:.2e}"


def test_llama_left_and_right_padding_agree(tiny):
    """Pooling by the mask: a classification does not depend on the padding side."""
    _, mlx_dir = tiny("llama", "classify")
    model, tok = load_model(mlx_dir), load_tokenizer(mlx_dir)
    right = mlx_forward(model, padded_batch(tok, SENTENCES, "right"))
    left = mlx_forward(model, padded_batch(tok, SENTENCES, "left"))
    alone = np.concatenate([mlx_forward(model, padded_batch(tok, [s])) for s in SENTENCES])
    np.testing.assert_allclose(right, alone, atol=1e-5)
    np.testing.assert_allclose(left, alone, atol=1e-5)


def test_transformers4_rope_keys(tiny, tmp_path):
    """config.json written by transformers 4 (rope_theta + rope_scaling) reads the same as the
    transformers-5 rope_parameters."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    rope["original_max_position_embeddings"] = 32
    _, mlx_dir = tiny("llama", "lm", rope_theta=5e5, rope_scaling=rope)
    config = json.loads((mlx_dir / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "llama3"  # what transformers 5 wrote
    v4 = {k: v for k, v in config.items() if k != "rope_parameters"}
    v4["rope_theta"] = config["rope_parameters"]["rope_theta"]
    v4["rope_scaling"] = {k: v for k, v in config["rope_parameters"].items() if k != "rope_theta"}
    old = tmp_path / "v4"
    old.mkdir()
    for f in mlx_dir.iterdir():
        (old / f.name).symlink_to(f)
    (old / "config.json").unlink()
    (old / "config.json").write_text(json.dumps(v4))
    batch = padded_batch(load_tokenizer(mlx_dir), SENTENCES)
    a, b = mlx_forward(load_model(mlx_dir), batch), mlx_forward(load_model(old), batch)
    np.testing.assert_array_equal(a, b)
    assert load_model(old).args.rope_theta == 5e5


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("model_type,head", EVERY_HEAD)
def test_tiny_low_precision_parity(tiny, model_type, head, dtype):
    """MLX in fp16/bf16 against fp32 transformers carrying the same (rounded) weights."""
    _, mlx_dir = tiny(model_type, head)
    model = load_model(mlx_dir)
    model.set_dtype(getattr(mx, dtype))
    ref = torch_model(model, json.loads((mlx_dir / "config.json").read_text()), head)
    for side in paddings(model_type):
        batch = padded_batch(load_tokenizer(mlx_dir), SENTENCES, side)
        got = mlx_forward(model, batch)
        want = torch_forward(ref, batch["input_ids"], batch["attention_mask"], head)
        d = max_diff(got, want, batch, head)
        assert d <= ATOL[dtype], f"{side} padding: max|Δ| {d:.2e}"
        assert d > 0  # it really ran in low precision


@pytest.mark.parametrize("model_type,head", EVERY_HEAD)
def test_tiny_4bit_parity(tiny, model_type, head):
    """4-bit (group 64) against PyTorch carrying the same dequantized weights."""
    _, mlx_dir = tiny(model_type, head, q_bits=4)
    config = json.loads((mlx_dir / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    model = load_model(mlx_dir)
    ref = torch_model(model, config, head)
    for side in paddings(model_type):
        batch = padded_batch(load_tokenizer(mlx_dir), SENTENCES, side)
        d = max_diff(
            mlx_forward(model, batch),
            torch_forward(ref, batch["input_ids"], batch["attention_mask"], head),
            batch,
            head,
        )
        assert d <= 1e-3, f"{side}: max|Δ| {d:.2e}"


def test_minilm_hidden_states(minilm, minilm_hf):
    """The real all-MiniLM-L6-v2: hidden states and the sentence-similarity sanity value."""
    tok = load_tokenizer(minilm)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    got = mlx_forward(load_model(minilm), batch)
    want = hf_forward(minilm_hf, "base", batch)
    assert max_diff(got, want, batch, "base") <= 1e-4  # measured 2.9e-6

    enc = tok(
        ["A man is eating food.", "A man is eating a piece of bread."], padding=True, return_tensors="np"
    )
    h = mlx_forward(
        load_model(minilm), {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    )
    m = enc["attention_mask"][..., None]
    e = (h * m).sum(1) / m.sum(1)
    cos = e[0] @ e[1] / np.linalg.norm(e[0]) / np.linalg.norm(e[1])
    assert abs(cos - 0.755) < 0.005


@pytest.mark.parametrize(
    "checkpoint,task,dtype",
    [
        ("minilm", "base", "float16"),
        ("minilm", "base", "bfloat16"),
        ("smollm2", "lm", "float16"),
        ("smollm2", "lm", "bfloat16"),
        ("smollm2", "lm", "4-bit"),
    ],
)
def test_real_checkpoints_low_precision(request, tmp_path, smollm2_gguf, checkpoint, task, dtype):
    """The real checkpoints in fp16/bf16 against fp32 PyTorch with the same rounded weights, and
    SmolLM2 4-bit against PyTorch with the same dequantized weights. Bounds are relative to the
    logit scale (SmolLM2's logits reach ~35): those of ``python -m mlx_models.parity``."""
    if dtype == "4-bit":
        path = convert(str(smollm2_gguf), tmp_path / "q4", dtype="float32", q_bits=4, progress=False)
        rows = run_parity(path, tasks=(task,), paddings=("right", "left"))
        tol = DEFAULT_TOL["float32"]
    else:
        path = request.getfixturevalue(checkpoint)
        rows = run_parity(path, dtype=dtype, tasks=(task,), paddings=("right",))
        tol = DEFAULT_TOL[dtype]
    for r in rows:
        assert 0 < r.max_abs <= tol * r.scale, str(r)
        assert r.top1 >= 0.95, str(r)


def test_smollm2_logits(smollm2, smollm2_torch):
    tok = load_tokenizer(smollm2)
    model = load_model(smollm2)
    eos = tok.eos_token_id
    for side in ("right", "left"):
        seqs = [tok(s, add_special_tokens=False)["input_ids"] for s in SENTENCES]
        ids, mask = collate(seqs, eos, side)
        batch = {"input_ids": ids, "attention_mask": mask}
        got = mlx_forward(model, batch)
        want = torch_forward(smollm2_torch, ids, mask, "lm")
        d = max_diff(got, want, batch, "lm")
        assert d <= 1e-3, f"{side}: max|Δ| {d:.2e}"  # measured ~4e-4 over 30 layers
        m = mask.astype(bool)
        assert (got[m].argmax(-1) == want[m].argmax(-1)).all()


def test_smollm2_greedy_continuation(smollm2, smollm2_torch):
    tok = load_tokenizer(smollm2)
    model = load_model(smollm2)
    ids = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    mlx_ids, torch_ids = list(ids), list(ids)
    for _ in range(16):
        mlx_ids.append(int(mx.argmax(model(mx.array([mlx_ids]))[0, -1]).item()))
    with torch.no_grad():
        out = smollm2_torch.generate(torch.tensor([torch_ids]), max_new_tokens=16, do_sample=False)
    assert mlx_ids == out[0].tolist()
    assert tok.decode(mlx_ids[len(ids) :]).startswith(" Paris")


def test_mlx_lm_loads_converted_llama(tiny, smollm2):
    """A converted Llama (plain and 4-bit) loads in mlx_lm.load and gives our logits."""
    import mlx_lm

    for path in (tiny("llama", "lm")[1], tiny("llama", "lm", q_bits=4)[1], smollm2):
        ours = load_model(path)
        theirs, _ = mlx_lm.load(str(path))
        ids = mx.array([[1, 5, 9, 20, 33, 7]])
        # both float32 through 30 layers: against float64 transformers, SmolLM2's logits from
        # mlx-lm are 3.9e-4 off, ours 1.5e-4 (our norm kernels sum in SIMD lanes)
        a, b = np.array(ours(ids)), np.array(theirs(ids))
        assert np.isfinite(a).all()  # numpy's allclose passes NaN against NaN
        np.testing.assert_allclose(a, b, atol=5e-4, rtol=1e-4)


def test_parity_cli(tiny, capsys):
    _, mlx_dir = tiny("roberta", "mlm")
    assert parity_main([str(mlx_dir)]) == 0
    out = capsys.readouterr().out
    assert "mlm" in out and "classify" in out and "OK" in out
    assert parity_main([str(mlx_dir), "--tol", "1e-12"]) == 1  # a broken bound fails
    assert "FAIL" in capsys.readouterr().out
