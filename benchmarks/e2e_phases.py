"""`python train.py ARGS` with a stopwatch on the library's phases, for `end_to_end.py`'s breakdown.

    E2E_PHASES_OUT=phases.json python benchmarks/e2e_phases.py ARGS

Runs the very command `train.py` runs (mlx_models.commands.train through run_cli) after wrapping
the functions each phase calls with timers; nothing else changes. Writes {phase: seconds, ...},
the time from the process's start to the first library call (interpreter + imports), the
per-step times and the wall-clock end of the run to E2E_PHASES_OUT. The wrapped functions are
looked up where the trainer calls them (names imported with ``from ... import``).
"""

import json
import os
import sys
import time
from pathlib import Path

# (module, attribute, phase): inclusive times; the breakdown subtracts the nested ones.
WRAPPED = (
    ("mlx_models.train.trainer", "load_data", "data"),
    ("mlx_models.train.build", "load_model", "model_load"),
    ("mlx_models.train.build", "load_tokenizer", "tokenizer_load"),
    ("mlx_models.train.trainer", "build", "build"),
    ("mlx_models.train.trainer", "examples", "tokenize"),
    ("mlx_models.train.trainer", "setup", "setup"),
    ("mlx_models.train.trainer", "start_or_resume", "run_dir"),
    ("mlx_models.train.trainer", "train_loop", "train_loop"),
    ("mlx_models.train.trainer", "optimizer_step", "steps"),
    ("mlx_models.train.trainer", "evaluate", "eval_during"),
    ("mlx_models.train.trainer", "record_evaluation", "record"),
    ("mlx_models.train.trainer", "plot_curves", "plot"),
    ("mlx_models.train.final_eval", "plot_curves", "plot"),
    ("mlx_models.train.run_dir", "save_checkpoint", "checkpoint"),
    ("mlx_models.train.trainer", "test_and_report", "test_total"),
    ("mlx_models.train.run_dir", "restore_weights", "restore"),
    ("mlx_models.train.final_eval", "encode_split", "tokenize_test"),
    ("mlx_models.train.final_eval", "evaluate", "eval_test"),
)


def process_start() -> float:
    """This process's start (time.time() scale), from /proc: boot time + start ticks."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(ln.split()[1]) for ln in open("/proc/stat") if ln.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def timed(fn, phase: str, totals: dict, calls: dict):
    def wrapper(*args, **kwargs):
        tic = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.perf_counter() - tic
            totals[phase] = totals.get(phase, 0.0) + took
            calls.setdefault(phase, []).append(round(took, 4))

    return wrapper


def install(totals: dict, calls: dict) -> None:
    import importlib

    for module, name, phase in WRAPPED:
        mod = importlib.import_module(module)
        setattr(mod, name, timed(getattr(mod, name), phase, totals, calls))


def main(argv: list[str]) -> int:
    started = process_start()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import mlx_models.train.trainer  # noqa: F401
    from mlx_models.cli import run_cli  # the imports train.py makes, then the trainer's
    from mlx_models.commands import train

    totals, calls = {}, {}
    install(totals, calls)
    imported = time.time()
    sys.argv = ["train.py", *argv]
    try:
        return run_cli(train)
    finally:
        out = {
            "process_start": started,
            "imported": imported,
            "run_end": time.time(),
            "totals": totals,
            "calls": {k: v for k, v in calls.items() if k in ("steps", "checkpoint", "eval_during")},
        }
        Path(os.environ["E2E_PHASES_OUT"]).write_text(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
