"""Data-parallel training: two ranks on localhost under ``mlx.launch --backend ring`` against one
rank with the same global batch, only rank 0 writing, a killed or hung rank, and resume."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlx_models.train.config import load_train_config
from mlx_models.train.metrics import read_metrics
from mlx_models.train.trainer import run as train_run
from sentiment import sentiment_splits, write_splits

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6
KINDS = {
    "full-bert": ("bert", []),
    "lora-llama": ("llama", ["--lora"]),
    "qlora-llama": ("llama", ["--lora", "--quantize", "4"]),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_splits(tmp_path_factory.mktemp("data") / "sentiment", sentiment_splits())


@pytest.fixture(scope="module")
def models(tiny):
    return lambda family: str(tiny(family, "classify", num_labels=2)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def argv(model: str, data: Path, out: Path, batch: int, *extra: str) -> list[str]:
    args = [
        "--model",
        model,
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--max-length",
        "32",
        "--dropout",
        "0",
    ]
    args += [
        "--batch-size",
        str(batch),
        "--max-steps",
        str(STEPS),
        "--eval-every",
        "1",
        "--learning-rate",
        "1e-3",
    ]
    return [*args, *extra]


def launch(args: list[str], log: Path, ranks: int = 2) -> subprocess.Popen:
    """The README's way: ``train.py --ranks N`` (mlx.launch underneath, judged as one command)."""
    with log.open("w") as f:
        return subprocess.Popen(
            [sys.executable, "train.py", "--ranks", str(ranks), *args], cwd=ROOT, stdout=f,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def rank_pid(out: Path, rank: int) -> int | None:
    """The process of ``rank`` in the run writing to ``out`` (from /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmdline and b"mlx_models" in cmdline and f"MLX_RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def train_losses(run: Path) -> list[float]:
    return [r["running_loss"] for r in read_metrics(run) if r["split"] == "train"]


@pytest.fixture(scope="module")
def one_rank(models, data, tmp_path_factory):
    """The reference: one process, micro-batch 8 (the 2-rank runs use 4 per rank: the same batch)."""
    done = {}

    def get(kind: str) -> Path:
        if kind not in done:
            family, extra = KINDS[kind]
            out = tmp_path_factory.mktemp("one") / "run"
            train_run(load_train_config(argv(models(family), data, out, 8, *extra)))
            done[kind] = out
        return done[kind]

    return get


@pytest.fixture(scope="module")
def two_ranks(models, data, tmp_path_factory):
    done = {}

    def get(kind: str) -> tuple[Path, str]:
        if kind not in done:
            family, extra = KINDS[kind]
            out = tmp_path_factory.mktemp("two") / "run"
            log = out.parent / "log"
            proc = launch(argv(models(family), data, out, 4, *extra), log)
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
            done[kind] = (out, log.read_text())
        return done[kind]

    return get


@pytest.mark.parametrize("kind", list(KINDS))
def test_two_ranks_equal_one_rank(one_rank, two_ranks, kind):
    one, (two, log) = one_rank(kind), two_ranks(kind)
    a, b = train_losses(one), train_losses(two)
    assert len(a) == len(b) == STEPS
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)  # the same loss at every step
    test_a, test_b = ([r for r in read_metrics(d) if r["split"] == "test"] for d in (one, two))
    assert len(test_b) == 1  # rank 0 alone wrote the record...
    assert test_b[0]["accuracy"] == test_a[0]["accuracy"] and test_b[0]["f1"] == test_a[0]["f1"]
    assert test_b[0]["loss"] == pytest.approx(test_a[0]["loss"], rel=1e-5)
    assert sum(line.startswith('{"accuracy"') for line in log.splitlines()) == 1  # ...and printed it
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert "2 ranks x 4 x 1" in log
    state = json.loads((two / "last" / "trainer_state.json").read_text())
    assert state["ranks"] == 2 and state["step"] == STEPS


def start_ranks(
    args: list[str], log: Path, tmp: Path, per_rank: list[list[str]] = ([], [])
) -> list[subprocess.Popen]:
    """Two ring ranks started as ``mlx.launch`` would, but without it: the launcher ends the other
    ranks itself once one dies, which would hide whether rank 0 notices on its own."""
    hostfile = tmp / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"], [f"127.0.0.1:{free_port()}"]]))
    procs = []
    for rank in range(2):
        env = {**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
        with (log if rank == 0 else log.with_suffix(".1")).open("w") as f:
            procs.append(subprocess.Popen(
                [sys.executable, "train.py", *args, *per_rank[rank]], cwd=ROOT, env=env, stdout=f,
                stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip
    return procs


def test_a_killed_rank_ends_the_other(models, data, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log"
    args = argv(models("bert"), data, out, 4, "--max-steps", "400", "--eval-every", "50")
    rank0, rank1 = start_ranks(args, log, tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not (out / "config.json").exists() or "train:" not in log.read_text():
            assert rank0.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)
        rank1.kill()
        tic = time.monotonic()
        code = rank0.wait(timeout=120)
        waited = time.monotonic() - tic
    finally:
        for p in (rank0, rank1):
            p.kill()
            p.wait()
    text = log.read_text()
    assert waited < 60, (waited, text[-2000:])
    assert code == 2, text[-2000:]
    assert "error: rank 0: lost the connection to another rank" in text, text[-2000:]


def test_a_hung_rank_trips_the_watchdog(models, data, tmp_path):
    """SIGSTOP freezes rank 1 as a deadlock would: rank 0 gives up after --dist-timeout seconds."""
    out, log = tmp_path / "run", tmp_path / "log"
    args = argv(
        models("bert"), data, out, 4, "--max-steps", "400", "--eval-every", "50", "--dist-timeout", "8"
    )
    proc = launch(args, log)
    deadline = time.monotonic() + 300
    while "train:" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    time.sleep(1.0)
    victim = rank_pid(out, 1)
    os.kill(victim, signal.SIGSTOP)
    try:
        tic = time.monotonic()
        while rank_pid(out, 0) is not None and time.monotonic() - tic < 60:
            time.sleep(0.2)
        waited = time.monotonic() - tic
    finally:
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=60)
    assert 8 <= waited < 30, waited
    text = log.read_text()
    assert "rank 0: waited 8 s for the other ranks during" in text and "Traceback" not in text, text[-2000:]
    assert proc.returncode == 1 and text.strip().splitlines()[-1].startswith("error: rank 1 was killed")


class Trickle(io.BytesIO):
    """A rank's stderr arriving a few bytes at a time, as a pipe may deliver it."""

    def read1(self, n: int = -1) -> bytes:
        return super().read1(7)


def test_the_launcher_shows_the_output_and_sums_up_the_ends(capsys):
    """A rank's progress bar and messages pass through (whatever the chunks); its end marker and
    the ring's socket lines are kept back and summed up in one line."""
    from mlx_models.cli import MARKER
    from mlx_models.train.launch import End, forward, judge

    rank1 = (
        b"[ring] Socket 4 was closed by the peer\n" + f"\n{MARKER} 1 2 own data_dir x is missing\n".encode()
    )
    rank0 = b"training x\n\rtrain:  50%\rtrain: 100%" + f"\n{MARKER} 0 143 stopped terminated\n".encode()
    for stream in (io.BytesIO, Trickle):
        out, ends = io.BytesIO(), {}
        forward(stream(rank0), out, ends, 0)
        forward(stream(rank1), out, ends, 1)
        assert out.getvalue() == b"training x\n\rtrain:  50%\rtrain: 100%\n", stream
        assert ends == {1: End(2, "own", "data_dir x is missing"), 0: End(143, "stopped", "terminated")}
    assert judge(ends) == 2  # the cause, not the rank stopped because of it
    assert capsys.readouterr().err == "error: rank 1: data_dir x is missing\n"
    assert judge({0: End(0, "own", ""), 1: End(0, "own", "")}) == 0
    lost = End(2, "lost", "rank 0: lost the connection to another rank during x; no checkpoint was written")
    assert judge({0: lost, 1: End(-9)}) == 1  # rank 1 never said how it ended
    err = capsys.readouterr().err
    assert err == f"error: rank 1 was killed (SIGKILL); {lost.message}\n"


def training(models, data, out: Path, log: Path) -> subprocess.Popen:
    """A long 2-rank run (train.py --ranks 2), once it is a second into training."""
    proc = launch(argv(models("bert"), data, out, 4, "--max-steps", "400", "--eval-every", "50"), log)
    deadline = time.monotonic() + 300
    while "train:" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    time.sleep(1.0)
    return proc


def test_a_killed_rank_fails_the_run_in_one_line(models, data, tmp_path):
    """train.py --ranks 2 exits non-zero when a rank is killed, and says which and what was kept,
    without the ring's socket messages or a traceback (mlx.launch alone exits 0)."""
    out, log = tmp_path / "run", tmp_path / "log"
    proc = training(models, data, out, log)
    os.kill(rank_pid(out, 1), signal.SIGKILL)
    code, text = proc.wait(timeout=120), log.read_text()
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert code == 1 and len(errors) == 1, text[-3000:]
    assert errors[0].startswith("error: rank 1 was killed (SIGKILL); rank 0: lost the connection"), errors
    assert (
        "rank 0: lost the connection to another rank" in errors[0]
        and "run the same command again" in errors[0]
    )
    assert "Traceback" not in text and "[ring]" not in text, text[-3000:]
    assert not out.exists()  # no checkpoint yet: nothing is kept, as the line says


def test_a_rank_error_is_one_line_with_its_exit_code(models, data, tmp_path):
    log = tmp_path / "log"
    proc = launch(["--model", models("bert"), "--data-dir", str(tmp_path / "none")], log)
    code, lines = proc.wait(timeout=300), log.read_text().strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: rank 0: data_dir") and "is not a directory" in lines[0], lines


def test_sigterm_to_the_run_stops_every_rank_as_one(models, data, tmp_path):
    """SIGTERM to train.py --ranks reaches every rank: last/ is saved and the run exits 143 with
    'terminated', as a single process does."""
    out, log = tmp_path / "run", tmp_path / "log"
    proc = training(models, data, out, log)
    proc.send_signal(signal.SIGTERM)  # the launcher alone: it passes it on
    code, text = proc.wait(timeout=120), log.read_text()
    assert code == 143 and text.strip().splitlines()[-1] == "terminated", text[-2000:]
    assert "error" not in text and "Traceback" not in text, text[-2000:]
    assert 0 < json.loads((out / "last" / "trainer_state.json").read_text())["step"] < 400


def test_tfidf_with_ranks_is_refused(data, tmp_path):
    log = tmp_path / "log"
    proc = launch(["--model", "tfidf", "--data-dir", str(data), "--out", str(tmp_path / "run")], log)
    code, lines = proc.wait(timeout=300), log.read_text().strip().splitlines()
    assert code == 2 and lines == ["error: rank 0: the tfidf baseline fits in one process: run it without "
                                   "--ranks or mlx.launch"], lines  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_ranks_started_with_different_options_refuse_at_once(models, data, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log"
    args = argv(models("bert"), data, out, 4)
    procs = start_ranks(args, log, tmp_path, per_rank=[[], ["--learning-rate", "2e-3"]])
    tic = time.monotonic()
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [2, 2] and time.monotonic() - tic < 60  # not after the watchdog's 600 s
    for rank, path in enumerate((log, log.with_suffix(".1"))):
        last = path.read_text().strip().splitlines()[-1]
        assert last.startswith(f"error: rank {rank}: the ranks were started with different training options")
        assert "learning_rate=" in last
    assert not out.exists()


def test_two_rank_resume_after_sigkill(models, data, tmp_path, two_ranks):
    family, extra = KINDS["full-bert"]
    out, log = tmp_path / "run", tmp_path / "log"
    proc = launch(argv(models(family), data, out, 4, "--save-every", "2", *extra), log)
    state = out / "last" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not (state.exists() and json.loads(state.read_text())["step"] >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # every rank at once
    proc.wait()
    assert json.loads(state.read_text())["step"] < STEPS
    resumed = launch(["--resume", str(out)], tmp_path / "log2")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "log2").read_text()[-3000:]
    reference, _ = two_ranks("full-bert")
    a, b = train_losses(reference), train_losses(out)
    assert len(b) == STEPS and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b, strict=True)), (a, b)


def test_resume_with_another_rank_count_is_refused(two_ranks, capsys):
    import train
    from mlx_models.cli import run_cli

    out, _ = two_ranks("full-bert")
    assert run_cli(train.main, ["--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was trained on 2 rank(s); resume it with 2 (train.py --ranks 2), not 1" in err
