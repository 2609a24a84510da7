"""End to end: what a user runs, `python train.py` (load, train, evaluate, save), against what they
would otherwise run, transformers' `Trainer` (with peft for LoRA), on the same recipe and data.

    python benchmarks/end_to_end.py            # full run (~30 min on 2 cores): benchmarks/end_to_end.md
    python benchmarks/end_to_end.py --quick    # 64 reviews x 32 tokens (LoRA 16 x 32), writes nothing
    python benchmarks/end_to_end.py --rows minilm --out /tmp/e2e.md

Each row is one process, timed whole (start-up, imports, data, tokenization, training, evaluation,
checkpoints, test): `python train.py` exactly as a user types it, and `e2e_trainer.py` (Trainer)
on the very texts and labels train.py's loader picks, with train.py's resolved recipe. Peak
memory is the child's RSS high-water mark (``wait4``'s ru_maxrss). A third process,
`e2e_phases.py`, reruns the MiniLM command with timers on the library's phases. See README.md.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # this checkout's mlx_models, wherever the script is started from
    sys.path.insert(0, str(ROOT))

# The user's command lines (after `python train.py`): the default run, and LoRA on SmolLM2-135M.
COMMANDS = {
    "minilm": [],
    "lora": "--model smollm2-135m --lora --max-samples 300 --max-length 128 --epochs 1".split(),
}
QUICK = {
    "minilm": "--max-samples 64 --max-length 32".split(),
    "lora": "--model smollm2-135m --lora --max-samples 16 --max-length 32 --epochs 1".split(),
}
TITLES = {"minilm": "MiniLM-L6, full finetuning (the default run)", "lora": "SmolLM2-135M, LoRA"}
TARGET_SPEED, TARGET_ACCURACY = 1.5, 0.01  # issue 28, item 2


@dataclass
class Proc:
    """One timed child process: wall and CPU seconds, RSS high-water mark, its output with times."""

    command: list[str]
    start: float  # time.time() just before the fork
    wall: float = 0.0
    cpu: float = 0.0
    rss_gb: float = 0.0
    code: int = 0
    out: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, piece)
    err: list[tuple[float, str]] = field(default_factory=list)
    load: tuple[str, str] = ("", "")
    others: float = 0.0  # CPU seconds other processes used while it ran
    waited: float = 0.0  # seconds waited for an idle machine before it started

    def first(self, pattern: str, stream: str = "err") -> float | None:
        """Seconds from the start to the first output piece matching ``pattern``."""
        return next((t for t, s in getattr(self, stream) if re.search(pattern, s)), None)

    def record(self) -> dict:
        """The last JSON object the process printed on stdout (both sides print their test scores)."""
        for _, line in reversed(self.out):
            if line.startswith("{"):
                return json.loads(line)
        tail = "".join(s + "\n" for _, s in self.err[-15:])
        raise RuntimeError(f"{' '.join(self.command)} exited {self.code} without a result:\n{tail}")


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def busy_seconds() -> float:
    """CPU seconds all processes have used since boot (/proc/stat: all but idle and iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wait_idle(limit: float, window: float = 5.0, threshold: float = 0.25) -> float:
    """Wait (up to ``limit`` s) until other processes use under ``threshold`` of a core over
    ``window`` s: one busy neighbour makes both sides' OpenMP threads fight for the 2 cores."""
    tic = time.perf_counter()
    while time.perf_counter() - tic < limit:
        before = busy_seconds()
        time.sleep(window)
        if (busy_seconds() - before) / window < threshold:
            break
    return time.perf_counter() - tic


def _drain(stream, into: list, tic: float) -> None:
    """Pieces of output split at \\r and \\n (tqdm redraws with \\r), timed when they end."""
    rest = b""
    while chunk := os.read(stream.fileno(), 65536):
        parts = re.split(rb"[\r\n]", rest + chunk)
        rest = parts.pop()
        now = time.perf_counter() - tic
        into += [(now, p.decode(errors="replace")) for p in parts if p.strip()]
    if rest.strip():
        into.append((time.perf_counter() - tic, rest.decode(errors="replace")))


def measure(command: list[str], env: dict | None = None, idle: float = 0.0) -> Proc:
    """Run ``command`` in the repository root, after waiting up to ``idle`` s for an idle machine;
    wall time from fork to reaping, and the CPU time other processes took meanwhile."""
    waited = wait_idle(idle) if idle else 0.0
    before, busy = load(), busy_seconds()
    proc = Proc(command, time.time(), waited=waited)
    tic = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    readers = [
        threading.Thread(target=_drain, args=(child.stdout, proc.out, tic)),
        threading.Thread(target=_drain, args=(child.stderr, proc.err, tic)),
    ]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(child.pid, 0)
    proc.wall = time.perf_counter() - tic
    for r in readers:
        r.join()
    child.returncode = proc.code = os.waitstatus_to_exitcode(status)
    proc.cpu = usage.ru_utime + usage.ru_stime
    proc.rss_gb = usage.ru_maxrss * 1024 / 1e9  # kB on Linux
    proc.load, proc.others = (before, load()), max(0.0, busy_seconds() - busy - proc.cpu)
    print(
        f"  {proc.wall:.1f} s (waited {waited:.0f} s for an idle machine), exit {proc.code}, "
        f"load {before} -> {proc.load[1]}, other processes {proc.others / proc.wall:.2f} cores",
        file=sys.stderr,
    )
    return proc


# ---- the recipe and the data, as train.py resolves them ----------------------------------------


def recipe(argv: list[str]):
    """train.py's resolved TrainConfig for ``argv`` (config.yaml's defaults, the profile, the flags)."""
    from mlx_models.train.config import load_train_config

    return load_train_config(argv)


def data_file(cfg, path: Path) -> dict:
    """train.py's splits (its loader, its seed) and its training probe, written for the Trainer."""
    import numpy as np

    from mlx_models.train.data import load_splits

    splits = load_splits(cfg)
    train, val = splits.train, splits.validation
    probe = np.random.default_rng(cfg.seed).permutation(len(train))[: len(val)]  # build.examples
    data = {name: {"texts": s.texts, "labels": s.labels} for name, s in vars(splits).items() if name in
            ("train", "validation", "test")}  # fmt: skip
    data["probe"] = {"texts": [train.texts[i] for i in probe], "labels": [train.labels[i] for i in probe]}
    path.write_text(json.dumps(data))
    return {"num_labels": splits.num_labels, **{k: len(v["texts"]) for k, v in data.items()}}


def model_dirs(cfg, tmp: Path) -> tuple[Path, Path]:
    """(our MLX directory, an HF directory of the same weights). The conversion cache is filled
    before any timing (a user converts once). The HF side gets the alias's source when it is a
    transformers directory (MiniLM), else our converted weights exported with `--to hf` (SmolLM2's
    GGUF: dequantized Q4_1, the same numbers our side trains)."""
    from mlx_models.interop.loading import embedded_path, resolve
    from mlx_models.registry import read_config_yaml

    ours = resolve(cfg.model)
    source = read_config_yaml()["models"].get(cfg.model, {}).get("source", cfg.model)
    hf = embedded_path(source) if source.startswith("embedded:") else Path(source)
    if hf.is_dir() and (hf / "config.json").is_file():
        return ours, hf
    out = tmp / f"{cfg.model}-hf"
    command = [sys.executable, "-m", "mlx_models.export", str(ours), "--to", "hf", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return ours, out


def trainer_spec(cfg, hf_dir: Path, data: Path, sizes: dict, out: Path) -> dict:
    """The Trainer's settings, each taken from train.py's resolved config."""
    steps = math.ceil(sizes["train"] / (cfg.batch_size * cfg.grad_accum)) * cfg.epochs
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * steps)
    assert cfg.grad_accum == 1 and cfg.lr_schedule == "linear" and cfg.eval_every is None, cfg
    lora = None
    if cfg.lora:
        lora = {"r": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout}
        lora["targets"] = cfg.lora_targets
    return {
        "model": str(hf_dir), "data": str(data), "out": str(out), "num_labels": sizes["num_labels"],
        "batch_size": cfg.batch_size, "eval_batch_size": cfg.eval_batch_size or 4 * cfg.batch_size,
        "learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "warmup_steps": warmup,
        "steps": steps, "epochs": cfg.epochs, "max_grad_norm": cfg.max_grad_norm, "seed": cfg.seed,
        "max_length": cfg.max_length, "lora": lora,
    }  # fmt: skip


# ---- the rows ------------------------------------------------------------------------------------


@dataclass
class Pair:
    """train.py and the Trainer on one recipe."""

    key: str
    argv: list[str]
    cfg: object
    sizes: dict
    spec: dict
    ours: Proc | None = None
    peer: Proc | None = None
    checkpoints: dict = field(default_factory=dict)  # best/, last/: last file written, s from start
    phases: dict | None = None  # e2e_phases.py's timers
    phases_wall: float = 0.0

    @property
    def steps(self) -> int:
        return self.spec["steps"]


def prepare(key: str, argv: list[str], tmp: Path) -> Pair:
    """Untimed: resolve the recipe, write the data, fill the conversion cache, export for HF."""
    print(f"preparing {key}: python train.py {' '.join(argv)}", file=sys.stderr)
    cfg = recipe(argv)
    data = tmp / f"{key}-data.json"
    sizes = data_file(cfg, data)
    _, hf = model_dirs(cfg, tmp)
    spec = trainer_spec(cfg, hf, data, sizes, tmp / f"{key}-trainer-out")
    (tmp / f"{key}-spec.json").write_text(json.dumps(spec, indent=1))
    return Pair(key, argv, cfg, sizes, spec)


def run_dir_of(proc: Proc) -> Path | None:
    """The run directory train.py announced ("training ... -> results/models/...")."""
    said = next((s for _, s in proc.err if s.startswith("training ") and " -> " in s), None)
    path = ROOT / said.rsplit(" -> ", 1)[1] if said else None
    return path if path is not None and path.is_dir() else None


def remove_run(run_dir: Path) -> None:
    """A run directory this benchmark made under results/models/ (never anything else)."""
    if run_dir.parent == ROOT / "results" / "models":
        shutil.rmtree(run_dir)


@dataclass
class Policy:
    """How rows are protected from other processes on a shared machine."""

    idle: float = 0.0  # before each attempt, wait up to this many s for an idle machine
    retries: int = 0  # rerun a disturbed row this many times at most; the least disturbed is kept
    disturbed: float = 0.15  # cores used by other processes meanwhile that make a row disturbed
    set_aside: list = field(default_factory=list)  # (row, wall, cores of others) of attempts not kept


def measured(name: str, command: list[str], policy: Policy, after, env: dict | None = None):
    """(process, ``after(process)``) of the least disturbed of up to 1 + retries attempts;
    ``after`` reads each attempt's outputs, and removes them, before the next one starts."""
    kept = None
    for attempt in range(1 + policy.retries):
        print(f"{name}" + (f", attempt {attempt + 1}" if attempt else ""), file=sys.stderr)
        proc = measure(command, env, policy.idle)
        result = (proc, after(proc))
        share = proc.others / proc.wall
        if kept is not None and share >= kept[0].others / kept[0].wall:
            policy.set_aside.append((name, proc.wall, share))
        else:
            if kept is not None:
                policy.set_aside.append((name, kept[0].wall, kept[0].others / kept[0].wall))
            kept = result
        if share <= policy.disturbed:
            break
    return kept


def run_ours(pair: Pair, policy: Policy) -> None:
    """`python train.py ARGS` as the user types it; its run directory is read, then removed."""

    def checkpoint_times(proc: Proc) -> dict:
        run_dir = run_dir_of(proc)
        if run_dir is None:
            proc.record()  # raises with the tail of its stderr
        times = {}
        for name in ("best", "last"):
            files = [p for p in (run_dir / name).iterdir() if p.is_file()]
            times[name] = max(p.stat().st_mtime for p in files) - proc.start
        remove_run(run_dir)
        return times

    command = [sys.executable, "train.py", *pair.argv]
    pair.ours, pair.checkpoints = measured(f"train.py ({pair.key})", command, policy, checkpoint_times)


def run_peer(pair: Pair, tmp: Path, policy: Policy) -> None:
    command = [sys.executable, str(HERE / "e2e_trainer.py"), str(tmp / f"{pair.key}-spec.json")]
    pair.peer, _ = measured(
        f"Trainer ({pair.key})", command, policy, lambda _: shutil.rmtree(pair.spec["out"])
    )


def run_phases(pair: Pair, tmp: Path, policy: Policy) -> None:
    """The same command once more, with timers on the library's phases (e2e_phases.py)."""
    out = tmp / f"{pair.key}-phases.json"

    def phases(proc: Proc) -> dict:
        proc.record()
        if run_dir := run_dir_of(proc):
            remove_run(run_dir)
        return json.loads(out.read_text()) | {"start": proc.start}

    command = [sys.executable, str(HERE / "e2e_phases.py"), *pair.argv]
    env = os.environ | {"E2E_PHASES_OUT": str(out)}
    proc, pair.phases = measured(f"train.py with phase timers ({pair.key})", command, policy, phases, env)
    pair.phases_wall = proc.wall


# ---- where the time goes -------------------------------------------------------------------------


def segments(marks: list[tuple[str, float | None]]) -> list[tuple[str, float]]:
    """(phase, seconds) between successive marks, each mark the end of its phase (seconds from the
    start); a phase whose mark is missing is merged into the next."""
    out, prev, pending = [], 0.0, []
    for label, at in marks:
        pending.append(label)
        if at is None:
            continue
        out.append((" + ".join(pending), at - prev))
        prev, pending = at, []
    return out


def our_timeline(pair: Pair) -> list[tuple[str, float]]:
    """train.py's phases from its own output, timed as it arrived, and its checkpoints' file times."""
    p, n = pair.ours, pair.steps
    return segments(
        [
            ("start-up: interpreter, imports, config", p.first(r"^notice: .*embedded")),
            ("data (embedded CSV, hold-out), model + tokenizer load, tokenization", p.first(r"^training ")),
            ("first step (compilation)", p.first(rf"\|\s*1/{n} \[")),
            (f"steps 2..{n}", p.first(rf"\|\s*{n}/{n} \[")),
            ("evaluation (validation + train probe), metrics, curves", p.first(r"^step \d+: train loss")),
            ("checkpoint best/", pair.checkpoints.get("best")),
            ("checkpoint last/", pair.checkpoints.get("last")),
            ("test: restore best/, tokenize, evaluate, report", p.first(r'"split": "test"', "out")),
            ("exit", p.wall),
        ]
    )


def peer_timeline(pair: Pair) -> list[tuple[str, float]]:
    """The Trainer script's phases from its marks (time.time() at each)."""
    p, n = pair.peer, pair.steps
    marks = p.record()["marks"]

    def at(name: str) -> float | None:
        return marks[name] - p.start if name in marks else None

    return segments(
        [
            ("start-up: interpreter, imports (torch, transformers)", at("imported")),
            ("data: read, tokenize (datasets.map)", at("tokenized")),
            ("model load" + (" + peft" if pair.cfg.lora else ""), at("model")),
            ("Trainer set-up", at("train_begin")),
            ("first step", at("first_step")),
            (f"steps 2..{n}", at("trained")),
            ("evaluation (validation + train probe)", at(f"evaluated_{n}")),
            ("checkpoint", at(f"saved_{n}")),
            ("load the best checkpoint, end of train()", at("train_end")),
            ("test: evaluate", at("tested")),
            ("exit", p.wall),
        ]
    )


def phase_breakdown(pair: Pair) -> list[tuple[str, float]]:
    """The instrumented rerun's timers (e2e_phases.py), inclusive times made exclusive."""
    ph = pair.phases
    t, calls = ph["totals"], ph["calls"]
    g = lambda k: t.get(k, 0.0)  # noqa: E731
    first = calls["steps"][0]
    evals = " + ".join(f"{s:.1f}" for s in calls.get("eval_during", []))
    saves = " + ".join(f"{s:.1f}" for s in calls.get("checkpoint", []))
    test_rest = g("test_total") - g("restore") - g("tokenize_test") - g("eval_test")
    loop_rest = g("train_loop") - g("steps") - g("eval_during") - g("record") - g("checkpoint")
    in_run = ph["run_end"] - ph["imported"]
    other = in_run - g("setup") - g("run_dir") - g("train_loop") - g("test_total")
    return [
        ("interpreter + imports (mlx_models, MLX, the trainer's modules)", ph["imported"] - ph["start"]),
        ("data: read the embedded CSV, hold out, subsample", g("data")),
        ("model: resolve, load weights + tokenizer", g("build")),
        ("tokenize train + validation (+ probe)", g("tokenize")),
        ("rest of set-up (optimizer, digests)", g("setup") - g("data") - g("build") - g("tokenize")),
        ("run directory", g("run_dir")),
        ("first optimizer step (compilation)", first),
        (f"optimizer steps 2..{len(calls['steps'])}", g("steps") - first),
        (f"evaluation: validation + train probe ({evals} s)", g("eval_during")),
        ("metrics.jsonl + curves.png after the evaluation", g("record")),
        (f"checkpoints best/ + last/ ({saves} s)", g("checkpoint")),
        ("training loop, rest (progress bar, stop checks)", loop_rest),
        ("test: restore best/", g("restore")),
        ("test: tokenize", g("tokenize_test")),
        ("test: evaluate", g("eval_test")),
        ("test: metrics + curves", test_rest),
        ("rest of the run (config, compile set-up)", other),
        ("exit (interpreter teardown)", ph["start"] + pair.phases_wall - ph["run_end"]),
    ]


def timeline_table(rows: list[tuple[str, float]], wall: float) -> str:
    lines = ["| phase | s | share |", "|---|---:|---:|"]
    lines += [f"| {label} | {s:.1f} | {100 * s / wall:.0f}% |" for label, s in rows]
    return "\n".join([*lines, f"| **whole process** | **{wall:.1f}** | 100% |"])


# ---- the report ----------------------------------------------------------------------------------


def shown(command: list[str]) -> str:
    parts = [Path(c).relative_to(ROOT).as_posix() if c.startswith(str(ROOT)) else c for c in command]
    return " ".join(["python", *parts[1:]])


def summary(pairs: list[Pair]) -> str:
    lines = [
        "| recipe | row | wall (s) | CPU (s) | peak RSS (GB) | test accuracy | test loss | speed vs Trainer"
        " | other processes (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pair in pairs:
        size = f"{pair.sizes['train']} / {pair.sizes['validation']} / {pair.sizes['test']} reviews"
        ours, peer = pair.ours.record(), pair.peer.record()
        ratio = pair.peer.wall / pair.ours.wall
        both = (("`train.py`", pair.ours, ours, ratio), ("transformers Trainer", pair.peer, peer, 1.0))
        for name, p, rec, speed in both:
            lines.append(
                f"| {TITLES[pair.key]}: {size} × {pair.cfg.max_length} tokens | {name} | {p.wall:.1f} | "
                f"{p.cpu:.1f} | {p.rss_gb:.2f} | {rec['accuracy']:.4f} | {rec['loss']:.4f} | {speed:.2f}× | "
                f"{p.others / p.wall:.2f} |"
            )
    return "\n".join(lines)


def verdict(pair: Pair) -> str:
    ratio = pair.peer.wall / pair.ours.wall
    delta = pair.ours.record()["accuracy"] - pair.peer.record()["accuracy"]
    speed_ok, acc_ok = ratio >= TARGET_SPEED, abs(delta) <= TARGET_ACCURACY
    return (
        f"- {TITLES[pair.key]}: `train.py` is **{ratio:.2f}×** the Trainer's speed "
        f"(target ≥ {TARGET_SPEED}×: {'met' if speed_ok else 'not met'}); test accuracy {delta:+.4f} "
        f"against it (target within {TARGET_ACCURACY}: {'met' if acc_ok else 'not met'}); "
        f"CPU time {pair.ours.cpu:.0f} s vs {pair.peer.cpu:.0f} s; load average "
        f"{pair.ours.load[0]} → {pair.ours.load[1]} (ours), "
        f"{pair.peer.load[0]} → {pair.peer.load[1]} (Trainer); other processes used "
        f"{pair.ours.others / pair.ours.wall:.2f} / {pair.peer.others / pair.peer.wall:.2f} cores meanwhile."
    )


def recipe_text(pair: Pair) -> str:
    s, lora = pair.spec, ""
    if r := s["lora"]:
        lora = f"; LoRA r={r['r']}, alpha={r['alpha']:g}, dropout={r['dropout']:g} on "
        lora += ", ".join(r["targets"]) + " (the head trains in full on both sides)"
    return (
        f"**{TITLES[pair.key]}.** Ours: `{shown([sys.executable, 'train.py', *pair.argv])}`. Trainer: "
        f"`python benchmarks/e2e_trainer.py SPEC.json` on `{Path(s['model']).name}`. "
        f"Recipe (train.py's resolved config, given to both): batch {s['batch_size']}, evaluation batch "
        f"{s['eval_batch_size']}, {s['epochs']} epoch = {s['steps']} steps, AdamW lr {s['learning_rate']:g}, "
        f"weight decay {s['weight_decay']:g} (none on biases and norms), {s['warmup_steps']} warm-up steps "
        f"then linear decay to 0, gradient clipping {s['max_grad_norm']:g}, seed {s['seed']}, "
        f"{s['max_length']} tokens, dynamic padding, dropout the model's own{lora}. Evaluation once, "
        f"at the end of the epoch, on validation ({pair.sizes['validation']}) and the train probe "
        f"({pair.sizes['probe']}), the checkpoint kept by validation loss (`load_best_model_at_end`), "
        f"then the test split ({pair.sizes['test']}) with it. Model: {pair.cfg.model}."
    )


def report(pairs: list[Pair], head: str, command: str, wall: float, policy: Policy) -> str:
    parts = [f"# End to end: `train.py` vs transformers' Trainer\n\nCommand: `{command}`\n\n{head}\n"]
    parts += [recipe_text(p) + "\n" for p in pairs]
    parts += ["## Results\n", summary(pairs), "", *[verdict(p) for p in pairs], ""]
    if policy.set_aside:
        runs = "; ".join(
            f"{name} {wall:.1f} s with {share:.2f} cores of others" for name, wall, share in policy.set_aside
        )
        parts += [f"Attempts set aside (other processes used > {policy.disturbed} core meanwhile): {runs}.\n"]
    for p in pairs:
        parts += [f"## Where the time goes: {TITLES[p.key]}\n"]
        parts += ["`train.py`, from its output (when each line arrived) and its checkpoints' file times:\n"]
        parts += [timeline_table(our_timeline(p), p.ours.wall), ""]
        if p.phases:
            parts += [
                f"`train.py` again, with timers on the library's functions (`e2e_phases.py`; "
                f"{p.phases_wall:.1f} s in all):\n",
                timeline_table(phase_breakdown(p), p.phases_wall),
                "",
            ]
        parts += ["The Trainer, from its marks:\n", timeline_table(peer_timeline(p), p.peer.wall), ""]
    parts.append(f"Wall time of the whole benchmark: {wall:.0f} s; load average at end: {load()}.\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 reviews x 32 tokens (LoRA 16 x 32): a smoke run")
    p.add_argument("--rows", default="minilm,lora", help="which recipes: minilm, lora (default both)")
    p.add_argument(
        "--wait-idle",
        type=float,
        help="before each row, wait up to this many s for other processes to leave the CPU (default 900; 0 "
        "with --quick)",
    )
    p.add_argument(
        "--retries",
        type=int,
        help="rerun a row during which other processes used > 0.15 core, at most this often (default 2; "
        "0 with --quick)",
    )
    p.add_argument("--no-phases", action="store_true", help="skip the instrumented rerun of train.py")
    p.add_argument("--out", help="markdown file to write (default end_to_end.md here; none with --quick)")
    args = p.parse_args(argv)
    out = args.out or (None if args.quick else str(HERE / "end_to_end.md"))
    commands = QUICK if args.quick else COMMANDS
    policy = Policy(
        idle=args.wait_idle if args.wait_idle is not None else 0.0 if args.quick else 900.0,
        retries=args.retries if args.retries is not None else 0 if args.quick else 2,
    )
    sys.path.insert(0, str(HERE))
    from run import machine  # imports mlx_models first, then MLX, torch, transformers

    command = "python benchmarks/end_to_end.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head, tic = machine(), time.perf_counter()
    print(head, file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        pairs = [prepare(key, commands[key], Path(tmp)) for key in args.rows.split(",")]
        for pair in pairs:
            run_ours(pair, policy)
            run_peer(pair, Path(tmp), policy)
            if pair.key == "minilm" and not args.no_phases:
                run_phases(pair, Path(tmp), policy)
    text = report(pairs, head, command.strip(), time.perf_counter() - tic, policy)
    print(text)
    if out:
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
