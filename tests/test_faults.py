"""Faults: kills during convert and during checkpoint writes, runs killed before their first
checkpoint, and a full disk. After each, the next command leaves nothing stray behind, and a
resumed run reaches the same test metrics as an uninterrupted one."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

import train
from hf_fixtures import make_hf_model
from mlx_models.cli import run_cli
from mlx_models.interop.conversion import convert
from mlx_models.train import run_dir as rd
from mlx_models.train.config import load_train_config
from mlx_models.train.metrics import read_metrics
from mlx_models.train.trainer import run as train_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(sentiment) -> Path:
    return sentiment


@pytest.fixture(scope="module")
def model(bert_classifier) -> str:
    return bert_classifier


@pytest.fixture(scope="module")
def big_hf(tmp_path_factory) -> Path:
    """A BERT large enough (~30 MB) that converting it takes a moment: something to kill."""
    shape = {"hidden_size": 384, "num_hidden_layers": 4, "intermediate_size": 1536, "num_attention_heads": 6}
    return make_hf_model(tmp_path_factory.mktemp("big") / "hf", "bert", "base", **shape)


SMALL_SHARDS = ["--max-shard-size", "0.004"]  # shards written one after another: a kill lands among them


def stray(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}."))


def start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def wait_for(proc: subprocess.Popen, found, timeout: float = 120.0):
    """Poll until ``found()`` returns something; the process must still be running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (hit := found()) is not None:
            return hit
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before the moment to kill it")
        time.sleep(0.002)
    proc.kill()
    pytest.fail("timed out waiting for the moment to kill the process")


def shard_in_temp(parent: Path, name: str):
    def found():
        for tmp in parent.glob(f".{name}.*.tmp"):
            if any(tmp.glob("shard-*.safetensors")):
                return tmp
        return None

    return found


# --- convert ---------------------------------------------------------------------------------------


def test_sigkill_during_convert_then_convert_again(big_hf, tmp_path):
    out = tmp_path / "out"
    proc = start(
        ["convert.py", str(big_hf), "--out", str(out), "--max-shard-size", "0.004"], tmp_path / "log"
    )
    wait_for(proc, shard_in_temp(tmp_path, "out"))  # shards are being written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert stray(tmp_path, "out") and not out.exists()  # what a kill leaves: a temp dir, no output
    convert(str(big_hf), out, progress=False)  # the next convert to the same path clears it
    assert stray(tmp_path, "out") == [] and (out / "config.json").exists()


def test_sigterm_during_convert_cleans_up(big_hf, tmp_path):
    out = tmp_path / "out"
    proc = start(
        ["convert.py", str(big_hf), "--out", str(out), "--max-shard-size", "0.004"], tmp_path / "log"
    )
    wait_for(proc, shard_in_temp(tmp_path, "out"))
    proc.send_signal(signal.SIGTERM)
    code, log = proc.wait(timeout=60), (tmp_path / "log").read_text()
    assert code == 143, (code, log[-2000:])
    assert stray(tmp_path, "out") == [] and not out.exists(), (stray(tmp_path, "out"), log[-2000:])
    assert log.strip().splitlines()[-1] == "terminated", log[-2000:]


# --- training --------------------------------------------------------------------------------------


STEPS = 60  # 2.5 epochs of the 96 training sentences: a few seconds, time enough to be killed


def train_argv(model: str, data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["--model", model, "--data-dir", str(data), "--out", str(out), "--max-length", "32"]
    return [*argv, "--batch-size", "4", "--max-steps", str(STEPS), "--learning-rate", "1e-3", *extra]


@pytest.fixture(scope="module")
def uninterrupted(model, data, tmp_path_factory):
    """Test records of uninterrupted runs, by extra arguments."""
    done = {}

    def get(*extra: str) -> dict:
        if extra not in done:
            out = tmp_path_factory.mktemp("full") / "run"
            done[extra] = train_run(load_train_config(train_argv(model, data, out, *extra)))
        return done[extra]

    return get


def same_test_metrics(a: dict, b: dict) -> None:
    for k in ("loss", "accuracy", "f1", "step", "checkpoint"):
        assert b[k] == pytest.approx(a[k], abs=1e-6), k


def run_dir_entries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir())


def checkpoint_temp(run: Path):
    def found():
        hits = [p for p in run.glob(".*.tmp") if p.is_dir()] if run.exists() else []
        return hits[0] if hits else None

    return found


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_kill_during_checkpoint_write_then_resume(model, data, tmp_path, uninterrupted, sig):
    extra = ("--eval-every", "5", "--save-every", "5")
    run = tmp_path / "run"
    proc = start(["train.py", *train_argv(model, data, run, *extra)], tmp_path / "log")
    wait_for(proc, checkpoint_temp(run))  # a checkpoint is being written
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    if sig == signal.SIGTERM:  # stops at the next step boundary, after saving last/
        assert code == 143 and checkpoint_temp(run)() is None
        assert "stopped at step" in (tmp_path / "log").read_text()
    else:
        assert code == -signal.SIGKILL
    assert not [r for r in read_metrics(run) if r["split"] == "test"]
    result = train_run(load_train_config(["--resume", str(run)]))
    assert [n for n in run_dir_entries(run) if n.startswith(".")] == []  # nothing stray
    same_test_metrics(uninterrupted(*extra), result)


def test_run_killed_before_any_checkpoint_resumes_to_the_same_metrics(model, data, tmp_path, uninterrupted):
    """No periodic checkpoint and no evaluation before the end: --resume starts it again."""
    run = tmp_path / "run"
    proc = start(["train.py", *train_argv(model, data, run, "--save-minutes", "none")], tmp_path / "log")
    wait_for(proc, lambda: run if (run / "config.json").exists() else None)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")]  # no checkpoint
    result = train_run(load_train_config(["--resume", str(run)]))
    same_test_metrics(uninterrupted("--save-minutes", "none"), result)


def test_run_killed_with_only_best_resumes_from_it(model, data, tmp_path, uninterrupted):
    """The kill came after an evaluation wrote best/ and before any last/."""
    extra = ("--eval-every", "4", "--save-minutes", "none")
    run = tmp_path / "run"
    proc = start(["train.py", *train_argv(model, data, run, *extra)], tmp_path / "log")
    wait_for(proc, lambda: run if (run / "best" / "trainer_state.json").exists() else None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (run / "last").exists():
        pytest.fail("the run wrote last/ before it was killed; the case needs best/ alone")
    result = train_run(load_train_config(["--resume", str(run)]))
    same_test_metrics(uninterrupted(*extra), result)


def test_sigint_saves_last_and_resumes(model, data, tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = start(["train.py", *train_argv(model, data, run, "--save-minutes", "none")], tmp_path / "log")
    wait_for(proc, lambda: run if "train:" in (tmp_path / "log").read_text() else None)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert 0 < state["step"] < STEPS
    result = train_run(load_train_config(["--resume", str(run)]))
    same_test_metrics(uninterrupted("--save-minutes", "none"), result)


def test_last_catches_up_after_a_kill_between_best_and_last(model, data, tmp_path, uninterrupted):
    """What a SIGKILL just after the final best/ (or iter-N/) and before last/ leaves: last/ steps
    behind. --resume first brings last/ to the furthest checkpoint, so nothing reads a stale one."""
    extra = ("--eval-every", "5", "--save-every", "5")
    run = tmp_path / "run"
    train_run(load_train_config(train_argv(model, data, run, *extra)))
    shutil.rmtree(run / "last")
    shutil.copytree(run / "iter-30", run / "last")
    records = [r for r in read_metrics(run) if r["split"] != "test"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = train_run(load_train_config(["--resume", str(run)]))
    assert (
        rd.checkpoint_step(run / "last") == STEPS == max(rd.checkpoint_step(p) for p in rd.checkpoints(run))
    )
    last, furthest = (
        load_file(run / "last" / "model.safetensors"),
        load_file(run / "iter-60" / "model.safetensors"),
    )
    assert all((last[k] == furthest[k]).all() for k in furthest)
    same_test_metrics(uninterrupted(*extra), result)


def test_one_writer_per_run(model, data, tmp_path, capsys, hold_lock):
    """A second --resume or --eval-only of a run being written is refused at once, before any
    work, changing nothing; a dead writer's lock is taken over."""
    run = tmp_path / "run"
    train_run(load_train_config(train_argv(model, data, run, "--max-steps", "2")))
    writer = hold_lock(run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    for argv in (["--resume", str(run)], ["--eval-only", str(run)]):
        capsys.readouterr()
        assert run_cli(train.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is being written by process {writer.pid}" in err[0], err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    writer.kill()
    writer.wait()
    (run / ".running").write_text("999999999")  # what a killed writer leaves: a file no one holds
    assert run_cli(train.main, ["--eval-only", str(run)]) == 0
    assert not (run / ".running").exists()
    assert len([r for r in read_metrics(run) if r["split"] == "test"]) == 2


# --- a full disk -----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KB tmpfs (needs root, as CI and these machines run); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.decode().strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_convert_onto_a_full_disk(big_hf, small_disk, capsys):
    from convert import main as convert_main

    code = run_cli(convert_main, [str(big_hf), "--out", str(small_disk / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot write"), err
    assert "No space left on device" in err[0] or "Unable to write" in err[0], err
    assert list(small_disk.iterdir()) == []


def test_training_onto_a_full_disk(model, data, small_disk, capsys):
    out = small_disk / "run"
    code = run_cli(train.main, train_argv(model, data, out, "--eval-every", "4"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot write"), err
    assert list(small_disk.iterdir()) == []  # no checkpoint was ever complete: the run dir is gone
