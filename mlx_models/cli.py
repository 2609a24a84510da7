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

from .errors import ConfigError, MLXModelsError
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


def take_config_option(argv: list[str]) -> list[str]:
    """``argv`` without ``--config FILE``: that config.yaml becomes ``MLX_MODELS_CONFIG``, for this
    command and the processes it starts (a study's cells)."""
    rest, i = [], 0
    while i < len(argv):
        flag, _, value = argv[i].partition("=")
        if flag != "--config":
            rest.append(argv[i])
            i += 1
            continue
        if not value:
            value = argv[i + 1] if i + 1 < len(argv) else ""
            i += 1
        i += 1
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
        return main(argv) or 0
    except argparse.ArgumentError as e:
        return _fail(f"{e}; see --help")
    except MLXModelsError as e:
        return _fail(str(e))
    except OSError as e:  # a write the code did not wrap: disk full, no permission, ...
        return _fail(str(write_error(e, e.filename or "a file")))
    except KeyboardInterrupt as e:
        print("terminated" if isinstance(e, Terminated) else "interrupted", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception:
        if not _TERMINATED:
            raise
        # Terminated raised inside C code that turned it into another error (numpy's conversion
        # of a torch storage raises ValueError): the clean-up has run all the same
        print("terminated", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _fail(message: str) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 2
