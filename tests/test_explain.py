"""python -m mlx_models.explain on real runs of train.py (tiny models, the sentiment task of
test_train): every checkpoint of a full BERT run, a Llama QLoRA run, the TF-IDF baseline; LoRA
attributions equal those of the fused model (and captum's); SHAP adds up; bad inputs exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from test_attribution import captum_ig, rel_err

import mlx_models.train.trainer as trainer
from hf_fixtures import SENTENCES, padded_batch
from mlx_models import load_model
from mlx_models.cli import run_cli
from mlx_models.explain.cli import main, open_run
from mlx_models.explain.faithfulness import aopc
from mlx_models.explain.gradients import baseline_ids, integrated_gradients
from mlx_models.explain.perturbation import Shap, occlusion
from mlx_models.explain.runner import Example, Options, explain_examples, scorer_for
from mlx_models.explain.words import join_words, keep_tokens
from mlx_models.export.fuse import fuse
from mlx_models.interop.loading import read_config
from mlx_models.io import OUTPUT_MARKER
from mlx_models.models.lora import LoRALinear
from mlx_models.parity.reference import torch_model
from mlx_models.train.config import TrainConfig, load_train_config, save_train_config
from mlx_models.train.tfidf import run_tfidf
from mlx_models.train.trained import load_trained
from sentiment import sentiment_splits, write_splits

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--n", "8", "--steps", "16", "--shap-evals", "64", "--random-draws", "2"]


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory) -> dict[str, Path]:
    """A full BERT run with iter-4/8/12, a Llama QLoRA run, a RoBERTa LoRA run, a TF-IDF run."""
    root = tmp_path_factory.mktemp("explain-runs")
    data = write_splits(root / "data", sentiment_splits())
    model = lambda t: str(tiny(t, "classify", num_labels=2)[1])  # noqa: E731
    common = ["--data-dir", str(data), "--max-length", "32", "--batch-size", "8"]
    out = {name: root / name for name in ("bert", "llama-qlora", "roberta-lora", "tfidf")}
    steps = ["--max-steps", "12", "--eval-every", "4", "--save-every", "4"]
    trainer.run(load_train_config(["--model", model("bert"), *common, *steps, "--out", str(out["bert"])]))
    qlora = ["--lora", "--quantize", "4", "--max-steps", "8", "--learning-rate", "5e-3"]
    trainer.run(
        load_train_config(["--model", model("llama"), *common, *qlora, "--out", str(out["llama-qlora"])])
    )
    lora = ["--lora", "--max-steps", "8", "--learning-rate", "5e-3"]
    roberta = ["--model", model("roberta"), *common, *lora, "--out", str(out["roberta-lora"])]
    trainer.run(load_train_config(roberta))
    run_tfidf(load_train_config(["--model", "tfidf", "--data-dir", str(data), "--out", str(out["tfidf"])]))
    return out


def explain(argv: list[str]) -> int:
    return run_cli(main, argv)


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "attributions.jsonl").read_text().splitlines()]


def test_every_checkpoint_and_the_tfidf_baseline(runs, tmp_path, capsys):
    out = tmp_path / "explained"
    argv = [str(runs["bert"]), str(runs["tfidf"]), "--checkpoint", "all", "--method", "ig,occlusion", *FAST]
    assert explain([*argv, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        OUTPUT_MARKER,
        "attributions.jsonl",
        "index.html",
        "summary.json",
        "summary.md",
    ]
    records = read_records(out)
    columns = list(dict.fromkeys((r["run"], r["checkpoint"]) for r in records))
    bert = [("bert", c) for c in ("iter-4", "iter-8", "iter-12", "best", "last")]
    assert columns == bert + [("tfidf", "best"), ("tfidf", "last")]
    assert len(records) == len(columns) * 8
    for r in records:
        methods = ["linear", "occlusion"] if r["run"] == "tfidf" else ["ig", "occlusion"]
        assert list(r["scores"]) == methods and list(r["faithfulness"]) == [*methods, "random"]
        assert all(len(s) == len(r["words"]) for s in r["scores"].values())
        assert r["probability"] == max(r["probabilities"]) and r["target"] == r["prediction"]
        if r["run"] == "bert":
            assert len(r["token_scores"]["ig"]) == len(r["tokens"]) == len(r["token_words"])
            ig = r["completeness"]
            assert ig["gap"] <= 1e-3 * abs(ig["f_input"] - ig["f_baseline"]) + 1e-7
    by = {(r["run"], r["checkpoint"], r["example"]): r for r in records}
    assert by[("bert", "last", 3)]["scores"] == by[("bert", "iter-12", 3)]["scores"]  # same weights
    assert by[("bert", "iter-4", 3)]["scores"] != by[("bert", "iter-12", 3)]["scores"]
    summary = json.loads((out / "summary.json").read_text())
    drift = summary["drift"]["bert/ig"]
    assert [d["checkpoint"] for d in drift] == ["iter-4", "iter-8", "iter-12", "best", "last"]
    assert drift[1]["vs_previous"]["n"] > 0 and drift[2]["vs_last"]["spearman"] == pytest.approx(1.0)
    assert 0 <= drift[0]["non_predictive"]["mass_share"] <= 1  # the TF-IDF run among RUN flags words
    page = (out / "index.html").read_text()
    assert all(f"<th>{run}/{c}</th>" in page for run, c in columns) and "rgba(" in page
    assert "<th>tfidf/best (linear)</th>" in page and "<h2>linear</h2>" not in page  # beside ig
    printed = capsys.readouterr().out
    assert "## Faithfulness" in printed and "## Drift across checkpoints: bert, ig" in printed


def test_qlora_attributions_equal_the_fused_model_and_captum(runs, tmp_path):
    run = open_run(runs["llama-qlora"], "best")
    _, path, _ = run.checkpoints[0]
    ours = scorer_for(load_trained(path), Options())
    assert any(isinstance(m, LoRALinear) for _, m in ours.model.named_modules())
    fused = load_model(fuse(run.path, tmp_path / "fused"), "classify")
    batch = padded_batch(ours.tokenizer, SENTENCES)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    base = baseline_ids(ids, np.isin(ids, ours.tokenizer.all_special_ids) | (mask == 0), ours.pad_id)
    target = np.array([0, 1, 1, 0])
    args = (mx.array(ids), mx.array(mask), mx.array(target), mx.array(base))
    lora, dense = integrated_gradients(ours.model, *args), integrated_gradients(fused, *args)
    assert rel_err(lora.per_dim, dense.per_dim) <= 1e-4
    ref = torch_model(
        fused, read_config(tmp_path / "fused"), "classify", device="cpu", pad_token_id=ours.pad_id
    )
    assert rel_err(dense.per_dim, captum_ig(ref, ids, mask, base, target, "gauss-legendre")) <= 1e-4
    # ...and the adapters matter: without them the attributions are different.
    for _, m in ours.model.named_modules():
        if isinstance(m, LoRALinear):
            m.lora_b = mx.zeros_like(m.lora_b)
    assert rel_err(integrated_gradients(ours.model, *args).per_dim, dense.per_dim) > 1e-2


@pytest.mark.parametrize(
    "name,extra,first_token", [("llama-qlora", [], "<s>"), ("roberta-lora", ["--baseline", "mask"], "<s>")]
)
def test_lora_runs_through_the_cli(runs, tmp_path, name, extra, first_token):
    out = tmp_path / name
    argv = [str(runs[name]), "--method", "ig,grad-input,shap", *FAST, *extra, "--out", str(out)]
    assert explain(argv) == 0
    records = read_records(out)
    assert len(records) == 8 and all(set(r["scores"]) == {"ig", "grad-input", "shap"} for r in records)
    assert all(r["tokens"][0] == first_token and r["token_words"][0] == -1 for r in records)  # special
    for r in records:
        ig = r["completeness"]
        assert ig["gap"] <= 1e-3 * abs(ig["f_input"] - ig["f_baseline"]) + 1e-7
        # The words hold all the attribution: special tokens get none (the baseline keeps them).
        assert sum(s for s in r["scores"]["ig"] if s is not None) == pytest.approx(
            sum(r["token_scores"]["ig"]), abs=1e-6
        )


def test_shap_values_add_up(runs):
    """Efficiency: SHAP values + the fully masked text's score = the text's score."""
    text = "What a wonderful film, truly wonderful!"
    for name in ("bert", "tfidf"):
        run = open_run(runs[name], "best")
        model = scorer_for(load_trained(run.checkpoints[0][1]), Options())
        values, base = Shap(model.proba_texts, model.mask_token, max_evals=200)(text, 1)
        assert len(values) == 8  # the shared words
        assert values.sum() + base == pytest.approx(model.proba_texts([text])[0, 1], abs=1e-5), name
        masked = " ".join([model.mask_token] * 8)
        assert base == pytest.approx(model.proba_texts([masked])[0, 1], abs=1e-5), name


def one_text_at_a_time(scorer, e, o):
    """``proba_kept`` of one example through the model (or pipeline) itself, one variant at a time."""

    def proba_kept(keep):
        if hasattr(scorer, "pipeline"):
            return scorer.proba_texts([join_words(e.text, e.spans, k) for k in keep])
        seqs = [keep_tokens(o.tokens.ids, o.tokens.token_word, k) for k in keep]
        logits = [scorer.model(mx.array([s]))[0] for s in seqs]  # no padding
        return np.array(mx.softmax(mx.stack(logits).astype(mx.float32), axis=-1))

    return proba_kept


def test_batched_occlusion_and_deletions_equal_one_text_at_a_time(runs):
    """Occlusion and the faithfulness deletions score every text's variants in one batched,
    compiled pass; the scores equal each text scored alone through the model itself."""
    texts = ["What a wonderful film, truly wonderful!", "Dull.", "A long, slow and rather boring story."]
    examples = [Example(t, None) for t in texts]
    for name in ("bert", "tfidf"):
        scorer = scorer_for(load_trained(open_run(runs[name], "best").checkpoints[0][1]), Options())
        out = explain_examples(scorer, examples, ["occlusion"], "pred", Options(random_draws=2))
        for e, o in zip(examples, out, strict=True):
            alone, p = one_text_at_a_time(scorer, e, o), o.proba[o.target]
            want = occlusion(alone, o.seen, o.target, p)
            assert np.isfinite(want[o.seen]).all() and np.abs(want[o.seen]).max() > 0, name
            np.testing.assert_allclose(o.scores["occlusion"], want, atol=1e-5, err_msg=name)
            comp, suff = aopc(alone, [o.scores["occlusion"]], o.seen, o.target, p)[0]
            assert o.faithfulness["occlusion"] == pytest.approx((comp, suff), abs=1e-5), name


def test_texts_file_with_gold_labels(runs, tmp_path):
    texts = tmp_path / "texts.jsonl"
    rows = [{"text": "What a dull film!", "label": 1}, {"text": "The cast was wonderful.", "label": 0}]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "gold"
    assert explain([str(runs["tfidf"]), "--texts", str(texts), "--target", "gold", "--out", str(out)]) == 0
    records = read_records(out)
    assert [r["target"] for r in records] == [1, 0] and [r["label"] for r in records] == [1, 0]
    assert [r["prediction"] for r in records] == [0, 1]  # explained against its own prediction


def no_classifier_run(tmp_path: Path) -> Path:
    run = tmp_path / "mlm-run"
    (run / "best").mkdir(parents=True)
    save_train_config(TrainConfig(task="mlm", out=str(run)), run / "config.json")
    return run


BAD = {
    "run without a classifier": (lambda r, t: [str(no_classifier_run(t))], "has no classifier to explain"),
    "not a run directory": (lambda r, t: [str(t)], "is not a run directory written by train.py"),
    "unknown method": (lambda r, t: [str(r["bert"]), "--method", "ig,lime"], "unknown method 'ig,lime'"),
    "empty text file": (
        lambda r, t: [
            str(r["bert"]),
            "--texts",
            str((t / "empty.txt", (t / "empty.txt").write_text("\n"))[0]),
        ],
        "holds no texts",
    ),
    "text file not UTF-8": (
        lambda r, t: [
            str(r["bert"]),
            "--texts",
            str((t / "l1.txt", (t / "l1.txt").write_bytes(b"Tr\xe8s bon\n"))[0]),
        ],
        "is not UTF-8 text (byte 2: invalid continuation byte)",
    ),
    "missing checkpoint": (
        lambda r, t: [str(r["bert"]), "--checkpoint", "iter-99"],
        "has no checkpoint 'iter-99'",
    ),
    "bad checkpoint name": (
        lambda r, t: [str(r["bert"]), "--checkpoint", "first"],
        "is not best, last, iter-N",
    ),
    "gold without labels": (
        lambda r, t: [
            str(r["tfidf"]),
            "--texts",
            str((t / "a.txt", (t / "a.txt").write_text("Good.\n"))[0]),
            "--target",
            "gold",
        ],
        "--target gold needs a label",
    ),  # fmt: skip
    "linear on a transformer": (lambda r, t: [str(r["bert"]), "--method", "linear"], "the TF-IDF baseline's"),
    "one step": (lambda r, t: [str(r["bert"]), "--steps", "1"], "IG needs 2..10000, got 1"),
    "a billion steps": (
        lambda r, t: [str(r["bert"]), "--steps", "1e9"],
        "expected a whole number, got '1e9'",
    ),
    "negative seed": (lambda r, t: [str(r["bert"]), "--seed", "-1"], "4294967295, got -1"),
    "huge batch": (
        lambda r, t: [str(r["bert"]), "--batch-size", str(2**64)],
        "1..65536, got 18446744073709551616",
    ),
    "zero texts": (lambda r, t: [str(r["bert"]), "--n", "0"], "expected 1..10000000, got 0"),
    "mask baseline without a mask token": (
        lambda r, t: [str(r["llama-qlora"]), "--baseline", "mask"],
        "tokenizer has no mask token; use --baseline pad",
    ),
    "no --out": (lambda r, t: [str(r["bert"])], "--out"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(runs, tmp_path, capsys, case):
    make, message = BAD[case]
    out = tmp_path / "out"
    argv = make(runs, tmp_path) + ([] if case == "no --out" else ["--out", str(out)])
    before = sorted(tmp_path.iterdir())
    assert explain(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err, captured.err
    assert captured.out == "" and not out.exists() and sorted(tmp_path.iterdir()) == before


def test_existing_out_is_untouched(runs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert explain([str(runs["tfidf"]), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_exit_code_of_the_module(runs, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "mlx_models.explain",
        str(runs["bert"]),
        "--method",
        "lime",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: argument --method: unknown method")
    assert not out.exists()


def test_page_shows_every_text_whole_with_each_unseen_run_in_one_grey_span():
    import html
    import re

    from mlx_models.explain.report import _cell
    from mlx_models.explain.runner import Explained

    e = Example("Fine <film> & then truly a mess of a plot", 1)
    assert e.words == ["Fine", "<", "film", ">", "&", "then", "truly", "a", "mess", "of", "a", "plot"]
    nan = np.nan
    scores = np.array([0.5, -1.0, nan, nan, 0.25, nan, nan, nan, 0.0, nan, nan, nan])
    o = Explained(
        tokens=None, proba=np.array([0.3, 0.7]), target=1, seen=~np.isnan(scores), scores={"ig": scores}
    )
    cell = _cell(e, o, "ig", ["neg", "pos"])
    body = cell.split("</div>", 1)[1].removesuffix("</td>")
    assert html.unescape(re.sub(r"<[^>]+>", "", body)) == e.text  # the text, whole and in order
    unseen = re.findall(r'<span class="unseen">(.*?)</span>', body)
    assert [html.unescape(u) for u in unseen] == ["film>", "then truly a", "of a plot"]
    assert re.findall(r'title="([^"]+)"', body) == ["0.5", "-1", "0.25", "0"]
    assert "rgba(178,24,43,1.00)" in body and "predicts pos (0.70); explains pos" in cell
