"""A data-parallel run on this machine started and judged as one command: ``train.py --ranks N ...``.

It starts N processes of ``mlx_models train`` (the same arguments) as ``mlx.launch --backend ring``
would: each with its rank and a ring hostfile on free local ports. It passes their output through
(progress bars included) and each rank ends with one marker line (``cli.report_end``) instead of
its own error. When every rank has ended, the run exits 0 if all of them did, else with one line
that names the rank that failed first and why (a rank that merely lost its peer is a consequence,
not the cause) and that rank's exit code. Ctrl-C and SIGTERM reach every rank, which save and stop
as a single process does. (``mlx.launch`` itself exits 0 whatever its ranks do.)
"""

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..cli import MARKER, RANK_REPORT, Terminated, report_end, take_option
from ..errors import ConfigError
from .config import RUN_STAMP

GRACE = 30.0  # seconds the other ranks have to notice a failed rank before they are stopped
# The ring's own lines when a peer is gone: the summary says it in one line.
NOISE = re.compile(rb"^\[ring\] (Socket \d+ was closed by the peer|Too many send/recv errors)")


@dataclass
class End:
    """How one rank ended: its exit code, and its marker line's kind and message when it wrote one
    (own: its own error or success; lost: another rank was gone; stopped: a signal)."""

    code: int
    kind: str = ""
    message: str = ""


def take_ranks_option(argv: list[str]) -> tuple[int | None, list[str]]:
    """(``--ranks N`` if given, the training arguments without it)."""
    value, rest = take_option(argv, "--ranks")
    if value is not None and not (value.isdigit() and 1 <= int(value) <= 64):
        raise ConfigError(f"--ranks {value!r}: expected 1..64 processes on this machine")
    return (None if value is None else int(value)), rest


def rank_env(rank: int, ranks: int, hostfile: Path, stamp: str) -> dict[str, str]:
    """A rank's environment: its place in the ring, the marker report, the package on the path,
    one run stamp, and its share of the cores (OpenBLAS's threads busy-wait: ranks that each took
    every core would slow each other down many times over)."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // ranks))
    return os.environ | {"OMP_NUM_THREADS": threads} | {
        "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile), RANK_REPORT: "1", "PYTHONPATH": path,
        RUN_STAMP: stamp,  # one default run directory for every rank
    }  # fmt: skip


def launch(ranks: int, argv: list[str]) -> int:
    """Run the ranks; 0, or one summary line and the failing rank's exit code."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="mlx_models-ranks-") as tmp:
        hostfile = Path(tmp) / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{_free_port()}"] for _ in range(ranks)]))
        command = [sys.executable, "-m", "mlx_models", "train", *argv]
        procs = [
            subprocess.Popen(command, env=rank_env(r, ranks, hostfile, stamp), stderr=subprocess.PIPE)
            for r in range(ranks)
        ]
        ends: dict[int, End] = {}
        readers = [
            threading.Thread(target=forward, args=(p.stderr, sys.stderr.buffer, ends, r), daemon=True)
            for r, p in enumerate(procs)
        ]
        for t in readers:
            t.start()
        codes = supervise(procs)
        for t in readers:
            t.join()
    for r, code in enumerate(codes):
        ends.setdefault(r, End(code)).code = code
    return judge(ends)


def supervise(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for every rank. A SIGTERM is passed on to them (Ctrl-C in the terminal reaches them
    itself) and waited out; once a rank fails, the others have ``GRACE`` seconds to notice before
    they are stopped (SIGTERM, then SIGKILL)."""
    failed_at = None
    while True:
        try:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                return codes
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = time.monotonic()
            if failed_at is not None and (late := time.monotonic() - failed_at) > GRACE:
                _signal(procs, signal.SIGTERM if late < 2 * GRACE else signal.SIGKILL)
            time.sleep(0.1)
        except KeyboardInterrupt as e:
            if isinstance(e, Terminated):
                _signal(procs, signal.SIGTERM)


def _signal(procs: list[subprocess.Popen], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forward(stream, out, ends: dict[int, "End"], rank: int) -> None:
    """Copy one rank's stderr to ``out`` as it comes (a progress bar's updates at once, other text
    by whole lines), keeping back its marker line (into ``ends``) and the ring's ``NOISE``."""
    pending, at_line_start = b"", True
    for chunk in iter(lambda: stream.read1(1 << 16), b""):
        *lines, pending = (pending + chunk).split(b"\n")
        shown = []
        for line in lines:
            if line == b"" and at_line_start:
                continue  # the leading newline of a marker, after a whole line
            if _shown(line, ends, rank):
                shown.append(line + b"\n")
                at_line_start = True
        if b"\r" in pending:  # a progress bar's update: shown now, its line left open
            shown.append(pending)
            pending, at_line_start = b"", False
        _write(out, b"".join(shown))
    if pending and _shown(pending, ends, rank):
        _write(out, pending + b"\n")


_OUT = threading.Lock()


def _write(out, data: bytes) -> None:
    if data:
        with _OUT:  # whole lines from each rank, never mixed
            out.write(data)
            out.flush()


def _shown(line: bytes, ends: dict[int, End], rank: int) -> bool:
    """Whether a rank's line is shown: not its marker (recorded) nor the ring's noise."""
    text = line.strip(b"\r")
    if text.startswith(MARKER.encode()):
        fields = text.decode(errors="replace").split(" ", 4)
        if len(fields) >= 4 and fields[2].lstrip("-").isdigit():
            ends[rank] = End(int(fields[2]), fields[3], fields[4] if len(fields) > 4 else "")
            return False
    return not NOISE.match(text)


def judge(ends: dict[int, End]) -> int:
    """0 when every rank ended well; else the one line about the first cause, and its code."""
    failed = {r: e for r, e in sorted(ends.items()) if e.code != 0}
    if not failed:
        return 0
    own = [(r, e) for r, e in failed.items() if e.kind == "own"]
    if own:
        rank, end = own[0]
        return report_end(end.code, _with_rank(rank, end.message))
    lost = [(r, e) for r, e in failed.items() if e.kind == "lost"]
    said = _with_rank(lost[0][0], lost[0][1].message) if lost else "the other ranks stopped"
    silent = [r for r, e in failed.items() if not e.kind]
    if silent:
        how = ", ".join(f"rank {r} {_death(failed[r].code)}" for r in silent)
        return report_end(1, f"{how}; {said}")
    if lost:
        return report_end(lost[0][1].code, said)
    rank, end = next(iter(failed.items()))  # every rank stopped by a signal (Ctrl-C, SIGTERM)
    return report_end(end.code, end.message or f"rank {rank} exited with code {end.code}", end.kind)


def _death(code: int) -> str:
    if -code in signal.valid_signals():
        return f"was killed ({signal.Signals(-code).name})"
    return f"exited with code {code} without its report (a crash: see above)"


def _with_rank(rank: int, message: str) -> str:
    return message if message.startswith(f"rank {rank}") else f"rank {rank}: {message}"
