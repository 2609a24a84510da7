"""Experiment logging (``--report-to``): every record written to metrics.jsonl also goes to
TensorBoard and/or Weights & Biases, with the resolved config; transformers' ``report_to`` names.

    with reporting(cfg, run_dir):      # opens the loggers of cfg.report_to (rank 0 only)
        ...append_metrics(run_dir, record)   # metrics.py forwards each record here

TensorBoard: event files in RUN/tensorboard/, a scalar ``<split>/<key>`` per numeric key of a
record at the record's step, and the config as text. W&B: ``wandb.init(dir=RUN)`` with the run
directory's name, WANDB_PROJECT (default mlx_models), and an id kept in RUN/wandb/run_id so that
--resume and --eval-only continue the same W&B run; the same scalars against ``train/global_step``
(transformers' step metric, so steps redone after a resume need not be monotonic).
"""

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MLXModelsError
from ..io import atomic_write_text

LOGGERS = ("tensorboard", "wandb")  # what --report-to names, besides none and all
VALUES = ("none", "all", *LOGGERS)
MODULE = {"tensorboard": "tensorboard.summary.writer.event_file_writer", "wandb": "wandb"}
LABEL = {"tensorboard": "TensorBoard", "wandb": "W&B"}
HINT = {
    "tensorboard": "check that RUN/tensorboard/ can be written",
    "wandb": "check the network and the login (WANDB_API_KEY), or set WANDB_MODE=offline",
}
TB_DIR = "tensorboard"
WANDB_ID = Path("wandb") / "run_id"
STEP_METRIC = "train/global_step"
DEFAULT_PROJECT = "mlx_models"


class ReportError(MLXModelsError):
    """A logger that could not start or write (W&B unreachable, say) while it was required."""


# ---- the option -----------------------------------------------------------------------------------


def value_problems(names: list[str] | None) -> list[str]:
    """What is wrong with a report_to list (TrainConfig checks it; no import here)."""
    unknown = [n for n in names or [] if n not in VALUES]
    if unknown:
        return [f"report_to: unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(VALUES)}"]
    if len(names or []) > 1 and {"none", "all"} & set(names):
        return ["report_to: none and all stand alone; or name the loggers: tensorboard,wandb"]
    return []


def resolve(names: list[str] | None) -> list[str] | None:
    """The loggers ``names`` asks for, each importable, before anything is written: ``all`` means
    those installed (as in transformers); a missing package is a ConfigError."""
    if not names:
        return None
    if names == ["all"]:
        names = [n for n in LOGGERS if importlib.util.find_spec(MODULE[n].split(".")[0]) is not None]
        if not names:
            raise ConfigError("--report-to all found neither package: pip install tensorboard wandb")
    for name in names:
        package = MODULE[name].split(".")[0]
        try:
            importlib.import_module(package)
            importlib.import_module(MODULE[name])
        except ImportError:
            raise ConfigError(
                f"--report-to {name} needs the {package} package: pip install {package}"
            ) from None
        except Exception as e:  # installed but broken (a protobuf mismatch, say)
            raise ConfigError(
                f"--report-to {name}: the {package} package does not import ({type(e).__name__}: {e}); "
                f"reinstall it: pip install --force-reinstall {package}"
            ) from None
    return list(names)


def scalars(record: dict) -> dict[str, float]:
    """``{"<split>/<key>": value}`` for every number of a metrics.jsonl record but its step."""
    split = record.get("split", "train")
    return {
        f"{split}/{k}": v
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


# ---- the loggers ----------------------------------------------------------------------------------


class TensorBoard:
    """Event files written by TensorBoard's own EventFileWriter (no torch needed)."""

    def __init__(self, run_dir: Path, config: dict, name: str, purge_from: int | None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(str(run_dir / TB_DIR))
        if purge_from is not None:  # a resume redoes the steps after its checkpoint: drop their events
            start = SessionLog(status=SessionLog.START)
            self.writer.add_event(Event(wall_time=time.time(), step=purge_from, session_log=start))
        text = "\n".join("    " + line for line in json.dumps(config, indent=2).splitlines())  # markdown code
        self.writer.add_event(Event(wall_time=time.time(), step=0, summary=text_pb("config", text)))
        self.writer.flush()

    def log(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        for tag, value in values.items():
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
            self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.writer.flush()  # a record per evaluation: cheap, and a crash loses none

    def close(self, ok: bool) -> None:
        self.writer.close()


class WandB:
    """One W&B run per run directory; WANDB_MODE, WANDB_ENTITY, WANDB_API_KEY... are wandb's own."""

    def __init__(self, run_dir: Path, config: dict, name: str, purge_from: int | None):
        """``purge_from`` is TensorBoard's; here redone steps are new rows on train/global_step."""
        import wandb

        id_file = run_dir / WANDB_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        new_id = not run_id
        run_id = run_id or secrets.token_hex(4)  # W&B's own ids: 8 characters of [a-z0-9]
        project = os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        self.run = wandb.init(
            dir=run_dir, project=project, name=name, id=run_id, resume="allow", config=config
        )
        if new_id:  # kept once W&B took it: a resume or --eval-only continues the same W&B run
            id_file.parent.mkdir(exist_ok=True)
            atomic_write_text(id_file, run_id + "\n")
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values | {STEP_METRIC: step})

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


OPENERS = {"tensorboard": TensorBoard, "wandb": WandB}


# ---- a run's loggers ------------------------------------------------------------------------------


class Reporter:
    """The loggers of one run (none on ranks other than 0). A logger that fails is dropped with a
    warning when the run was started with --report-to-optional; otherwise the run stops."""

    def __init__(self, loggers: dict[str, Any], optional: bool):
        self.loggers, self.optional = loggers, optional

    def log(self, record: dict) -> None:
        values = scalars(record)
        for name, logger in list(self.loggers.items()):
            try:
                logger.log(record["step"], values)
            except Exception as e:
                self.failed(name, "could not log", e)

    def close(self, ok: bool) -> None:
        """Finish every logger (W&B with exit code 1 unless ``ok``); after a failure, quietly."""
        for name, logger in list(self.loggers.items()):
            del self.loggers[name]
            try:
                logger.close(ok)
            except Exception as e:
                if ok:
                    self.failed(name, "could not finish", e)

    def failed(self, name: str, what: str, e: Exception) -> None:
        """``name`` failed: without it from now on (--report-to-optional), else stop the run."""
        if (logger := self.loggers.pop(name, None)) is not None:
            with contextlib.suppress(Exception):
                logger.close(False)
        message = f"{LABEL[name]} {what} ({type(e).__name__}: {' '.join(str(e).split())})"
        if self.optional:
            print(f"warning: {message}; going on without it (--report-to-optional)", file=sys.stderr)
            return
        self.close(False)
        raise ReportError(f"{message}; {HINT[name]}, or pass --report-to-optional to go on without it") from e


def open_reporter(
    cfg, run_dir: Path, *, main: bool = True, name: str | None = None, purge_from: int | None = None
) -> Reporter:
    """The loggers of ``cfg.report_to`` for ``run_dir`` (which exists); rank 0's alone log.
    ``name``: the run's name when ``run_dir`` is a temp dir; ``purge_from``: the first step a resumed
    run redoes."""
    reporter = Reporter({}, cfg.report_to_optional)
    if not main:
        return reporter
    config = dataclasses.asdict(cfg)
    names = resolve(cfg.report_to) or []
    fresh = [d for d in (run_dir / TB_DIR, run_dir / WANDB_ID.parent) if not d.exists()]
    try:
        for logger in names:
            try:
                reporter.loggers[logger] = OPENERS[logger](run_dir, config, name or run_dir.name, purge_from)
            except Exception as e:
                reporter.failed(logger, "could not start", e)
    except ReportError:  # the run stops: a resumed or re-scored run keeps nothing of this start
        for d in fresh:
            shutil.rmtree(d, ignore_errors=True)
        raise
    return reporter


_OPEN: dict[Path, Reporter] = {}  # run directory -> its reporter, while `reporting` holds it


@contextlib.contextmanager
def reporting(
    cfg, run_dir: Path, *, main: bool = True, name: str | None = None, purge_from: int | None = None
) -> Iterator[Reporter]:
    """Open the run's loggers (see `open_reporter`); every record `metrics.append_metrics` writes
    to ``run_dir`` meanwhile goes to them; closed at the end (failed: W&B exit code 1)."""
    reporter = open_reporter(cfg, run_dir, main=main, name=name, purge_from=purge_from)
    key = Path(run_dir).resolve()
    _OPEN[key], ok = reporter, False
    try:
        yield reporter
        ok = True
    finally:
        _OPEN.pop(key, None)
        reporter.close(ok)


def forward(run_dir: str | os.PathLike, record: dict) -> None:
    """Hand a metrics.jsonl record to the run's loggers, if it has any open."""
    if (reporter := _OPEN.get(Path(run_dir).resolve())) is not None:
        reporter.log(record)
