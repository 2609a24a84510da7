"""train.py end to end on a tiny real-text task: every family learns, overfitting shows, resume is
exact, bad inputs fail cleanly, out-of-memory backs off, and the training math matches PyTorch.

The task: short movie-review sentences whose label is carried by a sentiment word ("The story
was dull, truly dull." = 0). Tiny random models (2 layers, hidden 64) learn it in a few dozen
steps; everything is offline and on the CPU.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

import mlx_models.train.trainer as trainer
import train
from hf_fixtures import SENTENCES, padded_batch
from mlx_models import load_model, load_tokenizer
from mlx_models.cli import run_cli
from mlx_models.export.fuse import fuse
from mlx_models.interop.loading import read_config
from mlx_models.models.lora import ADAPTED, DoRALinear, LoRALinear, apply_lora
from mlx_models.parity.reference import torch_model
from mlx_models.train import run_dir as rd
from mlx_models.train.build import build
from mlx_models.train.config import TrainConfig, load_train_config
from mlx_models.train.metrics import read_metrics
from mlx_models.train.run_dir import restore_weights
from mlx_models.train.tasks import classify_loss
from sentiment import sentiment_splits, write_splits

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    """The same sentences, but the training labels are a random (balanced) permutation."""
    splits = sentiment_splits()
    labels = np.random.default_rng(1).permutation([r["label"] for r in splits["train"]])
    splits["train"] = [
        {"text": r["text"], "label": int(y)} for r, y in zip(splits["train"], labels, strict=True)
    ]
    return write_splits(tmp_path_factory.mktemp("data") / "noisy", splits)


@pytest.fixture(scope="module")
def models(tiny):
    """model_type -> converted tiny classifier directory (two labels, as the task has)."""
    return lambda model_type: str(tiny(model_type, "classify", num_labels=2)[1])


def run_train(argv: list[str], fault=None) -> dict:
    """In-process train.py; returns the test record (also the stdout line)."""
    return trainer.run(load_train_config(argv), fault=fault)


def records(run_dir: Path, split: str) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["split"] == split]


def snapshot(path: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


# --- 1. every family learns the task ---------------------------------------------------------------

LEARN_STEPS = 64  # 5.3 epochs of 96 examples at batch 8
# Random tiny encoders sit on a plateau for ~20 steps; these settings pass for seeds 0-3.
LEARN = {
    "bert": ("bert", ["--learning-rate", "2e-3"]),
    "roberta": ("roberta", ["--learning-rate", "2e-3"]),
    "llama-lora": ("llama", ["--lora", "--learning-rate", "5e-3"]),
    "llama-qlora": ("llama", ["--lora", "--quantize", "4", "--learning-rate", "5e-3"]),
    "llama-qdora": ("llama", ["--dora", "--quantize", "4", "--learning-rate", "5e-3"]),
}


@pytest.fixture(scope="module")
def learned(models, sentiment, tmp_path_factory):
    """name -> (run_dir, test record, metrics records at the end of the run), each run once."""
    done = {}

    def get(name: str):
        if name not in done:
            model_type, extra = LEARN[name]
            out = tmp_path_factory.mktemp("runs") / name
            argv = ["--model", models(model_type), "--data-dir", str(sentiment), "--out", str(out)]
            argv += ["--max-length", "32", "--batch-size", "8", "--max-steps", str(LEARN_STEPS)]
            done[name] = (out, run_train([*argv, "--eval-every", "16", *extra]), read_metrics(out))
        return done[name]

    return get


@pytest.mark.parametrize("name", list(LEARN))
def test_each_family_learns_the_task(learned, name):
    run_dir, test, metrics = learned(name)
    train_recs = [r for r in metrics if r["split"] == "train"]
    val = [r for r in metrics if r["split"] == "validation"]
    assert [r["step"] for r in train_recs] == [16, 32, 48, 64]
    assert train_recs[-1]["loss"] < 0.7 * train_recs[0]["loss"], [r["loss"] for r in train_recs]
    running = [r["running_loss"] for r in train_recs]  # mean training loss since the last evaluation
    assert running[-1] < 0.5 * running[0], running
    assert max(r["accuracy"] for r in val) > 0.75
    assert test["split"] == "test" and test["n"] == 32 and test["accuracy"] > 0.75, test
    assert metrics[-1] == json.loads(json.dumps(test, sort_keys=True))  # the stdout line is the record
    assert (run_dir / "curves.png").stat().st_size > 10_000
    assert (run_dir / "config.json").is_file() and (run_dir / "best").is_dir() and (run_dir / "last").is_dir()
    best = run_dir / "best"
    if name.endswith(("lora", "dora")):
        # A LoRA checkpoint holds what is trained: the adapters (DoRA: and magnitudes) and the head.
        keys = set(mx.load(str(best / "adapters.safetensors")))
        assert not (best / "model.safetensors").exists()
        assert all(k.endswith(("lora_a", "lora_b", ".m")) or k.startswith("score.") for k in keys), keys
        assert len([k for k in keys if k.endswith("lora_b")]) == 8  # q, k, v, o in 2 layers
        assert len([k for k in keys if k.endswith(".m")]) == (8 if name.endswith("dora") else 0)
    ckpt_config = json.loads((best / "config.json").read_text())
    assert ("quantization" in ckpt_config) == name.endswith(("qlora", "qdora"))
    if name.endswith(("qlora", "qdora")):
        assert ckpt_config["quantization"]["bits"] == 4
        assert Path(ckpt_config["base_model"]).parent == Path(os.environ["MLX_MODELS_CACHE"])


# --- 2. the overfit profile ------------------------------------------------------------------------


def test_overfit_profile_memorises_noise_and_validation_diverges(models, noisy, tmp_path):
    out = tmp_path / "overfit"
    argv = ["--model", models("bert"), "--data-dir", str(noisy), "--out", str(out), "--profile", "overfit"]
    argv += ["--max-samples", "16", "--batch-size", "4", "--epochs", "20", "--learning-rate", "2e-3"]
    test = run_train([*argv, "--max-length", "32", "--eval-every", "8"])
    saved = json.loads((out / "config.json").read_text())
    assert (saved["dropout"], saved["weight_decay"], saved["early_stopping_patience"]) == (0.0, 0.0, None)
    assert saved["epochs"] == 20  # the command line beats the profile's 10
    train_loss = [r["loss"] for r in records(out, "train")]
    val = records(out, "validation")
    assert len(train_loss) == len(val) == 10 and all(r["n"] == 16 for r in val)
    assert train_loss[0] > 0.5 and train_loss[-1] < 0.05, train_loss  # random labels memorised
    val_loss = [r["loss"] for r in val]
    best = int(np.argmin(val_loss))
    assert best < len(val_loss) - 1 and val_loss[-1] > val_loss[best] + 0.5, val_loss  # diverged
    assert (test["checkpoint"], test["step"]) == ("best", val[best]["step"])  # best/ = lowest val loss


# --- 3. resume equals an uninterrupted run ---------------------------------------------------------

RESUME_STEPS = 32  # batch 4: 24 steps per epoch, so the resumed part crosses an epoch boundary


def resume_argv(model: str, data: Path, out: Path) -> list[str]:
    argv = ["--model", model, "--data-dir", str(data), "--out", str(out), "--max-length", "32"]
    argv += ["--batch-size", "4", "--max-steps", str(RESUME_STEPS), "--learning-rate", "1e-3"]
    return [*argv, "--eval-every", "4", "--save-every", "4"]


@pytest.mark.parametrize(
    "family,extra",
    [
        ("bert", []),
        ("llama", ["--lora", "--lora-dropout", "0.1"]),
        ("llama", ["--dora", "--lora-dropout", "0.1"]),
    ],
    ids=["full-bert", "lora-llama", "dora-llama"],
)
def test_resume_after_sigkill_equals_uninterrupted_run(models, sentiment, tmp_path, family, extra):
    """Full finetuning and LoRA (adapters + head checkpoint, two optimizer groups); dropout is on,
    so the RNG state has to be restored too."""
    model = models(family)
    if family == "bert":
        assert read_config(Path(model))["hidden_dropout_prob"] == 0.1
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    test_a = run_train([*resume_argv(model, sentiment, run_a), *extra])

    log = tmp_path / "b.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "train.py", *resume_argv(model, sentiment, run_b), *extra],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    state_file = run_b / "last" / "trainer_state.json"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint at step >= 8 within 120 s"
            try:
                if json.loads(state_file.read_text())["step"] >= 8:
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = json.loads(state_file.read_text())
    assert 8 <= killed["step"] < 24 and killed["epoch"] == 0, killed  # mid-epoch
    assert not records(run_b, "test")

    test_b = run_train(["--resume", str(run_b)])

    def key(r):
        return {k: r.get(k) for k in ("split", "step", "epoch", "loss", "accuracy", "running_loss")}

    a, b = ([key(r) for r in read_metrics(d) if r["split"] != "test"] for d in (run_a, run_b))
    assert [(r["split"], r["step"]) for r in b] == [(r["split"], r["step"]) for r in a]
    resumed = [(ra, rb) for ra, rb in zip(a, b, strict=True) if ra["step"] > killed["step"]]
    assert len([1 for ra, _ in resumed if ra["split"] == "validation"]) >= 4
    for ra, rb in zip(a, b, strict=True):
        assert rb == pytest.approx(ra, abs=1e-6), (ra, rb)
    for k in ("loss", "accuracy", "f1", "step"):
        assert test_b[k] == pytest.approx(test_a[k], abs=1e-6), k
    name = "adapters.safetensors" if extra else "model.safetensors"
    weights_a, weights_b = (mx.load(str(d / "last" / name)) for d in (run_a, run_b))
    assert weights_a.keys() == weights_b.keys()
    worst = max(float(mx.abs(weights_a[k] - weights_b[k]).max()) for k in weights_a)
    assert worst <= 1e-6
    assert json.loads((run_b / "last" / "trainer_state.json").read_text())["step"] == RESUME_STEPS


# --- 4. bad inputs: exit 2, one line, nothing written ----------------------------------------------

GOOD = sentiment_splits()
BAD_DATA = {
    "no text column": (
        {**GOOD, "train": [{"review": r["text"], "label": r["label"]} for r in GOOD["train"]]},
        [],
        "no text column 'text'",
    ),
    "no label column": (
        {**GOOD, "validation": [{"text": r["text"]} for r in GOOD["validation"]]},
        [],
        "no label column 'label'",
    ),
    "negative label": (
        {**GOOD, "test": [*GOOD["test"][:-1], {"text": "Fine.", "label": -1}]},
        [],
        "labels [-1] out of range for num_labels=2",
    ),
    # imdb's registry entry says num_labels: 2, so label 7 cannot be a new class.
    "label 7 of 2": (
        {**GOOD, "train": [*GOOD["train"][:-1], {"text": "Fine.", "label": 7}]},
        ["--dataset", "imdb"],
        "labels [7] out of range for num_labels=2",
    ),
    "empty train split": ({**GOOD, "train": []}, [], "has no examples"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_exits_2_with_one_line_and_no_run_dir(models, tmp_path, capsys, case):
    splits, extra, message = BAD_DATA[case]
    data, out = write_splits(tmp_path / "data", splits), tmp_path / "run"
    argv = ["--model", models("bert"), "--data-dir", str(data), "--out", str(out), *extra]
    capsys.readouterr()  # what building the model (a fixture) printed
    assert run_cli(train.main, argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err, captured.err
    assert captured.out == "" and not out.exists()


def test_unknown_model_or_dataset_exits_2(models, sentiment, tmp_path, capsys):
    out = tmp_path / "run"
    cases = [
        (["--model", "no-such-model", "--data-dir", str(sentiment)], "unknown model 'no-such-model'"),
        (["--model", models("bert"), "--dataset", "no-such-dataset"], "unknown dataset 'no-such-dataset'"),
    ]
    for argv, message in cases:
        assert run_cli(train.main, [*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
        assert not out.exists()


def test_existing_run_dir_without_resume_is_untouched(models, sentiment, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    argv = ["--model", models("bert"), "--data-dir", str(sentiment), "--out", str(out)]
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "--resume" in err
    assert err.count("\n") == 1
    assert snapshot(out) == before


def test_bad_data_subprocess_exit_code(models, tmp_path):
    data = write_splits(tmp_path / "data", BAD_DATA["no label column"][0])
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "--model", models("bert"), "--data-dir", str(data), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no label column" in lines[0], lines
    assert proc.stdout == "" and not out.exists()


# --- 5. out-of-memory back-off ---------------------------------------------------------------------


def oom_argv(model: str, data: Path, out: Path) -> list[str]:
    argv = ["--model", model, "--data-dir", str(data), "--out", str(out), "--max-length", "32"]
    return argv + ["--batch-size", "8", "--max-steps", "6", "--dropout", "0", "--learning-rate", "1e-3"]


def test_oom_halves_the_micro_batch_and_keeps_the_effective_batch(models, sentiment, tmp_path, capsys):
    reference = run_train(oom_argv(models("bert"), sentiment, tmp_path / "reference"))
    calls = []

    def fault(step: int, micro_batch: int) -> None:
        calls.append((step, micro_batch))
        if step == 3 and micro_batch > 2:
            raise RuntimeError("[malloc] out of memory")

    capsys.readouterr()
    out = tmp_path / "oom"
    result = run_train(oom_argv(models("bert"), sentiment, out), fault=fault)
    err = capsys.readouterr().err
    first = err.index("out of memory at step 4: micro-batch -> 4, accumulation -> 2 (same effective batch 8)")
    second = err.index(
        "out of memory at step 4: micro-batch -> 2, accumulation -> 4 (same effective batch 8)"
    )
    assert first < second and err.count("out of memory") == 2
    assert [c for c in calls if c[0] == 3][:3] == [(3, 8), (3, 4), (3, 2)]
    assert {mb for step, mb in calls if step > 3} == {2}  # the smaller micro-batch sticks
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert (state["step"], state["micro_batch"], state["grad_accum"]) == (6, 2, 4)
    # The same 8 examples per optimizer step: the run follows the uninterrupted one.
    assert result["loss"] == pytest.approx(reference["loss"], rel=1e-4)
    val, val_ref = records(out, "validation")[-1], records(tmp_path / "reference", "validation")[-1]
    assert val["loss"] == pytest.approx(val_ref["loss"], rel=1e-4)


def test_oom_at_micro_batch_1_exits_2_with_advice(models, sentiment, tmp_path, capsys):
    def always(step: int, micro_batch: int) -> None:
        raise RuntimeError("[malloc] out of memory")

    main = lambda argv: trainer.run(load_train_config(argv), fault=always)  # noqa: E731
    assert run_cli(main, oom_argv(models("bert"), sentiment, tmp_path / "run")) == 2
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: out of memory at micro-batch 1; lower --max-length")
    assert "--grad-checkpoint" in errors[0] and "--memory-limit" in errors[0]
    assert sum("micro-batch -> " in line for line in lines) == 3  # 8 -> 4 -> 2 -> 1, then give up


# --- 6. training math -----------------------------------------------------------------------------


def logits(model, batch) -> np.ndarray:
    out = model(mx.array(batch["input_ids"]), attention_mask=mx.array(batch["attention_mask"]))
    return np.array(out.astype(mx.float32))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "llama"])
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_lora_at_init_is_exactly_the_base_model(models, model_type, dora):
    directory = models(model_type)
    model, tok = load_model(directory, "classify"), load_tokenizer(directory)
    batch = padded_batch(tok, SENTENCES)
    base = logits(model, batch)
    cfg = TrainConfig()
    wrapped = apply_lora(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, dora)
    model.eval()
    assert len(wrapped) == 8  # q, k, v, o projections of both layers
    layer = DoRALinear if dora else LoRALinear
    assert all(type(m) is layer for p, m in model.named_modules() if p in wrapped)
    head = model.head_modules[0]
    keys = [k for k, _ in tree_flatten(model.trainable_parameters())]
    adapters = ("lora_a", "lora_b", ".m") if dora else ("lora_a", "lora_b")
    assert keys and all(k.endswith(adapters) or k.startswith(head + ".") for k in keys), keys
    assert sum(k.endswith(".m") for k in keys) == (8 if dora else 0)
    np.testing.assert_array_equal(logits(model, batch), base)  # DoRA: m / |W| is exactly 1


@pytest.mark.parametrize("name", ["llama-lora", "llama-qlora", "llama-qdora"])
def test_fused_checkpoint_equals_base_plus_adapters(learned, tmp_path, name):
    run_dir = learned(name)[0]
    cfg = TrainConfig.from_json(run_dir / "best" / "train_config.json")
    model, tok, _ = build(cfg, 2)
    restore_weights(model, run_dir / "best")
    model.eval()
    batch = padded_batch(tok, SENTENCES)
    adapted = logits(model, batch)

    fused = load_model(fuse(run_dir, tmp_path / "fused"), "classify")
    assert not any(isinstance(m, ADAPTED) for _, m in fused.named_modules())
    np.testing.assert_allclose(logits(fused, batch), adapted, atol=1e-4)

    # ...and the adapters matter: without them the logits are clearly different.
    for _, m in model.named_modules():
        if isinstance(m, ADAPTED):
            m.lora_b = mx.zeros_like(m.lora_b)
    assert np.abs(logits(model, batch) - adapted).max() > 1e-2


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_classify_loss_and_gradients_match_pytorch(models, model_type):
    directory = models(model_type)
    model, tok = load_model(directory, "classify"), load_tokenizer(directory)
    model.eval()  # no dropout in either framework
    batch = padded_batch(tok, SENTENCES + ["What a dull film!", "The music was wonderful, truly wonderful."])
    assert batch["attention_mask"].min() == 0  # padded: pooling and masks are part of the check
    labels = np.array([1, 0, 1, 1, 0, 1], np.int32)
    ids, mask = mx.array(batch["input_ids"]), mx.array(batch["attention_mask"])
    batch_in = {"input_ids": ids, "attention_mask": mask, "labels": mx.array(labels)}
    (loss, n), grads = nn.value_and_grad(model, classify_loss)(model, batch_in)
    grads = {k: np.array(v) for k, v in tree_flatten(grads)}
    assert n.item() == len(labels)

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ref = torch_model(model, read_config(Path(directory)), "classify", device="cpu", pad_token_id=pad_id)
    out = ref(
        input_ids=torch.from_numpy(batch["input_ids"].astype(np.int64)),
        attention_mask=torch.from_numpy(batch["attention_mask"].astype(np.int64)),
    ).logits
    ref_loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(labels.astype(np.int64)))
    ref_loss.backward()
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters() if p.grad is not None}

    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-5)
    named = {
        "bert": ["classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"],
        "llama": ["score.weight", "model.layers.0.self_attn.q_proj.weight"],
    }[model_type]
    assert grads.keys() == ref_grads.keys()  # every parameter is trained and compared
    for k in named:
        assert np.linalg.norm(ref_grads[k]) > 1e-6, k  # a gradient that actually flows
    for k in grads:
        # The key biases have (mathematically) zero gradient: softmax ignores a per-query shift.
        err = np.linalg.norm(grads[k] - ref_grads[k]) / max(np.linalg.norm(ref_grads[k]), 1e-8)
        assert err <= 1e-4 or np.abs(grads[k] - ref_grads[k]).max() <= 1e-8, (k, err)


# --- 7. eval-only ----------------------------------------------------------------------------------


def test_eval_only_reproduces_the_test_record(learned, capsys):
    run_dir, test, _ = learned("roberta")
    capsys.readouterr()
    assert run_cli(train.main, ["--eval-only", str(run_dir)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    drop = lambda r: {k: v for k, v in r.items() if k not in ("peak_gb", "tokens_per_s")}  # timings
    assert drop(line) == drop(test)
    assert line["n"] == 32 and line["checkpoint"] == "best"
    assert records(run_dir, "test")[-1] == line  # appended to metrics.jsonl too


def test_pick_checkpoint_best_else_last_or_the_one_asked_for(tmp_path):
    """One function decides which checkpoint a command means (run_dir.pick_checkpoint)."""
    run = tmp_path / "run"
    for name in ("iter-10", "last"):
        (run / name).mkdir(parents=True)
        (run / name / rd.STATE).write_text("{}")
    (run / "best").mkdir()  # an incomplete best/ (no trainer state) is no checkpoint
    assert rd.pick_checkpoint(run) == run / "last"
    (run / "best" / rd.STATE).write_text("{}")
    assert rd.pick_checkpoint(run) == run / "best"
    assert rd.pick_checkpoint(run, "last") == run / "last"
    assert rd.pick_checkpoint(run, "iter-10") == run / "iter-10"
    assert rd.pick_checkpoint(run, "iter-20") is None
    assert rd.pick_checkpoint(tmp_path / "nothing") is None


@pytest.mark.parametrize("mode", [False, True])
def test_evaluate_leaves_the_model_in_the_mode_it_found(tiny, mode):
    """evaluate() scores in eval mode and restores the caller's mode: an explainer or benchmark
    that evaluates first must not get dropout switched on behind its back."""
    from mlx_models.train.evaluation import Evaluator, evaluate

    _, mlx_dir = tiny("bert", "classify")
    model = load_model(mlx_dir, "classify")
    model.train(mode)
    ids = [[2, 5, 6, 7, 3], [2, 8, 9, 3]]
    first = evaluate(Evaluator(model, "classify"), ids, [0, 1], batch_size=2, pad_id=0)
    assert model.training is mode and all(m.training is mode for _, m in model.named_modules())
    again = evaluate(Evaluator(model, "classify"), ids, [0, 1], batch_size=2, pad_id=0)
    assert first["loss"] == again["loss"] and np.isfinite(first["loss"])  # eval mode inside: no dropout
