"""A data-parallel run started and judged as one command: ``train.py --ranks N ...`` (this machine)
or ``train.py --hostfile hosts.json ...`` (several Macs).

It runs ``mlx.launch`` with the same training arguments on every rank and passes their output
through; each rank ends with one marker line (``cli.report_end``) instead of its own error. When
every rank has ended, the run exits 0 if all of them did, else with one line that names the rank
that failed first and why (a rank that merely lost its peer is a consequence, not the cause), and
the failing rank's exit code. ``mlx.launch`` alone exits 0 whatever its ranks do.
"""

import datetime
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..cli import MARKER, RANK_REPORT, report_end
from ..errors import ConfigError
from .config import RUN_STAMP

OPTIONS = ("--ranks", "--hostfile", "--backend")
# What the launcher sums up in its one line: mlx.launch's note on each rank, and the ring's own
# lines when a peer is gone.
NOISE = re.compile(
    rb"((\x1b\[\d+m)?\[WARN\] Node with rank \d+ (exited with code -?\d+|was killed)"
    rb"|\[ring\] (Socket \d+ was closed by the peer|Too many send/recv errors))"
)


@dataclass
class End:
    """How one rank ended, from its marker line."""

    code: int
    kind: str  # own (its own error, or success), lost (another rank was gone), stopped (signal)
    message: str


def take_launch_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(``--ranks``/``--hostfile``/``--backend`` given, the training arguments without them)."""
    options, rest, i = {}, [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag not in OPTIONS:
            rest.append(argv[i])
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"{flag} expects a value; see train.py --help")
            value, i = argv[i + 1], i + 1
        options[flag[2:]], i = value, i + 1
    return options, rest


def launch_command(options: dict[str, str], argv: list[str]) -> list[str]:
    """mlx.launch with the ranks or hostfile asked for, each rank running ``mlx_models train``."""
    where = _where(options)
    launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")
    if launcher is None:
        raise ConfigError("mlx.launch is not installed; pip install mlx (it comes with it)")
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")  # one default run directory for all
    env = ["--env", f"{RANK_REPORT}=1", "--env", f"PYTHONPATH={path}", "--env", f"{RUN_STAMP}={stamp}"]
    backend = ["--backend", options.get("backend", "ring")]
    return [launcher, *where, *backend, *env, "--", sys.executable, "-m", "mlx_models", "train", *argv]


def _where(options: dict[str, str]) -> list[str]:
    if "hostfile" in options:
        if "ranks" in options:
            raise ConfigError("--ranks and --hostfile cannot be combined: the hostfile lists the ranks")
        if not Path(options["hostfile"]).is_file():
            raise ConfigError(
                f"--hostfile {options['hostfile']}: no such file; see mlx.launch's hostfile format"
            )
        return ["--hostfile", options["hostfile"]]
    ranks = options.get("ranks", "")
    if not ranks.isdigit() or int(ranks) < 1:
        raise ConfigError(f"--ranks {ranks!r}: expected a positive number of processes on this machine")
    return ["-n", ranks, "--starting-port", str(_free_port())]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(options: dict[str, str], argv: list[str]) -> int:
    """Run the ranks; one summary line and a non-zero exit code when any of them failed."""
    command = launch_command(options, argv)
    ranks = _rank_count(options)
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    ends = {}
    try:
        try:
            open_line = forward(proc.stderr, sys.stderr.buffer, ends)
        except KeyboardInterrupt:  # the ranks got the same Ctrl-C: read on while they save and stop
            open_line = forward(proc.stderr, sys.stderr.buffer, ends)
    finally:
        code = proc.wait()
    if open_line:
        print(file=sys.stderr)  # the summary on a line of its own, after a progress bar
    return judge(ends, ranks, code)


def _rank_count(options: dict[str, str]) -> int:
    if "hostfile" not in options:
        return int(options["ranks"])
    import json

    try:
        return len(json.loads(Path(options["hostfile"]).read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"--hostfile {options['hostfile']} is not a JSON list of hosts ({e})") from e


def forward(stream, out, ends: dict[int, End]) -> bool:
    """Copy the ranks' stderr to ``out`` as it comes (progress bars included), keeping back the
    marker lines (read into ``ends``) and the lines the summary replaces (``NOISE``). Returns
    whether ``out`` was left inside a line (a progress bar)."""
    pending, marker, open_line = b"", MARKER.encode(), False
    for chunk in iter(lambda: stream.read1(1 << 16), b""):
        *lines, pending = (pending + chunk).split(b"\n")
        for line, after in zip(lines, [*lines[1:], pending][: len(lines)], strict=True):
            kept = _keep(line, ends)
            marker_next = after.startswith(marker) or (after is pending and marker.startswith(after))
            if kept is not None and not (kept == b"" and marker_next):  # a marker's leading newline
                out.write(kept + b"\n")
                open_line = False
        if pending and not (marker.startswith(pending) or pending.startswith(marker)):
            out.write(pending)  # a progress bar's update: shown now
            pending, open_line = b"", True
        out.flush()
    if pending and (kept := _keep(pending, ends)):
        out.write(kept)
        open_line = True
    out.flush()
    return open_line


def _keep(line: bytes, ends: dict[int, End]) -> bytes | None:
    """``line`` as shown: None for a rank's marker (recorded in ``ends``), without ``NOISE``."""
    text = line.rstrip(b"\r")
    if text.startswith(MARKER.encode()):
        _, rank, code, kind, *message = text.decode(errors="replace").split(" ", 4)
        ends[int(rank)] = End(int(code), kind, message[0] if message else "")
        return None
    if (found := NOISE.search(line)) is None:
        return line
    return line[: found.start()] or None  # what came before it on the line: a progress bar


def judge(ends: dict[int, End], ranks: int, launcher_code: int) -> int:
    """0 when every rank ended well; else the one line about the first cause, and its code."""
    silent = [r for r in range(ranks) if r not in ends]
    failed = {r: e for r, e in sorted(ends.items()) if e.code != 0}
    if not silent and not failed and launcher_code == 0:
        return 0
    own = [(r, e) for r, e in failed.items() if e.kind == "own"]
    if own:
        rank, end = own[0]
        return report_end(end.code, _with_rank(rank, end.message))
    lost = next((_with_rank(r, e.message) for r, e in failed.items() if e.kind == "lost"), "")
    if silent:
        what = f"rank {', '.join(map(str, silent))} stopped without reporting (killed, or crashed: see above)"
        return report_end(1, f"{what}; {lost or 'the run stopped'}")
    rank, end = next(iter(failed.items()), (0, End(launcher_code or 1, "own", "mlx.launch failed")))
    return report_end(end.code, _with_rank(rank, end.message))


def _with_rank(rank: int, message: str) -> str:
    return message if message.startswith(f"rank {rank}") else f"rank {rank}: {message}"
