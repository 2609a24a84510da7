"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import ConfigError, DistributedError, MLXModelsError
from .io import write_error


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one-line `ConfigError`s (exit 2 through `run_cli`), not a usage dump."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, exit_on_error=False, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{message}; see {self.prog} --help")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (not nan, not inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def int_between(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """argparse type: a whole number in [low, high] (bounds keep huge values from reaching NumPy
    and MLX as an overflow or an allocation that never ends)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what or 'expected'} {low}..{high}, got {text}")
        return value

    return parse


def take_option(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """(the value of ``flag VALUE`` or ``flag=VALUE`` in ``argv``, the last one given; ``argv``
    without it): an option a command handles before its own parser sees the rest."""
    rest, value, i = [], None, 0
    while i < len(argv):
        name, eq, given = argv[i].partition("=")
        if name != flag:
            rest.append(argv[i])
            i += 1
            continue
        if not eq:
            given, i = (argv[i + 1] if i + 1 < len(argv) else ""), i + 1
        value, i = given, i + 1
    return value, rest


def take_config_option(argv: list[str]) -> list[str]:
    """``argv`` without ``--config FILE``: that config.yaml becomes ``MLX_MODELS_CONFIG``, for this
    command and the processes it starts (a study's cells)."""
    value, rest = take_option(argv, "--config")
    if value is None:
        return rest
    if not Path(value).expanduser().is_file():
        raise ConfigError(f"--config {value!r}: no such file; give the path of a config.yaml")
    os.environ["MLX_MODELS_CONFIG"] = str(Path(value).expanduser().resolve())
    return rest


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (temp files removed, a training
    run saves its last checkpoint)."""


_TERMINATED: list[int] = []  # SIGTERMs received by run_cli's handler


def _terminate(signum, frame):
    _TERMINATED.append(signum)
    raise Terminated()


@contextlib.contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """While inside, SIGINT and SIGTERM are only recorded (in the yielded list) so that the caller
    can stop at a safe point; a second signal acts at once, as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    got: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def record(signum, frame):
        got.append(signum)
        for s, handler in previous.items():
            signal.signal(s, handler)

    for s in previous:
        signal.signal(s, record)
    try:
        yield got
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_for(signum: int) -> KeyboardInterrupt:
    """The exception that ends the program as ``signum`` would have."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main``; user errors become one line on stderr and exit code 2, SIGINT 130, SIGTERM 143."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    _TERMINATED.clear()
    try:
        code, message, kind = _run(main, argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return report_end(code, message, kind)


def _run(main, argv) -> tuple[int, str | None, str]:
    """(exit code, the one-line error or None, its kind: own, lost (another rank is gone), stopped)."""
    try:
        return main(argv) or 0, None, "own"
    except argparse.ArgumentError as e:
        return 2, f"{e}; see --help", "own"
    except DistributedError as e:
        return 2, str(e), "lost"
    except MLXModelsError as e:
        return 2, str(e), "own"
    except OSError as e:  # a write the code did not wrap: disk full, no permission, ...
        return 2, str(write_error(e, e.filename or "a file")), "own"
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        return (143, "terminated", "stopped") if terminated else (130, "interrupted", "stopped")
    except Exception:
        if not _TERMINATED:
            raise
        # Terminated raised inside C code that turned it into another error (numpy's conversion
        # of a torch storage raises ValueError): the clean-up has run all the same
        return 143, "terminated", "stopped"


RANK_REPORT = "MLX_MODELS_RANK_REPORT"  # set by the launcher (train/launch.py) for the ranks it starts
MARKER = "@@mlx_models-rank-end"  # a rank's last line under it: MARKER RANK CODE KIND MESSAGE


def report_end(code: int, message: str | None, kind: str = "own") -> int:
    """How a command ends: ``error: MESSAGE`` (or interrupted/terminated) on stderr; a rank under
    the launcher instead ends with one marker line that the launcher reads and summarises."""
    text = " ".join((message or "").split())
    rank = os.environ.get("MLX_RANK") if os.environ.get(RANK_REPORT) else None
    if rank is not None:
        print(f"\n{MARKER} {rank} {code} {kind} {text}", file=sys.stderr, flush=True)
    elif message and kind == "stopped":
        print(text, file=sys.stderr)
    elif message:
        print(f"error: {text}", file=sys.stderr)
    return code
