"""Mistral, the family added as one file (mlx_models/models/mistral.py): a tiny random MistralFor*
converts, matches transformers at fp32 with right and left padding (also with a sliding window
shorter than the batch), trains with LoRA, exports to transformers, PEFT and mlx-lm with the same
logits, and is explained, through the same code paths as every family."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers

from hf_fixtures import SENTENCES, _config, _rerandomize, make_tokenizer, padded_batch
from mlx_models.cli import run_cli
from mlx_models.explain.cli import main as explain
from mlx_models.export.cli import export
from mlx_models.interop.conversion import convert
from mlx_models.interop.loading import load_model
from mlx_models.parity.check import run_parity
from mlx_models.parity.reference import HF_AUTO_CLASSES, torch_forward
from mlx_models.train.config import load_train_config
from mlx_models.train.trained import load_trained
from mlx_models.train.trainer import run as train_run
from sentiment import sentiment_splits, write_splits

HEADS = {"base": "MistralModel", "lm": "MistralForCausalLM", "classify": "MistralForSequenceClassification"}


def make_mistral(out, head: str, **overrides):
    """A tiny random Mistral saved as transformers saves it, with the Llama fixtures' tokenizer."""
    tok = make_tokenizer("llama", out)
    config = _config("llama", head, tok, {}).to_dict()
    for key in ("model_type", "architectures", "attention_bias", "mlp_bias", "pretraining_tp", "head_dim"):
        config.pop(key, None)
    config = transformers.MistralConfig(**(config | overrides))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, HEADS[head])(config)
    _rerandomize(model, torch.Generator().manual_seed(0))
    model.eval().save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """(head, sliding window, tied embeddings) -> (hf dir, converted dir)."""
    made = {}

    def make(head: str, window: int | None = None, tied: bool = False):
        if (head, window, tied) not in made:
            root = tmp_path_factory.mktemp(f"mistral-{head}-{window}")
            hf = make_mistral(root / "hf", head, sliding_window=window, tie_word_embeddings=tied)
            made[head, window, tied] = hf, convert(str(hf), root / "mlx", dtype="float32", progress=False)
        return made[head, window, tied]

    return make


@pytest.mark.parametrize("head", ["base", "lm", "classify"])
@pytest.mark.parametrize("window", [None, 3])
def test_fp32_parity_both_paddings(mistral, head, window):
    hf, mlx_dir = mistral(head, window)
    assert json.loads((mlx_dir / "config.json").read_text())["model_type"] == "mistral"
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    ref = getattr(transformers, HF_AUTO_CLASSES[head]).from_pretrained(hf, attn_implementation="eager").eval()
    model = load_model(mlx_dir)
    for side in ("right", "left"):
        batch = padded_batch(tok, SENTENCES, side)
        assert (
            batch["attention_mask"].min() == 0 and batch["attention_mask"].sum(1).max() > 3
        )  # padded, wider than the window
        ours = model(mx.array(batch["input_ids"]), attention_mask=mx.array(batch["attention_mask"]))
        theirs = torch_forward(ref, batch["input_ids"], batch["attention_mask"], head)
        keep = batch["attention_mask"].astype(bool) if head != "classify" else slice(None)
        diff = np.abs(np.array(ours)[keep] - theirs[keep]).max()
        assert np.isfinite(diff) and diff <= 1e-4, f"{head}, window {window}, {side} padding: {diff:.2e}"
        if window:  # the window matters here: without it the outputs move far past the bound
            base = model.model if head != "base" else model
            base.args.sliding_window = None
            full = model(mx.array(batch["input_ids"]), attention_mask=mx.array(batch["attention_mask"]))
            base.args.sliding_window = window
            assert np.abs(np.array(full)[keep] - theirs[keep]).max() > 100 * diff


def test_parity_report_and_mlx_lm(mistral):
    import mlx_lm

    _, mlx_dir = mistral("lm")
    rows = run_parity(mlx_dir)
    assert {(r.task, r.padding) for r in rows} >= {("lm", "left"), ("lm", "right"), ("classify", "left")}
    assert all(r.max_abs / r.scale <= 1e-4 for r in rows), [str(r) for r in rows]
    theirs, _ = mlx_lm.load(str(mlx_dir))
    ids = mx.array([[1, 5, 9, 20, 33, 7]])
    np.testing.assert_allclose(
        np.array(load_model(mlx_dir)(ids)), np.array(theirs(ids)), atol=1e-4, rtol=1e-4
    )


@pytest.fixture(scope="module")
def lora_runs(mistral, tmp_path_factory):
    root = tmp_path_factory.mktemp("mistral-runs")
    data = write_splits(root / "data", sentiment_splits())
    runs = {}
    for task in ("classify", "lm"):
        runs[task] = root / task
        model = mistral(task, tied=task == "lm")[1]  # tied: an mlx-lm adapter holds all an LM run trains
        argv = ["--model", str(model), "--data-dir", str(data), "--task", task, "--lora"]
        argv += ["--max-steps", "3", "--max-length", "32", "--batch-size", "8", "--learning-rate", "1e-2"]
        train_run(load_train_config([*argv, "--out", str(runs[task])]))
    return runs


def test_lora_training_moves_the_adapters(lora_runs):
    for task in ("classify", "lm"):
        t = load_trained(lora_runs[task])
        lora_b = [m.lora_b for _, m in t.model.named_modules() if hasattr(m, "lora_b")]
        assert lora_b and all(float(mx.abs(x).max()) > 0 for x in lora_b)  # zero at init; trained since
        losses = [json.loads(line) for line in (lora_runs[task] / "metrics.jsonl").read_text().splitlines()]
        assert all(np.isfinite(r["loss"]) for r in losses if "loss" in r)


@pytest.mark.parametrize("to", ["hf", "peft"])
def test_export_gives_our_logits(lora_runs, mistral, tmp_path, to):
    import peft

    t = load_trained(lora_runs["classify"])
    tok = t.tokenizer
    batch = padded_batch(tok, SENTENCES, "left")
    want = np.array(t.model(mx.array(batch["input_ids"]), attention_mask=mx.array(batch["attention_mask"])))
    out = export(lora_runs["classify"], to, tmp_path / to)
    if to == "hf":
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            out, attn_implementation="eager"
        )
        assert type(model).__name__ == "MistralForSequenceClassification"
    else:
        base = transformers.AutoModelForSequenceClassification.from_pretrained(
            mistral("classify")[0], attn_implementation="eager", num_labels=2, ignore_mismatched_sizes=True
        )  # the fixture's head has 3 labels; the run trained 2 (PEFT's modules_to_save replaces it)
        model = peft.PeftModel.from_pretrained(base, out)
    got = torch_forward(model.eval(), batch["input_ids"], batch["attention_mask"], "classify")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("to", ["mlx-lm", "gguf"])
def test_a_window_does_not_go_where_it_would_be_dropped(mistral, tmp_path, to, capsys):
    from mlx_models.export.cli import main

    _, windowed = mistral("lm", 3)
    capsys.readouterr()
    assert run_cli(main, [str(windowed), "--to", to, "--out", str(tmp_path / "out")]) == 2
    assert "sets sliding_window (3), which" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_mlx_lm_adapter_export(lora_runs, tmp_path):
    import mlx_lm

    t = load_trained(lora_runs["lm"])
    out = export(lora_runs["lm"], "mlx-lm", tmp_path / "adapters")
    model, _ = mlx_lm.load(str(t.base), adapter_path=str(out))
    ids = mx.array([[1, 5, 9, 20, 33, 7]])
    np.testing.assert_allclose(np.array(model(ids)), np.array(t.model(ids)), atol=1e-4, rtol=1e-4)


def test_explain(lora_runs, tmp_path, capsys):
    out = tmp_path / "explained"
    argv = [
        str(lora_runs["classify"]),
        "--n",
        "4",
        "--steps",
        "4",
        "--method",
        "ig,occlusion",
        "--out",
        str(out),
    ]
    assert run_cli(explain, argv) == 0
    records = [json.loads(line) for line in (out / "attributions.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert set(r["scores"]) == {"ig", "occlusion"} and len(r["scores"]["ig"]) == len(r["words"])
        assert np.isfinite(r["scores"]["ig"]).all() and np.isfinite(r["completeness"]["gap"])
