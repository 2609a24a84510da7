"""A study's pretraining stage: a tiny RoBERTa pretrained from scratch with masked-LM on a dataset's
training split, as a cell of its own (run once, skipped when finished, resumed after a kill), then
finetuned by its cell; held-out texts never enter the pretraining; the report's pretraining row is
the stage's files; a failed stage fails its cell and the study goes on; bad entries exit 2."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
import yaml
from test_faults import wait_for
from test_study import run_study, snapshot, step_reached

from mlx_models.batching import encode
from mlx_models.cli import run_cli
from mlx_models.interop.loading import load_tokenizer
from mlx_models.registry import SHIPPED_CONFIG
from mlx_models.study import cli as study
from mlx_models.study.plan import load_plan
from mlx_models.train.build import load_data
from mlx_models.train.config import TrainConfig
from mlx_models.train.metrics import read_metrics
from sentiment import sentiment_splits, write_splits

ROOT = Path(__file__).resolve().parent.parent
TINY_ROBERTA = {  # 32 positions: max_position_embeddings = 32 + 2
    "model_type": "roberta", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 34,
    "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
}  # fmt: skip
TINY_LLAMA = {
    "model_type": "llama", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 64,
}  # fmt: skip
# Two phases, as BERT's recipe: 4096 tokens in 16-token blocks (32 steps of 8 blocks; a checkpoint
# and an evaluation every 4), then 2048 in 32-token blocks (8 steps), the cells' max_length.
PHASE1 = {"max_length": 16, "max_tokens": 4096, "batch_size": 8, "learning_rate": 1e-2}
PHASE1 |= {"warmup_steps": 2, "eval_every": 4, "save_every": 4}
PHASE2 = {"max_length": 32, "max_tokens": 2048, "batch_size": 8, "learning_rate": 5e-3, "eval_every": 4}
PRETRAIN = [PHASE1, PHASE2]
FINETUNE = {"max_length": 32, "batch_size": 8, "max_steps": 4, "learning_rate": 1e-3}
FIRST, SECOND = "pretrain/tiny-roberta-sent-phase1", "pretrain/tiny-roberta-sent-phase2"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A working directory with a config.yaml (the project's, a tiny RoBERTa and Llama architecture,
    test studies) and two datasets of a train file only (validation and test are held out of it)."""
    root = tmp_path_factory.mktemp("pretrain-study")
    rows = [row for split in sentiment_splits().values() for row in split]
    sent = write_splits(root / "sent", {"train": rows})
    letters = [{"text": t, "label": k % 2} for k, t in enumerate("abcdefghijklmnop")]
    few = {"train": letters[:4], "validation": letters[8:12], "test": letters[12:]}  # 12 tokens
    few = write_splits(root / "few", few)
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["models"] |= {"tiny-roberta": {"config": TINY_ROBERTA}, "tiny-llama": {"config": TINY_LLAMA}}
    one = {"models": ["tiny-roberta"], "datasets": [str(sent)], "overrides": FINETUNE, "analysis": False}
    one["pretrain"] = {"tiny-roberta": PRETRAIN}
    config["model_selection"]["studies"] = {
        "pre": one | {"models": ["tiny-roberta", "bag-of-words-tfidf"]},
        "killed": one,
        "starved": one | {"datasets": [str(few)]},  # too little text for two blocks: the stage fails
        "bad": one,  # edited by the bad-entry cases
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def pre(project):
    """The study run once: (exit code, stderr, study directory)."""
    log = project / "pre.log"
    with pytest.MonkeyPatch.context() as mp, log.open("w") as f:
        mp.chdir(project)
        mp.setattr(sys, "stderr", f)
        code = run_cli(lambda a: study.main(a, config_path=project / "config.yaml"), ["pre"])
    return code, log.read_text(), project / "results" / "study" / "pre"


def test_the_stages_run_before_their_cell_which_finetunes_the_last_ones_best(pre, project):
    code, err, study_dir = pre
    assert code == 0, err[-3000:]
    first, second, cell = study_dir / FIRST, study_dir / SECOND, study_dir / "runs" / "tiny-roberta-sent"
    data = f"--task mlm --dataset sent --data-dir {project / 'sent'}"
    command = f"[pretrain 1/2] {FIRST}: training: python train.py --model tiny-roberta --from-scratch {data}"
    assert f"{command} --max-length 16 --max-tokens 4096" in err
    command = f"[pretrain 2/2] {SECOND}: training: python train.py --model results/study/pre/{FIRST}/best"
    assert f"{command} {data} --max-length 32 --max-tokens 2048" in err
    best = f"results/study/pre/{SECOND}/best"
    assert f"[1/2] tiny-roberta-sent: training: python train.py --model {best} --dataset sent" in err
    order = [
        f"{FIRST}: finished",
        f"{SECOND}: training",
        f"{SECOND}: finished",
        "tiny-roberta-sent: training",
    ]
    assert sorted(order, key=err.index) == order and "[2/2] tfidf-sent: finished" in err
    for run in (first, second, cell):
        assert read_metrics(run)[-1]["split"] == "test"
    assert load_tokenizer(first / "init").get_vocab() == load_tokenizer(second / "best").get_vocab()
    finetuned = json.loads((cell / "config.json").read_text())
    assert (finetuned["model"], finetuned["task"], finetuned["max_length"]) == (best, "classify", 32)
    assert json.loads((cell / "best" / "config.json").read_text())["base_model"] == best
    # Each run starts from the one before (a weight the next run's few steps move little).
    key = "roberta.embeddings.word_embeddings.weight"
    weights = [mx.load(str(run / "best" / "model.safetensors"))[key] for run in (first, second, cell)]
    assert mx.abs(weights[2] - weights[1]).max().item() < 0.05
    assert mx.abs(weights[1] - weights[0]).max().item() < 0.5 * mx.abs(weights[0]).max().item()
    plan = json.loads((study_dir / "plan.json").read_text())
    stages = load_plan("pre", {}, project / "config.yaml").stages
    assert plan["pretraining"] == {stage.id: list(stage.args) for stage in stages}
    assert list(plan["pretraining"]) == ["tiny-roberta-sent-phase1", "tiny-roberta-sent-phase2"]
    status = json.loads((study_dir / "status.json").read_text())
    assert all(status[run]["status"] == "finished" and status[run]["wall_s"] > 0 for run in (FIRST, SECOND))


def test_held_out_texts_never_enter_the_pretraining(pre, project):
    """The stages' corpus is the training split the cell trains on: the cell's validation and test
    texts are not in it, and the tokens each stage packed into its blocks are those of that split."""
    _, err, study_dir = pre
    cell = TrainConfig.from_json(study_dir / "runs" / "tiny-roberta-sent" / "config.json")
    tokenizer = load_tokenizer(study_dir / SECOND / "best")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLX_MODELS_CONFIG", str(project / "config.yaml"))
        labelled = load_data(cell)
        corpora = [
            load_data(TrainConfig.from_json(study_dir / run / "config.json")) for run in (FIRST, SECOND)
        ]
    held_out = set(labelled.validation.texts) | set(labelled.test.texts)
    assert len(held_out) >= 28
    for corpus in corpora:
        assert not held_out & set(corpus.train.texts)
        assert sorted(corpus.train.texts) == sorted(labelled.train.texts)  # max_samples: none in either
        assert (corpus.validation.texts, corpus.test.texts) == (
            labelled.validation.texts,
            labelled.test.texts,
        )
    tokens = sum(map(len, encode(tokenizer, labelled.train.texts, None)))
    assert err.count(f"{tokens} training tokens in ") == 2  # what each stage packed into its batches


def test_report_pretraining_row_is_the_stages_files(pre):
    _, _, study_dir = pre
    report = json.loads((study_dir / "report.json").read_text())
    (row,) = report["pretraining"]
    phases = []
    for run, length, budget in ((FIRST, 16, 4096), (SECOND, 32, 2048)):
        records = read_metrics(study_dir / run)
        tokens = json.loads((study_dir / run / "last" / "trainer_state.json").read_text())["tokens"]
        assert tokens == max(r["tokens"] for r in records if r["split"] == "train")
        assert 0.9 * budget < tokens <= budget  # steps of 8 full blocks, but an epoch's last
        val = min(r["loss"] for r in records if r["split"] == "validation")
        phases.append({"run": run, "tokens": tokens, "max_length": length, "mlm_val_loss": val})
        phases[-1]["mlm_test_loss"] = records[-1]["loss"]
    assert [{k: p[k] for k in phases[0]} for p in row["phases"]] == phases
    weights = mx.load(str(study_dir / SECOND / "best" / "model.safetensors"))
    assert (row["model"], row["dataset"], row["run"]) == ("tiny-roberta", "sent", SECOND)
    assert (row["status"], row["reason"]) == ("finished", None)
    assert row["parameters"] == sum(w.size for w in weights.values()) > 25_000  # ~29 k
    assert row["tokens"] == phases[0]["tokens"] + phases[1]["tokens"]
    assert (row["max_length"], row["mlm_val_loss"]) == (32, phases[1]["mlm_val_loss"])
    assert row["mlm_test_loss"] == phases[1]["mlm_test_loss"]
    description = (
        f"a 2-layer, 32-hidden RoBERTa ({row['parameters'] / 1e6:.1f} M parameters) pretrained from scratch "
        f"by this study with masked-LM on sent's training split: {row['tokens'] / 1e6:.1f} M tokens "
        f"({phases[0]['tokens'] / 1e6:.1f} M of 16-token blocks, then {phases[1]['tokens'] / 1e6:.1f} M of "
        "32-token blocks); not roberta-base"
    )
    assert row["description"] == description
    cells = {r["cell"]: r for r in report["cells"]}
    assert cells["tiny-roberta-sent"]["pretrained_by_study"] == SECOND
    assert cells["tfidf-sent"]["pretrained_by_study"] is None
    markdown = (study_dir / "report.md").read_text()
    assert "## Pretrained by this study" in markdown and description in markdown
    assert f"masked-LM validation loss {row['mlm_val_loss']:.4f}" in markdown
    assert "| tiny-roberta (pretrained by this study) | sent | finished |" in markdown


def test_rerun_skips_the_finished_stages(pre, project, capsys, monkeypatch):
    _, _, study_dir = pre
    before = snapshot(study_dir / "pretrain")
    monkeypatch.setattr(study, "run_child", lambda *a: pytest.fail("a finished run was run again"))
    code, err = run_study(project, ["pre"], capsys)
    assert code == 0, err
    assert f"[pretrain 1/2] {FIRST}: finished earlier, skipped" in err
    assert f"[pretrain 2/2] {SECOND}: finished earlier, skipped" in err
    assert err.count("finished earlier, skipped") == 4
    assert snapshot(study_dir / "pretrain") == before
    # --only a model without a stage runs no stage
    code, err = run_study(project, ["pre", "--only", "bag-of-words-tfidf"], capsys)
    assert code == 0 and "pretrain" not in err, err


def test_killed_stage_resumes_to_the_same_metrics(pre, project, capsys):
    """The study killed with its first stage at a checkpoint; a re-run resumes it, ends where the
    uninterrupted one ended, then runs the second and finetunes."""
    study_dir = project / "results" / "study" / "killed"
    state = study_dir / FIRST / "last" / "trainer_state.json"
    env = os.environ | {"MLX_MODELS_CONFIG": str(project / "config.yaml"), "PYTHONPATH": str(ROOT)}
    with (project / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_models.study", "killed"],
            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    try:
        wait_for(proc, step_reached(state, 8))
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert 8 <= json.loads(state.read_text())["step"] < 32 and not (study_dir / SECOND).exists()
    code, err = run_study(project, ["killed"], capsys)
    assert code == 0, err[-3000:]
    assert f"[pretrain 1/2] {FIRST}: resuming: python train.py --resume results/study/killed/{FIRST}" in err
    assert (
        f"[pretrain 2/2] {SECOND}: training: python train.py --model results/study/killed/{FIRST}/best" in err
    )
    assert "[1/1] tiny-roberta-sent: training: python train.py --model results/study/killed/" in err

    def key(r):
        return {k: r.get(k) for k in ("split", "step", "tokens", "loss", "accuracy", "running_loss")}

    for run in (FIRST, SECOND):
        a = [key(r) for r in read_metrics(pre[2] / run)]
        b = [key(r) for r in read_metrics(study_dir / run)]
        assert [(r["split"], r["step"]) for r in b] == [(r["split"], r["step"]) for r in a]
        for ra, rb in zip(a, b, strict=True):
            assert rb == pytest.approx(ra, abs=1e-6), (run, ra, rb)
    status = json.loads((study_dir / "status.json").read_text())
    assert status[FIRST]["attempts"] == 1 and status[FIRST]["status"] == "finished"


def test_failed_stage_fails_what_goes_on_from_it_and_the_study_goes_on(project, capsys):
    code, err = run_study(project, ["starved"], capsys)
    study_dir = project / "results" / "study" / "starved"
    assert code == 1, err[-3000:]
    status = json.loads((study_dir / "status.json").read_text())
    first, second, cell = (
        status[k]
        for k in ("pretrain/tiny-roberta-few-phase1", "pretrain/tiny-roberta-few-phase2", "tiny-roberta-few")
    )
    assert first["status"] == "failed" and first["exit_code"] == 2
    assert "less than two blocks of max_length 16" in first["reason"]
    reason = f"pretraining failed (pretrain/tiny-roberta-few-phase1): {first['reason']}"
    assert (second["status"], second["reason"], cell["status"], cell["reason"]) == (
        "failed",
        reason,
        "failed",
        reason,
    )
    assert not (study_dir / "pretrain").exists() and not (study_dir / "runs").exists()
    report = json.loads((study_dir / "report.json").read_text())
    assert (report["cells"][0]["status"], report["cells"][0]["reason"]) == ("failed", reason)
    (row,) = report["pretraining"]
    assert (row["status"], row["reason"], row["description"]) == ("failed", first["reason"], None)
    assert "## Failed cells" in (study_dir / "report.md").read_text()
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("study starved: 0 of 1 cells finished, failed: tiny-roberta-few")


def test_a_changed_pretraining_is_another_study(pre, project, capsys):
    _, _, study_dir = pre
    before = snapshot(study_dir)
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["model_selection"]["studies"]["pre"]["pretrain"]["tiny-roberta"][1]["max_tokens"] = 4096
    other = project / "other.yaml"
    other.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        code = run_cli(lambda a: study.main(a, config_path=other), ["pre"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"was run with a different selection: cell {SECOND} as `" in err and "--max-tokens 4096" in err
    assert snapshot(study_dir) == before


def _pretrain(**changes):
    def edit(entry):
        entry["pretrain"]["tiny-roberta"] = [{**PHASE1, **changes}, PHASE2]

    return edit


BAD_ENTRIES = {
    "a model the study does not select": (
        lambda e: e.update(pretrain={"minilm-l6": PRETRAIN}),
        "pretrain in model_selection.studies.bad in ",
        "names 'minilm-l6', which the study does not select (tiny-roberta)",
    ),
    "the tfidf baseline": (
        lambda e: e.update(models=["tiny-roberta", "tfidf"], pretrain={"tfidf": PRETRAIN}),
        "pretrain.tfidf: tfidf is the bag-of-words baseline: it has no network to pretrain",
    ),
    "a decoder": (
        lambda e: e.update(models=["tiny-llama"], pretrain={"tiny-llama": PRETRAIN}),
        "tiny-llama is a llama model, which has no masked-LM head (its heads: base, classify, lm)",
    ),
    "a model without an architecture": (
        lambda e: e.update(models=["smollm2-135m"], pretrain={"smollm2-135m": PRETRAIN}),
        "pretrain.smollm2-135m: --from-scratch needs the architecture of smollm2-135m",
    ),
    "the task": (_pretrain(task="lm"), "task cannot be set in model_selection.studies.bad in "),
    "from-scratch and the output": (
        _pretrain(**{"from-scratch": False, "out": "x"}),
        "from_scratch, out cannot be set in ",
        "the study sets them (--model tiny-roberta --from-scratch --task mlm",
    ),
    "the dataset": (_pretrain(dataset="imdb"), "dataset cannot be set in "),
    "an unknown key": (_pretrain(max_token=5), "unknown training key 'max_token' in "),
    "a bad value": (
        _pretrain(max_tokens=-5),
        "pretraining pretrain/tiny-roberta-sent-phase1: invalid training config: max_tokens must be >= 1",
    ),
    "no token budget": (
        _pretrain(max_tokens=None),
        "pretrain.tiny-roberta[0] needs a token budget: set max_tokens",
    ),
    "LoRA": (_pretrain(lora=True), "--from-scratch trains every weight"),
    "too few positions for the stage": (
        _pretrain(max_length=64),
        "the pretraining max_length 64 is longer than the 32 positions of tiny-roberta",
    ),
    "too few positions for the second phase": (
        lambda e: e["pretrain"]["tiny-roberta"][1].update(max_length=40),
        "pretrain/tiny-roberta-sent-phase2: the pretraining max_length 40 is longer than the 32 positions",
    ),
    "an architecture in the second phase": (
        lambda e: e["pretrain"]["tiny-roberta"][1].update(model_config="hidden_size=64"),
        "pretrain/tiny-roberta-sent-phase2: invalid training config: --model-config and --tokenizer only "
        "apply with --from-scratch",
    ),
    "no phase": (lambda e: e.update(pretrain={"tiny-roberta": []}), "pretrain.tiny-roberta lists no phase"),
    "too few positions for the cell": (
        lambda e: e["overrides"].update(max_length=40),
        "the finetuning max_length 40 is longer than the 32 positions of tiny-roberta",
    ),
    "not a mapping": (
        lambda e: e.update(pretrain=["tiny-roberta"]),
        "pretrain in model_selection.studies.bad in ",
    ),
    "keys not a mapping": (
        lambda e: e.update(pretrain={"tiny-roberta": 5}),
        "pretrain.tiny-roberta must map training keys",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_bad_pretraining_entries_exit_2_with_one_line_and_write_nothing(project, tmp_path, capsys, case):
    edit, *messages = BAD_ENTRIES[case]
    config = yaml.safe_load((project / "config.yaml").read_text())
    edit(config["model_selection"]["studies"]["bad"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    code, err = run_study(tmp_path, ["bad"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for message in messages:
        assert message in err, err
    assert not (tmp_path / "results").exists()


def test_one_phase_is_a_mapping(project, tmp_path):
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["model_selection"]["studies"]["bad"]["pretrain"]["tiny-roberta"] = PHASE2
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    plan = load_plan("bad", {}, tmp_path / "config.yaml")
    (stage,) = plan.stages
    assert (stage.run, stage.key, stage.pretrained) == ("pretrain/tiny-roberta-sent",) * 2 + (None,)
    assert stage.args[:3] == ("--model", "tiny-roberta", "--from-scratch")
    assert plan.cells[0].pretrained == stage.run
    assert plan.cells[0].args[:2] == ("--model", "results/study/bad/pretrain/tiny-roberta-sent/best")


def test_the_embedded_study_pretrains_roberta_mini():
    plan = load_plan("embedded", {}, SHIPPED_CONFIG)
    runs = ["pretrain/roberta-mini-imdb-phase1", "pretrain/roberta-mini-imdb-phase2"]
    assert [s.run for s in plan.stages] == runs
    first, second = (s.args for s in plan.stages)
    assert first[:7] == ("--model", "roberta-mini", "--from-scratch", "--task", "mlm", "--dataset", "imdb")
    assert second[:2] == ("--model", f"results/study/embedded/{runs[0]}/best")
    assert "--max-tokens" in first + second and "--max-samples" not in first + second  # all of train
    cell = next(c for c in plan.cells if c.model == "roberta-mini")
    assert cell.args[:2] == ("--model", f"results/study/embedded/{runs[1]}/best")
    assert cell.pretrained == runs[1]
    assert plan.stages_of([cell]) == plan.stages
    assert plan.stages_of([c for c in plan.cells if c.model != "roberta-mini"]) == []
