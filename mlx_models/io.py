"""Atomic writes: a temp file or directory beside the target, then a rename.

A crash or Ctrl-C never leaves a half-written file or checkpoint at the final path. Temp names
carry the writer's PID (``.NAME.PID.XXXX.tmp``, ``.NAME.old-PID``), so what a killed writer left
is recognised and cleared (or rolled back) by the next writer of the same path.
"""

import codecs
import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, MLXModelsError

# mkstemp/mkdtemp create owner-only (0600/0700) entries; results get the usual umask modes.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_HINTS = {
    errno.ENOSPC: "free some disk space or write elsewhere",
    errno.EDQUOT: "free some disk space or write elsewhere",
    errno.EACCES: "choose a directory you can write to",
    errno.EPERM: "choose a directory you can write to",
    errno.EROFS: "the file system is read-only: choose another directory",
}


# Every directory a command writes for --out holds this file; --force replaces only such a directory.
OUTPUT_MARKER = ".mlx_models-output"


class WriteError(MLXModelsError):
    """A file that could not be written (disk full, no permission, ...); nothing was left behind."""


def write_error(e: BaseException, path: str | os.PathLike) -> WriteError:
    """One line for a failed write: what, where, and what to do."""
    code = getattr(e, "errno", None)
    reason = getattr(e, "strerror", None) or " ".join(str(e).split())
    hint = _HINTS.get(code, "check the path and free disk space")
    return WriteError(f"cannot write {path}: {reason}; {hint}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK = ".running"  # in a directory one process writes at a time: that process's PID


class Lock:
    """A held ``take_lock``: ``release()`` removes the file and frees the lock (a process that
    dies frees it too: the kernel drops its locks)."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)  # before the lock is freed: no one can hold the old file
        os.close(self.fd)
        self.fd = -1


def take_lock(directory: Path, busy: str) -> Lock:
    """Make this process the one writer of ``directory``: an exclusive ``flock`` on
    ``directory/LOCK``, which holds the writer's PID for the message. Another live writer is
    ``busy``, a ConfigError message with ``{pid}``; a dead writer's lock is free (PID reuse cannot
    fool it)."""
    path = directory / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(busy.format(pid=pid)) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # the file still at the path: ours (else its holder just removed it: again)
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return Lock(path, fd)


def is_locked(directory: Path) -> str | None:
    """The PID of a live writer holding ``directory``'s lock, else None; creates nothing."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)


def _temp_entry(entry: str) -> tuple[str, int] | None:
    """(target name, writer PID) of ``.NAME.PID.XXXX.tmp`` or ``.NAME.old-PID``; None otherwise.
    Parsed from the right, as NAME may hold dots; PID 0 is an old-style temp without one."""
    if not entry.startswith("."):
        return None
    if ".old-" in entry:
        name, pid = entry[1:].rsplit(".old-", 1)
        return (name, int(pid)) if pid.isdigit() else None
    if not entry.endswith(".tmp"):
        return None
    parts = entry[1 : -len(".tmp")].rsplit(".", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return (parts[0], 0) if len(parts) >= 2 else None


def clear_stale(directory: str | os.PathLike, name: str | None = None) -> None:
    """Remove the temp entries that dead writers left in ``directory`` (for ``name``, or all), and
    put back a ``.NAME.old-PID`` whose replacement never arrived (a kill between two renames)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in sorted(directory.iterdir()):
        parsed = _temp_entry(entry.name)
        if parsed is None or name not in (None, parsed[0]) or (parsed[1] and pid_alive(parsed[1])):
            continue
        final = directory / parsed[0]
        if ".old-" in entry.name and not final.exists():
            os.replace(entry, final)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def read_json(path: str | os.PathLike, error: type[MLXModelsError] = MLXModelsError, fix: str = "") -> dict:
    """A JSON object from ``path``; anything else (missing, unreadable, not JSON, not an object) is
    one ``error`` saying so, with ``fix`` as the advice."""
    fix = fix or "re-create it (re-convert the model, or re-run the command that wrote it)"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise error(f"{path} not found; {fix}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}); {fix}") from e
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def check_utf8(path: str | os.PathLike, error: type[MLXModelsError] = MLXModelsError) -> None:
    """A text input must be UTF-8: else one ``error`` with where it stops being so (parsers would
    fail later, far from the cause, or pass the bytes on). Read in chunks: data files are large."""
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise not_utf8(path, e, offset, error) from e
            if not chunk:
                return
            offset += len(chunk)


def read_utf8(path: str | os.PathLike, error: type[MLXModelsError] = MLXModelsError) -> str:
    """A whole text file, UTF-8, in one read; anything else is ``not_utf8``'s one line."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror or e}); check the path") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e, 0, error) from e


def not_utf8(path, e: UnicodeDecodeError, offset: int, error: type[MLXModelsError] = MLXModelsError):
    return error(f"{path} is not UTF-8 text (byte {offset + e.start}: {e.reason}); re-save it as UTF-8")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        raise write_error(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(e, path) from e
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON with sorted keys; NaN and infinity are refused (they are not JSON)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_safetensors(path: str | os.PathLike, arrays: dict, metadata: dict | None = None) -> None:
    """``mx.save_safetensors`` with a one-line error when the disk is full or not writable."""
    import mlx.core as mx

    try:
        mx.save_safetensors(str(path), arrays, metadata=metadata or {})
    except (RuntimeError, OSError) as e:
        raise write_error(e, path) from e


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temp directory that becomes ``path`` when the block succeeds.

    An existing ``path`` is an error unless ``force``; then it is replaced only after
    the new directory is complete. On failure the temp directory is removed; OS errors
    (disk full, no permission) become a one-line `WriteError`.
    """
    path = Path(path)
    if path.exists() and not force:
        raise MLXModelsError(f"{path} already exists; pass --force to overwrite it or choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale(path.parent, path.name)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_UMASK)
    except OSError as e:
        raise write_error(e, path) from e
    try:
        yield tmp
        _swap_in(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise write_error(e, path) from e
        raise


def _swap_in(tmp: Path, path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.replace(path, old)
    os.replace(tmp, path)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def check_out(out: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse an existing ``--out`` unless ``force`` and it is an earlier output of this tool (it
    holds `OUTPUT_MARKER`) that is neither an input, nor holds one, nor holds the current directory."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    real = out.resolve()
    ours = out.is_dir() and (out / OUTPUT_MARKER).is_file()
    if not force:
        fix = (
            "pass --force to replace it"
            if ours
            else "it was not written by mlx_models, so remove it yourself"
        )
        raise ConfigError(f"{out} already exists; {fix} or choose another --out")
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise ConfigError(
            f"--out {out} is or holds the current directory, which --force never replaces; "
            "choose another --out"
        )
    for i in inputs:
        source = Path(i).expanduser().resolve()
        if source == real or real in source.parents:
            what = "is" if source == real else "holds"
            raise ConfigError(
                f"--out {out} {what} the input {i}, which --force never replaces; choose another --out"
            )
    if not ours:
        raise ConfigError(
            f"--out {out} was not written by mlx_models (it has no {OUTPUT_MARKER}), so --force does not "
            "replace it; remove it yourself or choose another --out"
        )


@contextlib.contextmanager
def output_dir(
    out: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """`atomic_dir` for a command's ``--out``: checked by `check_out`, and marked as this tool's."""
    inputs = list(inputs)
    check_out(out, force, inputs)
    with atomic_dir(out, force=force) as tmp:
        (tmp / OUTPUT_MARKER).write_text("written by mlx_models; `--force` may replace this directory\n")
        yield tmp
