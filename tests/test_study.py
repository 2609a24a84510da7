"""The study in one command: a 2 model x 2 dataset study of a tiny BERT and the tfidf baseline on
local sentiment data runs each cell as its own train.py, skips finished cells, resumes a killed
one to the same metrics, records a failing one and still reports, and refuses bad input."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_faults import wait_for

from mlx_models.cli import run_cli
from mlx_models.registry import SHIPPED_CONFIG
from mlx_models.study import cli as study
from mlx_models.study.plan import load_plan
from mlx_models.study.report import gap
from mlx_models.train.config import load_train_config
from mlx_models.train.metrics import read_metrics
from sentiment import sentiment_splits, write_splits

ROOT = Path(__file__).resolve().parent.parent
# As tests/test_train.py's resume test: 32 steps of 4, checkpoints and evaluations every 4 steps.
TRAIN = {"max_length": 32, "batch_size": 4, "max_steps": 32, "eval_every": 4, "save_every": 4}
TRAIN |= {"learning_rate": 1e-3}
ANALYSIS = {"probe": 8, "members": 32, "steps": 4}  # every checkpoint on 8 of the 32 test texts


@pytest.fixture(scope="module")
def project(tiny, tmp_path_factory):
    """A working directory with a config.yaml (the project's, plus test studies), two datasets,
    one with bad labels, and a tiny converted BERT named tiny-bert."""
    root = tmp_path_factory.mktemp("study")
    model = shutil.copytree(tiny("bert", "classify", num_labels=2)[1], root / "tiny-bert")
    data = {
        name: write_splits(root / name, sentiment_splits(seed)) for name, seed in (("sent", 0), ("sent2", 1))
    }
    bad = sentiment_splits()
    bad["test"] = [*bad["test"][:-1], {"text": "Fine.", "label": -1}]  # a label out of range
    data["bad"] = write_splits(root / "bad", bad)
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    grid = {"models": [str(model), "bag-of-words-tfidf"], "datasets": [str(data["sent"]), str(data["sent2"])]}
    config["model_selection"]["studies"] = {
        "grid": grid | {"overrides": TRAIN, "analysis": False},  # the analysis: test_study_analysis.py
        "killed": {
            "models": [str(model)],
            "datasets": [str(data["sent"])],
            "overrides": TRAIN,
            "analysis": False,
        },
        "stopped": {
            "models": [str(model)],
            "datasets": [str(data["sent"])],
            "overrides": TRAIN,
            "analysis": False,
        },
        "broken": {
            "models": ["tfidf"],
            "datasets": [str(data["bad"]), str(data["sent"])],
            "analysis": ANALYSIS,
        },
        "restart": {"models": ["tfidf"], "datasets": [str(data["sent"])], "analysis": False},
        "no-models": {"models": [], "datasets": ["imdb"]},
        "no-datasets": {"models": ["tfidf"], "datasets": []},
        "unknown-model": {"models": ["tfidf", "no-such-model"], "datasets": ["imdb"]},
        "unknown-dataset": {"models": ["tfidf"], "datasets": ["imdb", "no-such-data"]},
        "bad-value": {"models": ["tfidf"], "datasets": ["imdb"], "overrides": {"max_samples": -1}},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def step_reached(state: Path, step: int):
    """For test_faults.wait_for: true once trainer_state.json ``state`` records ``step``."""

    def reached():
        try:
            return json.loads(state.read_text())["step"] >= step or None
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    return reached


def run_study(project: Path, argv: list[str], capsys) -> tuple[int, str]:
    """The study CLI in-process, in the project directory; (exit code, stderr)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        code = run_cli(lambda a: study.main(a, config_path=project / "config.yaml"), argv)
    return code, capsys.readouterr().err


def snapshot(path: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def grid(project):
    """The 2 x 2 study run once: (exit code, stderr, study directory)."""
    log = project / "grid.log"
    with pytest.MonkeyPatch.context() as mp, log.open("w") as f:
        mp.chdir(project)
        mp.setattr(sys, "stderr", f)  # the study's stderr, its cells' included
        code = run_cli(lambda a: study.main(a, config_path=project / "config.yaml"), ["grid"])
    return code, log.read_text(), project / "results" / "study" / "grid"


def test_grid_study_trains_every_cell_as_train_py_would(grid, project):
    code, err, study_dir = grid
    assert code == 0, err[-3000:]
    cells = ["tiny-bert-sent", "tiny-bert-sent2", "tfidf-sent", "tfidf-sent2"]
    for k, cell in enumerate(cells, 1):
        assert f"[{k}/4] {cell}: training: python train.py --model " in err
        assert f"[{k}/4] {cell}: finished" in err
    plan = load_plan("grid", {}, project / "config.yaml")
    assert [c.id for c in plan.cells] == cells
    for cell in plan.cells:
        run_dir = study_dir / "runs" / cell.id
        assert [r["split"] for r in read_metrics(run_dir)][-1] == "test"
        # The cell's resolved config is the one train.py alone resolves from the same arguments.
        alone = load_train_config([*cell.args, "--out", str(project / "elsewhere")], project / "config.yaml")
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["out"] == f"results/study/grid/runs/{cell.id}"
        assert saved == json.loads(json.dumps(dataclasses.asdict(alone) | {"out": saved["out"]})), cell.id
    assert {"max_steps": 32, "data_dir": str(project / "sent2")}.items() <= saved.items()
    for name in ("plan.json", "status.json", "report.md", "report.json"):
        assert (study_dir / name).is_file()
    assert (study_dir / "comparison.png").stat().st_size > 20_000


def test_report_numbers_are_those_of_each_runs_metrics(grid):
    _, _, study_dir = grid
    report = json.loads((study_dir / "report.json").read_text())
    status = json.loads((study_dir / "status.json").read_text())
    markdown = (study_dir / "report.md").read_text()
    assert len(report["cells"]) == 4
    for row in report["cells"]:
        records = read_metrics(study_dir / row["run"])
        test = records[-1]
        val = [r for r in records if r["split"] == "validation"]
        train = {r["step"]: r for r in records if r["split"] == "train"}
        losses = [r["loss"] for r in val]
        best = val[losses.index(min(losses))]
        assert row["status"] == "finished" and row["reason"] is None
        assert (row["test_accuracy"], row["test_f1"]) == (test["accuracy"], test["f1"])
        assert (row["best_val_loss"], row["best_step"]) == (min(losses), test["step"])
        assert row["last_val_loss"] == losses[-1]
        assert row["gap_best"] == best["loss"] - train[best["step"]]["loss"]
        assert row["gap_last"] == val[-1]["loss"] - train[val[-1]["step"]]["loss"]
        assert row["gap_last"] == gap(val[-1], train)
        assert row["wall_s"] == status[row["cell"]]["wall_s"] > 0
        assert row["max_rss_gb"] == status[row["cell"]]["max_rss_gb"] > 0.05
        if row["model"] == "tfidf":
            assert len(val) == 1 and row["tokens_per_s"] is None and row["peak_gb"] is None
        else:
            assert [r["step"] for r in val] == list(range(4, 33, 4))
            assert row["tokens_per_s"] == train[32]["tokens_per_s"] > 0
            assert row["peak_gb"] == max(r["peak_gb"] for r in records if "peak_gb" in r)
        line = next(
            line for line in markdown.splitlines() if f"| {row['dataset']} |" in line and row["run"] in line
        )
        assert f"| {test['accuracy']:.4f} | {test['f1']:.4f} | {min(losses):.4f} |" in line, line
        assert f"]({row['run']}/)" in line


def test_rerun_skips_finished_cells(grid, project, capsys, monkeypatch):
    _, _, study_dir = grid
    runs = snapshot(study_dir / "runs")
    monkeypatch.setattr(study, "run_child", lambda *a: pytest.fail("a finished cell was run again"))
    code, err = run_study(project, ["--study", "grid"], capsys)
    assert code == 0, err
    assert err.count("finished earlier, skipped") == 4
    assert snapshot(study_dir / "runs") == runs


def test_train_py_study_entry_with_narrowing(grid, project):
    """`python train.py --study` in a child process: the config path travels by MLX_MODELS_CONFIG."""
    env = os.environ | {"MLX_MODELS_CONFIG": str(project / "config.yaml")}
    argv = ["--study", "grid", "--only", "bag-of-words-tfidf", "--datasets", "sent2"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *argv], cwd=project, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "[1/1] tfidf-sent2: finished earlier, skipped" in proc.stderr


@pytest.mark.parametrize("how", ["SIGKILL to the study and its cell", "SIGTERM to the study"])
def test_stopped_study_resumes_the_cell_to_the_same_metrics(grid, project, capsys, how):
    """The study killed (with its cell) or terminated mid-cell; a re-run resumes the cell from its
    checkpoint and ends where the uninterrupted grid cell ended."""
    name = "killed" if how.startswith("SIGKILL") else "stopped"
    study_dir = project / "results" / "study" / name
    state = study_dir / "runs" / "tiny-bert-sent" / "last" / "trainer_state.json"
    env = os.environ | {"MLX_MODELS_CONFIG": str(project / "config.yaml"), "PYTHONPATH": str(ROOT)}
    with (project / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_models.study", name],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a SIGKILL reaches the cell too
        )

    try:
        wait_for(proc, step_reached(state, 8))
        if name == "killed":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # the study passes it on: the cell saves last/ and stops, the study reports and stops
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 143, (project / f"{name}.log").read_text()[-3000:]
            status = json.loads((study_dir / "status.json").read_text())["tiny-bert-sent"]
            assert (status["status"], status["exit_code"]) == ("interrupted", 143)
            row = json.loads((study_dir / "report.json").read_text())["cells"][0]
            assert row["status"] == "interrupted" and row["test_accuracy"] is None
    finally:
        proc.kill()
        proc.wait()
    killed = json.loads(state.read_text())["step"]
    assert 8 <= killed < 32
    code, err = run_study(project, [name], capsys)
    assert code == 0, err[-3000:]
    assert (
        f"[1/1] tiny-bert-sent: resuming: python train.py --resume results/study/{name}/runs/tiny-bert-sent"
        in err
    )

    # SIGTERM stops between evaluations; the mean training loss of that window (running_loss) then
    # covers only the steps after the resume: a property of train.py's resume, not of the study.
    keys = ("split", "step", "loss", "accuracy", "f1") + (("running_loss",) if name == "killed" else ())

    def key(r):
        return {k: r.get(k) for k in keys}

    a = [key(r) for r in read_metrics(grid[2] / "runs" / "tiny-bert-sent")]
    b = [key(r) for r in read_metrics(study_dir / "runs" / "tiny-bert-sent")]
    assert [(r["split"], r["step"]) for r in b] == [(r["split"], r["step"]) for r in a]
    for ra, rb in zip(a, b, strict=True):
        assert rb == pytest.approx(ra, abs=1e-6), (ra, rb)
    row = json.loads((study_dir / "report.json").read_text())["cells"][0]
    assert row["status"] == "finished" and row["test_accuracy"] == b[-1]["accuracy"]


def test_cell_stopped_before_its_first_checkpoint_is_restarted(project, capsys):
    study_dir = project / "results" / "study" / "restart"
    plan = load_plan("restart", {}, project / "config.yaml")
    stale = study_dir / "runs" / "tfidf-sent"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # what a run killed before its first save leaves
    (study_dir / "plan.json").write_text(json.dumps(plan.describe()))
    code, err = run_study(project, ["restart"], capsys)
    assert code == 0, err
    assert "[1/1] tfidf-sent: stopped before its first checkpoint; starting it again" in err
    assert read_metrics(stale)[-1]["split"] == "test"
    assert json.loads((stale / "config.json").read_text())["model"] == "tfidf"


def test_failing_cell_is_recorded_and_the_study_goes_on(project, capsys):
    code, err = run_study(project, ["broken"], capsys)
    study_dir = project / "results" / "study" / "broken"
    assert code == 1
    reason = "labels [-1] out of range for num_labels=2"
    assert "[1/2] tfidf-bad: failed: " in err and "[2/2] tfidf-sent: finished" in err
    status = json.loads((study_dir / "status.json").read_text())
    assert status["tfidf-bad"]["status"] == "failed" and status["tfidf-bad"]["exit_code"] == 2
    assert reason in status["tfidf-bad"]["reason"] and "\n" not in status["tfidf-bad"]["reason"]
    rows = {r["cell"]: r for r in json.loads((study_dir / "report.json").read_text())["cells"]}
    assert rows["tfidf-bad"]["status"] == "failed" and reason in rows["tfidf-bad"]["reason"]
    assert rows["tfidf-bad"]["test_accuracy"] is None
    assert rows["tfidf-sent"]["status"] == "finished" and rows["tfidf-sent"]["test_accuracy"] > 0.5
    markdown = (study_dir / "report.md").read_text()
    assert "## Failed cells" in markdown and f"`tfidf-bad`: {status['tfidf-bad']['reason']}" in markdown
    assert not (study_dir / "runs" / "tfidf-bad").exists()
    assert (study_dir / "comparison.png").stat().st_size > 10_000
    assert err.rstrip().splitlines()[-1].startswith("study broken: 1 of 2 cells finished, failed: tfidf-bad")


BAD = {
    "unknown model": (
        ["unknown-model"],
        "unknown model 'no-such-model' in model_selection.studies.unknown-model",
    ),
    "unknown dataset": (["unknown-dataset"], "unknown dataset 'no-such-data' in model_selection.studies"),
    "empty models": (
        ["no-models"],
        "the study selects no models; list them in model_selection.studies.no-models.models",
    ),
    "empty datasets": (["no-datasets"], "the study selects no datasets"),
    "unknown study": (["no-such-study"], "unknown study 'no-such-study'; studies in"),
    "no study": ([], "name one study: --study NAME"),
    "bad override": (["bad-value"], "max_samples must be >= 1 (got -1)"),
    "model on the command line": (["grid", "--model", "tfidf"], "model cannot be given with --study"),
    "unknown train option": (["grid", "--learning-rat", "1"], "unknown training key '--learning-rat'"),
    "--only outside the study": (["grid", "--only", "minilm-l6"], "--only (study grid: "),
    "--datasets outside the study": (
        ["grid", "--datasets", "imdb"],
        "--datasets names imdb, which study grid",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(project, tmp_path, capsys, case):
    argv, message = BAD[case]
    shutil.copy(project / "config.yaml", tmp_path / "config.yaml")
    code, err = run_study(tmp_path, argv, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "results").exists()


def test_a_study_name_with_a_different_selection_exits_2(grid, project, capsys):
    _, _, study_dir = grid
    before = snapshot(study_dir)
    code, err = run_study(project, ["grid", "--max-samples", "10"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: study grid in results/study/grid was run with a different selection: cell ")
    assert "--max-samples 10`" in err and "choose another study name, or remove results/study/grid" in err
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["model_selection"]["studies"]["grid"]["datasets"].pop()
    other = project / "narrower.yaml"
    other.write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        code = run_cli(lambda a: study.main(a, config_path=other), ["grid"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert (
        "was run with a different selection: cells now left out ['tfidf-sent2', 'tiny-bert-sent2']; " in err
    )
    assert snapshot(study_dir) == before


def test_failure_reason_is_one_line():
    assert study.failure_reason(2, "train: 10%\rnote: x\nerror: no label column 'label'\n") == (
        "no label column 'label'"
    )
    assert study.failure_reason(-signal.SIGKILL, "train: 50%|") == (
        "killed by SIGKILL (the system's out-of-memory killer?)"
    )
    assert study.failure_reason(1, "Traceback ...\nRuntimeError: boom\n") == "exit code 1: RuntimeError: boom"


SELECTION_CASES = {
    "a typo in a study": (
        lambda sel: sel["studies"]["grid"].update(dataset=["imdb"]),
        "grid",
        "unknown key(s) dataset in model_selection.studies.grid in ",
    ),
    "an empty plan selection": (
        lambda sel: sel.update(selected_models=[]) or sel["studies"].update(plan={"datasets": ["imdb"]}),
        "plan",
        "the study selects no models; list them in model_selection.selected_models in ",
    ),
    "an unknown analysis method": (
        lambda sel: sel["studies"]["grid"].update(analysis={"methods": ["ig", "lime"]}),
        "grid",
        "model_selection.studies.grid.analysis.methods must list methods of ig, grad-input, occlusion, shap",
    ),
    "an unknown analysis key": (
        lambda sel: sel["studies"]["grid"].update(analysis={"probes": 5}),
        "grid",
        "unknown key 'probes' in model_selection.studies.grid.analysis; known: methods, probe, members",
    ),
    "a probe larger than the test split": (
        lambda sel: sel["studies"]["grid"].update(analysis={"probe": 33}),
        "grid",
        "study grid: analysis.probe is 33 but sent's test split has 32 texts; lower analysis.probe to at "
        "most 32",
    ),
    "a probe of no texts": (
        lambda sel: sel["studies"]["grid"].update(analysis={"probe": 0}),
        "grid",
        "model_selection.studies.grid.analysis.probe must be an integer of at least 1, got 0",
    ),
    "an analysis that is not a mapping": (
        lambda sel: sel["studies"]["grid"].update(analysis=3),
        "grid",
        "model_selection.studies.grid.analysis must map methods, probe, members, steps, random_draws",
    ),
    "a plan name mapped to no alias": (
        lambda sel: sel["aliases"].update({"bag-of-words-tfidf": "tf-idf"}),
        "grid",
        "maps 'bag-of-words-tfidf' to 'tf-idf', which is not an alias of models:",
    ),
}


@pytest.mark.parametrize("case", list(SELECTION_CASES))
def test_model_selection_is_checked(project, tmp_path, capsys, case):
    edit, name, message = SELECTION_CASES[case]
    config = yaml.safe_load((project / "config.yaml").read_text())
    edit(config["model_selection"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    code, err = run_study(tmp_path, [name], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "results").exists()


def test_one_process_per_study(grid, project, capsys, hold_lock):
    """A study whose lock a live process holds is refused; a dead process's lock is taken over."""
    _, _, study_dir = grid
    lock = study_dir / ".running"
    holder = hold_lock(study_dir)
    before = snapshot(study_dir)
    code, err = run_study(project, ["grid"], capsys)
    assert (
        code == 2
        and err == f"error: study grid is already running (process {holder.pid}); wait for it or stop it\n"
    )
    assert snapshot(study_dir) == before
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder.kill()
    holder.wait()
    lock.write_text(dead.stdout.strip())  # what a killed study leaves: a file no one holds
    code, err = run_study(project, ["grid"], capsys)
    assert code == 0 and err.count("finished earlier, skipped") == 4, err
    assert not lock.exists() and not list(study_dir.glob(".running*"))
