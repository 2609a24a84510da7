"""The study in one command: every selected model on every selected dataset, one comparison report.

    python train.py --study NAME [--only MODEL,...] [--datasets NAME,...] [train.py options]
    python -m mlx_models.study NAME ...

Each cell is `python train.py --model M --dataset D --profile P ... --out
results/study/NAME/runs/<model>-<dataset>`, a child process of its own, so a 7B QLoRA never
shares memory with anything else. A cell whose run has a test record is skipped; one with a
checkpoint is resumed (`--resume`: from its furthest checkpoint); one stopped before its first
checkpoint is started again; one that fails (exit code, last `error:` line) is recorded and the
study goes on. Ctrl-C or SIGTERM reaches the running cell (which saves last/), then the study
writes its report and stops (130/143). train.py options given here apply to every cell. The
plan of the study (cells and their arguments) is kept in plan.json: a re-run must match it. Exit
code 0 when every cell run finished, 1 when one failed (the report is still written), 2 for bad
input (nothing written).

A model the study pretrains (`pretrain:`, study/pretrain.py) has its pretraining stages run
first, each as a cell is (`results/study/NAME/pretrain/...`, in plan.json and status.json too);
its cells finetune the last stage's best/ checkpoint, and fail without running when a stage failed.
"""

import argparse
import codecs
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..cli import ArgumentParser, Terminated, stop_for
from ..errors import ConfigError
from ..io import LOCK, atomic_write_json, read_json, take_lock
from ..registry import config_file
from ..train import run_dir as rd
from ..train.config import parse_command_line
from ..train.metrics import read_metrics
from .plan import STUDY_ROOT, Cell, Plan, load_plan, model_alias, study_names
from .report import read_state, write_report

TRAIN = ["-m", "mlx_models", "train"]  # train.py, as the installed package runs it
ANALYSE = ["-m", "mlx_models.study.analysis"]
OPTIONS = ("--study", "--only", "--datasets")


def main(argv: list[str] | None = None, config_path: str | os.PathLike | None = None) -> int:
    config_path = config_path or config_file()
    opts, rest = parse_args(list(sys.argv[1:] if argv is None else argv), config_path)
    plan = load_plan(opts.name, parse_command_line(rest), config_path)
    cells = narrow(plan, opts.only, opts.datasets, config_path)
    study_dir = STUDY_ROOT / plan.name
    env = cell_environment(config_path)
    with one_at_a_time(study_dir):
        check_same_plan(study_dir, plan)  # the last check: nothing but the lock is written before it
        atomic_write_json(study_dir / "plan.json", plan.describe())
        try:
            todo, failed = run_pretraining(study_dir, plan, cells, env)
            for k, cell in enumerate(todo, 1):
                if run_cell(study_dir, cell, f"[{k}/{len(todo)}]", env) == "failed":
                    failed.append(cell.id)
            for k, cell in enumerate(cells if plan.analysis else [], 1):
                if analyse_cell(study_dir, cell, plan.analysis, f"[{k}/{len(cells)}]", env) == "failed":
                    failed.append(f"{cell.id} (analysis)")
        finally:
            write_report(study_dir, plan)
    print(
        f"study {plan.name}: {len(cells) - len(failed)} of {len(cells)} cells finished"
        + (f", failed: {', '.join(failed)}" if failed else "")
        + f"; report: {study_dir / 'report.md'}",
        file=sys.stderr,
    )
    return 1 if failed else 0


def cell_environment(config_path: str | os.PathLike) -> dict[str, str]:
    """The cells read the study's config.yaml and import this very mlx_models, wherever it lies."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "MLX_MODELS_CONFIG": str(Path(config_path).resolve()), "PYTHONPATH": path}


def parse_args(argv: list[str], config_path: str | os.PathLike) -> tuple[argparse.Namespace, list[str]]:
    """(the study's own options, the train.py options for every cell)."""
    ours, rest, tokens = [], [], iter(argv)
    for token in tokens:
        if token.split("=", 1)[0] in OPTIONS:
            value = None if "=" in token else next(tokens, None)  # None: argparse says it is missing
            ours += [token] if value is None else [token, value]
        elif token in ("-h", "--help"):
            ours.append(token)
        else:
            rest.append(token)
    if rest and not rest[0].startswith("-") and "=" not in rest[0]:
        ours.insert(0, rest.pop(0))  # python -m mlx_models.study NAME
    parser = ArgumentParser(
        prog="python -m mlx_models.study",
        description="Train every model x dataset of a study in config.yaml (model_selection.studies) "
        "and write results/study/NAME/report.md, report.json and comparison.png. A model under the "
        "study's pretrain: is first pretrained from scratch (masked-LM) on each dataset's training split.",
        epilog="Any other option is a train.py option (python train.py --help) applied to every cell "
        "(not to the pretraining, which takes only its own keys). "
        f"Studies in {config_path}: {', '.join(study_names(config_path)) or 'none yet'}.",
    )
    parser.add_argument("name", nargs="?", help="the study (or --study NAME)")
    parser.add_argument("--study", metavar="NAME", help="the study, as train.py takes it")
    parser.add_argument("--only", metavar="MODEL,...", help="run only these models of the study now")
    parser.add_argument("--datasets", metavar="NAME,...", help="run only these datasets of the study now")
    opts = parser.parse_args(ours)
    if (opts.name is None) == (opts.study is None):
        known = ", ".join(study_names(config_path)) or "none in config.yaml yet"
        raise ConfigError(
            f"name one study: --study NAME or python -m mlx_models.study NAME (studies: {known})"
        )
    opts.name = opts.name or opts.study
    return opts, rest


def narrow(plan: Plan, only: str | None, datasets: str | None, config_path: str | os.PathLike) -> list[Cell]:
    """The cells of ``plan`` that --only and --datasets keep (all by default)."""
    cells = plan.cells
    if only:
        where = f"--only (study {plan.name}: {', '.join(plan.models)})"
        models = {model_alias(m.strip(), config_path, where) for m in only.split(",") if m.strip()}
        if missing := models - {c.model for c in cells}:
            raise ConfigError(f"{where} names {', '.join(sorted(missing))}, which the study does not select")
        cells = [c for c in cells if c.model in models]
    if datasets:
        names, known = {d.strip() for d in datasets.split(",") if d.strip()}, {c.dataset for c in plan.cells}
        if missing := names - known:
            raise ConfigError(
                f"--datasets names {', '.join(sorted(missing))}, which study {plan.name} does not select "
                f"({', '.join(sorted(known))})"
            )
        cells = [c for c in cells if c.dataset in names]
    return cells


@contextlib.contextmanager
def one_at_a_time(study_dir: Path) -> Iterator[None]:
    """A study runs in one process at a time: two would train the same cells into the same runs
    (``io.take_lock``)."""
    created = not study_dir.exists()
    study_dir.mkdir(parents=True, exist_ok=True)
    busy = f"study {study_dir.name} is already running (process {{pid}}); wait for it or stop it"
    try:
        lock = take_lock(study_dir, busy)
    except BaseException:
        if created:
            shutil.rmtree(study_dir, ignore_errors=True)
        raise
    try:
        yield
    finally:
        lock.release()


def check_same_plan(study_dir: Path, plan: Plan) -> None:
    """A study directory is one plan: other models, datasets or settings need another name."""
    if not [p for p in study_dir.iterdir() if p.name != LOCK]:
        return
    before = read_state(study_dir / "plan.json")
    if before is None:
        raise ConfigError(
            f"{study_dir} exists but holds no study (no plan.json); remove it or rename the study"
        )
    now = plan.describe()
    if before == now:
        return
    old, new = _runs(before), _runs(now)
    if old.keys() != new.keys():
        gone, added = [c for c in old if c not in new], [c for c in new if c not in old]
        what = ", ".join(
            part
            for part in (gone and f"cells now left out {gone}", added and f"cells now added {added}")
            if part
        )
    elif (cell := next((c for c in new if old[c] != new[c]), None)) is not None:
        what = f"cell {cell} as `{shlex.join(old[cell])}`; now `{shlex.join(new[cell])}`"
    else:  # the same cells, other study settings (the analysis's)
        what = "; ".join(f"{k} {before.get(k)!r}, now {now[k]!r}" for k in now if before.get(k) != now[k])
    raise ConfigError(
        f"study {plan.name} in {study_dir} was run with a different selection: {what}; "
        f"use the same selection and options, choose another study name, or remove {study_dir}"
    )


def _runs(described: dict) -> dict[str, list[str]]:
    """The runs of a plan.json and their arguments: the cells and the pretraining stages."""
    stages = {f"pretrain/{id_}": args for id_, args in (described.get("pretraining") or {}).items()}
    return stages | described.get("cells", {})


# ---- pretraining stages --------------------------------------------------------------------------


def run_pretraining(
    study_dir: Path, plan: Plan, cells: list[Cell], env: dict
) -> tuple[list[Cell], list[str]]:
    """Run the pretraining stages that ``cells`` finetune, each as a cell is run (a phase after the
    one before it); a run whose stage failed is recorded failed instead of run. Returns (the cells
    to run now, the cells recorded failed)."""
    stages, broken = plan.stages_of(cells), {}  # run -> why what goes on from it cannot run
    for k, stage in enumerate(stages, 1):
        if stage.pretrained in broken:
            broken[stage.run] = record_not_run(study_dir, stage, broken[stage.pretrained])
        elif run_cell(study_dir, stage, f"[pretrain {k}/{len(stages)}]", env) == "failed":
            reason = (read_state(study_dir / "status.json") or {})[stage.key]["reason"]
            broken[stage.run] = f"pretraining failed ({stage.key}): {reason}"
    for cell in (c for c in cells if c.pretrained in broken):
        record_not_run(study_dir, cell, broken[cell.pretrained])
    return [c for c in cells if c.pretrained not in broken], [c.id for c in cells if c.pretrained in broken]


def record_not_run(study_dir: Path, cell: Cell, reason: str) -> str:
    """A cell that could not start: failed, with why, in status.json; a re-run tries it again."""
    status = read_state(study_dir / "status.json") or {}
    before = status.get(cell.key, {})
    status[cell.key] = {"status": "failed", "reason": reason, "exit_code": None, "wall_s": 0.0}
    status[cell.key] |= {"max_rss_gb": 0.0, "attempts": before.get("attempts", 0), "command": None}
    atomic_write_json(study_dir / "status.json", status)
    print(f"{cell.key}: failed: {reason}", file=sys.stderr)
    return reason


# ---- one cell ------------------------------------------------------------------------------------


def cell_state(run_dir: Path) -> str:
    """new | finished (a test record) | resumable (a checkpoint) | restart (neither)."""
    if not run_dir.exists():
        return "new"
    if any(r.get("split") == "test" for r in read_metrics(run_dir)):
        return "finished"
    checkpoints = [p for p in run_dir.iterdir() if (p / "trainer_state.json").is_file()]
    return "resumable" if checkpoints else "restart"


def run_cell(study_dir: Path, cell: Cell, progress: str, env: dict) -> str:
    """Run (or skip, resume, restart) one cell; record its outcome in status.json."""
    run_dir = study_dir / cell.run
    state = cell_state(run_dir)
    if state == "finished":
        print(f"{progress} {cell.key}: finished earlier, skipped", file=sys.stderr)
        return "finished"
    status = read_state(study_dir / "status.json") or {}
    before = status.get(cell.key, {}) if state == "resumable" else {}
    if state == "restart":
        print(
            f"{progress} {cell.key}: stopped before its first checkpoint; starting it again", file=sys.stderr
        )
        shutil.rmtree(run_dir)
    if state != "resumable":  # an analysis of an earlier run of this cell is not this run's
        shutil.rmtree(study_dir / "analysis" / cell.id, ignore_errors=True)
    args = ["--resume", str(run_dir)] if state == "resumable" else cell.train_args(run_dir)
    command = shlex.join(["python", "train.py", *args])
    verb = "resuming" if state == "resumable" else "training"
    print(f"{progress} {cell.key}: {verb}: {command}", file=sys.stderr)
    outcome = run_child([sys.executable, *TRAIN, *args], env)
    status[cell.key] = outcome | {
        "command": command,
        "attempts": before.get("attempts", 0) + 1,
        "wall_s": round(before.get("wall_s", 0.0) + outcome["wall_s"], 1),
        "max_rss_gb": max(before.get("max_rss_gb", 0.0), outcome["max_rss_gb"]),
    }
    atomic_write_json(study_dir / "status.json", status)
    print(f"{progress} {cell.key}: {outcome['status']}" + _reason(outcome), file=sys.stderr)
    if outcome["status"] == "interrupted":  # the study stops as the cell did
        raise stop_for(signal.SIGTERM if outcome["exit_code"] in STOPPED[signal.SIGTERM] else signal.SIGINT)
    return outcome["status"]


def _reason(outcome: dict) -> str:
    return f": {outcome['reason']}" if outcome.get("reason") else ""


STOPPED = {signal.SIGINT: (130, -signal.SIGINT), signal.SIGTERM: (143, -signal.SIGTERM)}  # exit codes


def run_child(command: list[str], env: dict) -> dict:
    """Run a cell's train.py, its stderr shown live and its tail kept for the failure reason."""
    tic = time.perf_counter()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
    try:
        tail = pump(proc)
    finally:
        proc.stderr.close()
        _, wait_status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory (ru_maxrss)
        proc.returncode = code = os.waitstatus_to_exitcode(wait_status)
    rss_gb = usage.ru_maxrss / (1e9 if sys.platform == "darwin" else 1e6)  # bytes on macOS, KiB on Linux
    outcome = {"exit_code": code, "wall_s": time.perf_counter() - tic, "max_rss_gb": round(rss_gb, 3)}
    if code == 0:
        return outcome | {"status": "finished", "reason": None}
    if code in (*STOPPED[signal.SIGINT], *STOPPED[signal.SIGTERM]):
        return outcome | {
            "status": "interrupted",
            "reason": "stopped by Ctrl-C or SIGTERM; a re-run resumes it",
        }
    return outcome | {"status": "failed", "reason": failure_reason(code, tail)}


def pump(proc: subprocess.Popen) -> str:
    """Copy the child's stderr to ours until it ends; the last 20,000 characters. A Ctrl-C or
    SIGTERM of the study is passed on to the child (which saves last/), and its output still read."""
    decoder, tail, passed_on = codecs.getincrementaldecoder("utf-8")(errors="replace"), "", False
    while True:
        try:
            chunk = os.read(proc.stderr.fileno(), 1 << 16)
        except KeyboardInterrupt as e:
            if passed_on:  # a second one: stop waiting
                raise
            proc.send_signal(signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
            passed_on = True
            continue
        if not chunk:
            return tail
        text = decoder.decode(chunk)
        sys.stderr.write(text)
        sys.stderr.flush()
        tail = (tail + text)[-20_000:]


def failure_reason(code: int, stderr_tail: str) -> str:
    """One line: the cell's `error:` line (exit 2), else its last line, else how it ended."""
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr_tail) if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1].removeprefix("error: ")
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (the system's out-of-memory killer?)" if code == -signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}" + (f": {lines[-1]}" if lines else "")


# ---- a cell's analysis ---------------------------------------------------------------------------


def analyse_cell(study_dir: Path, cell: Cell, settings: dict, progress: str, env: dict) -> str:
    """Analyse every checkpoint of a trained cell (study/analysis.py, a child process); record the
    outcome in status.json under the cell's "analysis"."""
    run_dir, out = study_dir / "runs" / cell.id, study_dir / "analysis" / cell.id
    if cell_state(run_dir) != "finished":
        return "not run"
    if analysed(run_dir, out):
        print(f"{progress} {cell.id}: analysed earlier, skipped", file=sys.stderr)
        return "finished"
    command = [
        *ANALYSE,
        str(run_dir),
        str(out),
        "--probe-file",
        str(study_dir / "probes" / f"{cell.dataset}.jsonl"),
    ]
    for key in ("probe", "members", "steps", "random_draws"):
        command += [f"--{key.replace('_', '-')}", str(settings[key])]
    command += ["--methods", ",".join(settings["methods"])]
    print(f"{progress} {cell.id}: analysing its checkpoints", file=sys.stderr)
    outcome = run_child([sys.executable, *command], env)
    status = read_state(study_dir / "status.json") or {}
    before = status.get(cell.id, {}).get("analysis") or {}
    wall = round(before.get("wall_s", 0.0) + outcome["wall_s"], 1)
    keep = {k: outcome[k] for k in ("status", "reason", "exit_code", "max_rss_gb")}
    status.setdefault(cell.id, {})["analysis"] = keep | {"wall_s": wall}
    atomic_write_json(study_dir / "status.json", status)
    print(f"{progress} {cell.id}: analysis {outcome['status']}" + _reason(outcome), file=sys.stderr)
    if outcome["status"] == "interrupted":
        raise stop_for(signal.SIGTERM if outcome["exit_code"] in STOPPED[signal.SIGTERM] else signal.SIGINT)
    return outcome["status"]


def analysed(run_dir: Path, out: Path) -> bool:
    """Every checkpoint of the run has its analysis file (of its step), and the cell's page is written."""
    if not (out / "index.html").is_file():
        return False
    files = {p: out / f"{p.name}.json" for p in rd.checkpoints(run_dir)}
    return all(
        f.is_file() and read_json(f, ConfigError)["step"] == rd.checkpoint_step(p) for p, f in files.items()
    )
