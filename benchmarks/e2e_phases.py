"""`python train.py ARGS` with a stopwatch on the library's phases, for `end_to_end.py`.

    E2E_PHASES_OUT=phases.json python benchmarks/e2e_phases.py ARGS

Runs what train.py runs (run_cli(commands.train)) after wrapping the functions each phase calls
with timers; nothing else changes. A phase's time excludes the wrapped calls nested in it, so the
phases add up; what no timer covers is "other". Writes {"imported": time.time() after the imports,
"run_end": ..., "phases": {phase: seconds}} to E2E_PHASES_OUT. The functions are replaced where
their callers look them up (names imported with ``from ... import`` live in the caller's module).
"""

import importlib
import json
import os
import sys
import time
from pathlib import Path

# (module, function, phase); "first step" is the first optimizer_step, "steps" the others.
WRAPPED = (
    ("mlx_models.train.trainer", "load_data", "data: read the embedded CSV, hold out, subsample"),
    ("mlx_models.train.trainer", "build", "model: load weights and tokenizer"),
    ("mlx_models.train.trainer", "examples", "tokenize train + validation"),
    ("mlx_models.train.trainer", "start_or_resume", "run directory"),
    ("mlx_models.train.trainer", "optimizer_step", "steps"),
    ("mlx_models.train.trainer", "evaluate", "evaluation: validation + train probe"),
    ("mlx_models.train.trainer", "record_evaluation", "metrics.jsonl + curves.png"),
    ("mlx_models.train.run_dir", "save_checkpoint", "checkpoints: best/ + last/"),
    ("mlx_models.train.run_dir", "restore_weights", "test: restore best/"),
    ("mlx_models.train.final_eval", "encode_split", "test: tokenize"),
    ("mlx_models.train.final_eval", "evaluate", "test: evaluate"),
    ("mlx_models.train.final_eval", "plot_curves", "test: curves.png"),
)
FIRST_STEP = "first step (compilation)"
PHASES: dict[str, float] = {}
NESTED: list[float] = []  # per open timed call: time spent in the timed calls inside it


def timed(fn, phase: str):
    def wrapper(*args, **kwargs):
        first = phase == "steps" and FIRST_STEP not in PHASES
        name = FIRST_STEP if first else phase
        PHASES.setdefault(name, 0.0)
        NESTED.append(0.0)
        tic = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.perf_counter() - tic
            PHASES[name] += took - NESTED.pop()
            if NESTED:
                NESTED[-1] += took

    return wrapper


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlx_models.cli import run_cli  # the imports train.py makes, then the trainer's
    from mlx_models.commands import train

    for module, name, phase in WRAPPED:
        mod = importlib.import_module(module)
        setattr(mod, name, timed(getattr(mod, name), phase))
    imported = time.time()
    sys.argv = ["train.py", *argv]
    try:
        return run_cli(train)
    finally:
        out = {"imported": imported, "run_end": time.time(), "phases": PHASES}
        Path(os.environ["E2E_PHASES_OUT"]).write_text(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
