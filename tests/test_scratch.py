"""Pretraining RoBERTa from scratch: the model from a config (HF's names, shapes and init), the masked-LM
loss against transformers, masking statistics, the trained tokenizer, packing, the recipe's knobs,
resume, bad inputs, and finetuning what was pretrained."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from mlx.utils import tree_flatten

import train
from mlx_models import load_model
from mlx_models.batching import encode
from mlx_models.cli import run_cli
from mlx_models.interop.weights import parameter_shapes
from mlx_models.parity.reference import torch_model
from mlx_models.train import scratch
from mlx_models.train.build import accumulation
from mlx_models.train.config import TrainConfig, load_train_config
from mlx_models.train.corpus import pack
from mlx_models.train.data import load_splits
from mlx_models.train.metrics import read_metrics
from mlx_models.train.tasks import IGNORE, Masking, make_batch, mlm_loss
from mlx_models.train.trainer import run as train_run

ROOT = Path(__file__).resolve().parent.parent
SMALL = "num_hidden_layers=2,hidden_size=64,num_attention_heads=4,intermediate_size=128,vocab_size=600"
SMALL += ",max_position_embeddings=66"


def corpus_texts() -> list[str]:
    from hf_fixtures import _CORPUS
    from sentiment import CORPUS

    return CORPUS * 2 + _CORPUS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "reviews.txt").write_text("\n".join(corpus_texts()) + "\n")
    return d


@pytest.fixture(scope="module")
def tokenizer():
    return scratch.train_tokenizer(corpus_texts(), 600)


def small_config(tokenizer) -> dict:
    cfg = TrainConfig(model="roberta-base", task="mlm", from_scratch=True, model_config=SMALL, out="x")
    return scratch.config_for(cfg, tokenizer)


# --- the model and the tokenizer --------------------------------------------------------------------


def test_model_from_config_has_hf_names_shapes_and_init(tokenizer):
    config = small_config(tokenizer)
    ours = scratch.build(config, "mlm", seed=0)
    hf_config = transformers.RobertaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    theirs = transformers.RobertaForMaskedLM(hf_config)
    hf_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    hf_shapes = {
        k: v for k, v in hf_shapes.items() if k not in ("lm_head.decoder.weight", "lm_head.decoder.bias")
    }
    hf_shapes = {k: v for k, v in hf_shapes.items() if "position_ids" not in k and "token_type_ids" not in k}
    assert parameter_shapes(ours) == hf_shapes  # names and shapes: conversion is the identity
    params = {k: np.array(v) for k, v in tree_flatten(ours.parameters())}
    for k, v in params.items():
        ref = theirs.state_dict()[k].numpy()
        if k.endswith("bias") or k.endswith("LayerNorm.weight") or k.endswith("layer_norm.weight"):
            np.testing.assert_array_equal(v, ref, err_msg=k)  # zeros and ones, as HF
        else:  # normal(0, initializer_range), in both: the sampling error shrinks with the count
            nonzero = v[v != 0] if "embeddings" in k else v.ravel()
            tol = 5 * 0.02 / np.sqrt(nonzero.size)
            for w in (nonzero, ref[ref != 0] if "embeddings" in k else ref.ravel()):
                assert abs(w.std() - 0.02) < tol and abs(w.mean()) < tol, k
    for k in ("roberta.embeddings.word_embeddings.weight", "roberta.embeddings.position_embeddings.weight"):
        assert not params[k][config["pad_token_id"]].any()  # HF zeroes the padding_idx row


def test_trained_tokenizer_has_roberta_specials_and_round_trips(tokenizer, tmp_path):
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tokenizer.mask_token_id == len(tokenizer) - 1 == 599 and tokenizer.pad_token_id == 1
    tokenizer.save_pretrained(tmp_path)
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "The music, the costumes, and the sets are all wonderful."
    ids = again(text)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and again.decode(ids, skip_special_tokens=True) == text
    assert again.mask_token_id in again("Hello <mask>!")["input_ids"]


def test_vocab_smaller_than_the_specials_is_refused():
    from mlx_models.errors import ConfigError

    with pytest.raises(ConfigError, match="smaller than the 5 special tokens plus the 256 bytes"):
        scratch.train_tokenizer(corpus_texts(), 100)


# --- the masked-LM loss and masking ----------------------------------------------------------------


def test_mlm_loss_equals_transformers(tokenizer):
    config = small_config(tokenizer)
    model = scratch.build(config, "mlm", seed=0)
    model.eval()
    seqs = encode(tokenizer, corpus_texts()[-6:], 40)  # of different lengths
    masking = Masking.for_tokenizer(tokenizer)
    batch = make_batch("mlm", seqs, None, pad_id=1, masking=masking, rng=np.random.default_rng(0))
    assert (np.array(batch["attention_mask"]) == 0).any()  # padded
    loss, n = mlm_loss(model, batch)
    ref = torch_model(model, config, "mlm", device="cpu")
    out = ref(
        input_ids=torch.from_numpy(np.array(batch["input_ids"]).astype(np.int64)),
        attention_mask=torch.from_numpy(np.array(batch["attention_mask"]).astype(np.int64)),
        labels=torch.from_numpy(np.array(batch["labels"]).astype(np.int64)),
    )
    assert n.item() == int((np.array(batch["labels"]) != IGNORE).sum()) > 0
    assert abs(loss.item() - out.loss.item()) <= 1e-5 * abs(out.loss.item())


def test_masking_statistics(tokenizer):
    rng = np.random.default_rng(0)
    seqs = encode(tokenizer, corpus_texts(), 64)
    masking = Masking.for_tokenizer(tokenizer)
    chosen = replaced = randomised = kept = candidates = 0
    for _ in range(40):
        batch = make_batch("mlm", seqs, None, pad_id=1, masking=masking, rng=rng)
        ids, labels, mask = (np.array(batch[k]) for k in ("input_ids", "labels", "attention_mask"))
        original = np.where(labels != IGNORE, labels, ids)
        special = np.isin(original, tokenizer.all_special_ids) | (mask == 0)
        picked = labels != IGNORE
        assert not (picked & special).any()  # special and pad tokens are never masked
        assert (ids[special] == original[special]).all()
        candidates += (~special).sum()
        chosen += picked.sum()
        replaced += (picked & (ids == tokenizer.mask_token_id)).sum()
        kept += (picked & (ids == original)).sum()
        randomised += (picked & (ids != tokenizer.mask_token_id) & (ids != original)).sum()
    assert abs(chosen / candidates - 0.15) < 0.005
    assert abs(replaced / chosen - 0.8) < 0.01
    assert abs(kept / chosen - 0.1) < 0.01 and abs(randomised / chosen - 0.1) < 0.01


def test_whole_word_masking_masks_words_together(tokenizer):
    masking = Masking.for_tokenizer(tokenizer, whole_words=True)
    seqs = encode(tokenizer, corpus_texts(), 64)
    batch = make_batch("mlm", seqs, None, pad_id=1, masking=masking, rng=np.random.default_rng(1))
    labels, ids = np.array(batch["labels"]), np.array(batch["input_ids"])
    original = np.where(labels != IGNORE, labels, ids)
    special = np.isin(original, tokenizer.all_special_ids)
    continues = masking.continues_word[original] & ~special
    picked = labels != IGNORE
    inside = continues[:, 1:] & ~special[:, :-1]  # an inner piece is picked exactly with the one before
    assert inside.sum() > 100 and (picked[:, 1:][inside] == picked[:, :-1][inside]).all()
    assert 0.1 < picked.sum() / (np.array(batch["attention_mask"]).sum() - 2 * len(seqs)) < 0.2


def test_packing_loses_no_token():
    docs = [[0, 5, 6, 2], [0, 7, 2], [0, 8, 9, 10, 11, 2]]
    blocks = pack(docs, 4)
    assert [len(b) for b in blocks] == [4, 4, 4, 1]
    assert sum(blocks, []) == sum(docs, [])


# --- the recipe end to end ----------------------------------------------------------------------------


def pretrain_argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    argv = ["--model", "roberta-base", "--from-scratch", "--task", "mlm", "--model-config", SMALL]
    argv += ["--data-dir", str(corpus), "--out", str(out), "--max-length", "32", "--learning-rate", "1e-2"]
    return [*argv, "--train.micro_batch_size", "4", "--train.global_batch_size", "8", *extra]


def test_litgpt_flags_map_onto_ours(corpus, tmp_path):
    argv = pretrain_argv(corpus, tmp_path / "r", "--train.max_tokens", "5000", "--train.lr_warmup_steps", "3")
    cfg = load_train_config([*argv, "--eval.interval", "4", "--train.save_interval", "8"])
    assert (cfg.batch_size, cfg.global_batch_size, accumulation(cfg, 1), accumulation(cfg, 2)) == (4, 8, 2, 1)
    assert (cfg.max_tokens, cfg.warmup_steps, cfg.eval_every, cfg.save_every) == (5000, 3, 4, 8)
    finetune = load_train_config(["--data_dir", str(corpus), "--output_dir", str(tmp_path / "f"), "--num_epochs", "2",
                                  "--use_agnews", "--num_labels", "4", "--batch_size", "2"])  # fmt: skip
    assert (finetune.dataset, finetune.epochs, finetune.num_labels, finetune.out) == (
        "ag_news",
        2,
        4,
        str(tmp_path / "f"),
    )


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    argv = pretrain_argv(corpus, out, "--max-tokens", "12000", "--eval-every", "8", "--save-every", "8")
    test = train_run(load_train_config([*argv, "--warmup-steps", "4", "--lr-schedule", "cosine"]))
    return out, test


def test_pretraining_learns_and_records_tokens(pretrained):
    out, test = pretrained
    val = [r for r in read_metrics(out) if r["split"] == "validation"]
    assert len(val) == 6  # 12000 tokens / (8 x 32) = 47 steps, evaluated every 8 and at the end
    probe = [r for r in read_metrics(out) if r["split"] == "train"]
    # Falls, and far below chance (a uniform guess scores ln(600) = 6.4); masked-token accuracy rises.
    # (The held-out corpus is small: a few dozen masked tokens, so its figures are noisy.)
    assert val[-1]["loss"] < val[0]["loss"] and val[-1]["loss"] < 0.75 * np.log(600)
    assert probe[-1]["loss"] < 0.85 * probe[0]["loss"] and probe[-1]["accuracy"] > probe[0]["accuracy"]
    assert all(r["perplexity"] == pytest.approx(np.exp(r["loss"])) for r in val)
    tokens = [r["tokens"] for r in val]
    assert tokens == sorted(tokens) and 11000 < tokens[-1] <= 12100  # packed blocks are full
    assert test["split"] == "test" and test["tokens"] > 0 and 0 < test["accuracy"] < 1
    init = json.loads((out / "init" / "config.json").read_text())
    assert init["vocab_size"] == 600 and init["num_hidden_layers"] == 2
    assert (out / "init" / "tokenizer.json").exists() and (out / "iter-8").is_dir()
    assert transformers.AutoTokenizer.from_pretrained(out / "best").mask_token_id == 599


def test_finetune_what_was_pretrained(pretrained, tmp_path, capsys):
    """--model RUN/best --task classify: the pretrained encoder under a new classification head."""
    from sentiment import sentiment_splits, write_splits

    run, _ = pretrained
    data = write_splits(tmp_path / "data", sentiment_splits())
    out = tmp_path / "ft"
    argv = ["--model", str(run / "best"), "--data-dir", str(data), "--out", str(out), "--max-length", "32"]
    record = train_run(load_train_config([*argv, "--max-steps", "4", "--batch-size", "8"]))
    assert "newly initialised classifier.dense.bias" in capsys.readouterr().err
    assert record["n"] == 32
    encoder = "roberta.encoder.layer.1.output.dense.weight"
    pretrained_w = mx.load(str(run / "best" / "model.safetensors"))[encoder]
    cls = load_model(run / "best", "classify")
    np.testing.assert_array_equal(
        np.array(cls.roberta.encoder.layer[1].output.dense.weight), np.array(pretrained_w)
    )


def test_killed_pretraining_resumes_to_identical_metrics(corpus, tmp_path):
    argv = pretrain_argv(
        corpus, tmp_path / "a", "--max-tokens", "8000", "--eval-every", "4", "--save-every", "4"
    )
    a = train_run(load_train_config(argv))
    b_dir = tmp_path / "b"
    argv_b = [x if x != str(tmp_path / "a") else str(b_dir) for x in argv]
    log = (tmp_path / "log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "train.py", *argv_b], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    state = b_dir / "last" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not (state.exists() and json.loads(state.read_text())["step"] >= 8):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    b = train_run(load_train_config(["--resume", str(b_dir)]))
    runs = [[r for r in read_metrics(d) if r["split"] != "test"] for d in (tmp_path / "a", b_dir)]
    assert len(runs[0]) == len(runs[1]) == 16  # train + validation records at steps 4, 8, ..., 32
    for ra, rb in zip(*runs, strict=True):
        assert [ra[k] for k in ("split", "step", "tokens")] == [rb[k] for k in ("split", "step", "tokens")]
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6) and rb["accuracy"] == ra["accuracy"]
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)


# --- bad inputs ------------------------------------------------------------------------------------


def write_corpus(text: str):
    def make(d: Path) -> Path:
        d.mkdir()
        (d / "c.txt").write_text(text)
        return d

    return make


GOOD = write_corpus("\n".join(corpus_texts()))
BAD = {
    "empty corpus": (write_corpus("\n\n  \n"), [], "is empty"),
    "corpus smaller than a block": (write_corpus("Hi.\n" * 10), [], "less than two blocks of max_length 32"),
    "vocab smaller than the specials": (GOOD, ["--model-config", "vocab_size=100"], "smaller than the 5 special tokens"),
    "global batch not a multiple": (GOOD, ["--train.global_batch_size", "10"], "global_batch_size 10 is not a multiple of batch_size 4"),
    "model config not key=value": (GOOD, ["--model-config", "layers"], "is not key=value"),
    "model config not a model": (GOOD, ["--model-config", "model_type=t5"], "unsupported model_type 't5'"),
    "model config key misspelt": (GOOD, ["--model-config", "num_hiden_layers=1"], "unknown key 'num_hiden_layers' for roberta; did you mean num_hidden_layers?"),
    "model config key of no config": (GOOD, ["--model-config", "flux_capacitor=3"], "unknown key 'flux_capacitor' for roberta"),
    "lora from scratch": (GOOD, ["--lora"], "--from-scratch trains every weight"),
    "no corpus files": (lambda d: d.mkdir() or d, [], "no .txt or .jsonl files"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_pretraining_input(tmp_path, capsys, case):
    make, extra, message = BAD[case]
    corpus = make(tmp_path / "corpus")
    out = tmp_path / "run"
    assert run_cli(train.main, [*pretrain_argv(corpus, out), *extra]) == 2
    err = [
        line for line in capsys.readouterr().err.splitlines() if not line.startswith(("training a", "notice"))
    ]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_missing_data_dir_gets_the_embedded_corpus(tmp_path, capsys):
    from mlx_models.train.corpus import load_corpus

    d = tmp_path / "new"
    splits = load_corpus(TrainConfig(task="mlm", data_dir=str(d), out="x"))
    assert "wrote 5000 IMDB reviews" in capsys.readouterr().err
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 5000
    assert (d / "imdb.txt").read_text().count("\n") == 5000
    full = load_splits(TrainConfig(dataset="imdb", out="x"))
    label = {" ".join(t.split()): y for t, y in zip(full.train.texts, full.train.labels, strict=True)}
    written = (d / "imdb.txt").read_text().splitlines()
    assert 2450 <= sum(label[t] for t in written) <= 2550  # balanced (the copy is sorted by label)
    held = load_splits(TrainConfig(dataset="imdb", max_samples=2000, out="x"))
    assert not set(written) & {" ".join(t.split()) for t in held.validation.texts + held.test.texts}


def test_the_head_on_the_masked_positions_only_gives_the_full_heads_rows(tokenizer):
    """Masked-LM training runs the head on the gathered masked rows (padded to MASKED_MULTIPLE):
    the same logits as the full (B, L, V) head at those rows, and the padding rows do not count."""
    from mlx_models.train.tasks import MASKED_MULTIPLE, token_predictions

    model = scratch.build(small_config(tokenizer), "mlm", seed=0)
    model.eval()
    seqs = encode(tokenizer, corpus_texts()[-6:], 40)
    masking = Masking.for_tokenizer(tokenizer)
    batch = make_batch("mlm", seqs, None, pad_id=1, masking=masking, rng=np.random.default_rng(1))
    at, keep = np.array(batch["masked_at"]), np.array(batch["masked_keep"])
    labels = np.array(batch["labels"]).ravel()
    assert len(at) % MASKED_MULTIPLE == 0 and keep.sum() == (labels != IGNORE).sum() < len(at)
    full = np.array(model(batch["input_ids"], attention_mask=batch["attention_mask"]))
    logits, targets, counted = token_predictions(model, batch, "mlm")
    rows = at[keep]
    np.testing.assert_allclose(np.array(logits)[keep], full.reshape(-1, full.shape[-1])[rows], atol=1e-5)
    assert (np.array(targets)[keep] == labels[rows]).all() and (np.array(counted) == keep).all()
