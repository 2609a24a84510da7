"""Data parallelism on this machine: train-step speed and all-reduce time at 1 and 2 ranks, a
stress run of gradient all-reduces, and a projection to N Macs.

    python benchmarks/distributed.py [--quick] [--out benchmarks/distributed.md]

Each measurement is a child run of this file under ``mlx.launch --backend ring`` (the worker:
``--worker KIND``), one BLAS thread per rank, so that 2 ranks use the 2 cores as 1 rank uses one.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mlx_models  # noqa: E402, F401  (OpenBLAS before MLX)

LAUNCH = Path(sys.executable).parent / "mlx.launch"
GBPS = {"10 GbE": 1.25e9, "Thunderbolt 5 (~60 Gb/s effective)": 7.5e9}


def setup(kind: str, ranks: int):
    """(model, loss, batch) of one rank: its share of the global batch."""
    import mlx.core as mx
    from llama_lora import ours
    from shapes import LLAMA, MINILM

    from mlx_models.models import build_model
    from mlx_models.train.tasks import classify_loss, lm_loss

    mx.random.seed(0)
    if kind == "lora":
        cfg = {"model_type": "llama", "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **LLAMA}
        model, loss, rows, seq = ours(cfg, None), lm_loss, 4 // ranks, 256
    else:
        model, loss, rows, seq = (
            build_model({"model_type": "bert", **MINILM}, "classify"),
            classify_loss,
            8 // ranks,
            128,
        )
    ids = mx.random.randint(0, 8192, (rows, seq))
    labels = ids if kind == "lora" else mx.zeros((rows,), mx.int32)
    return model, loss, {"input_ids": ids, "attention_mask": mx.ones(ids.shape, mx.int32), "labels": labels}


def worker(kind: str, steps: int, stress: int) -> dict:
    """One rank: time train steps (accumulate, then apply: the all-reduce and the update), or a
    series of bare gradient all-reduces."""
    import mlx.core as mx
    import mlx.nn as nn
    from common import BENCH_CONFIG
    from mlx.utils import tree_flatten

    from mlx_models.train.distributed import world
    from mlx_models.train.step import TrainStep, make_optimizer

    w = world()
    model, loss, batch = setup(kind, w.size)
    grad_bytes = sum(v.nbytes for _, v in tree_flatten(model.trainable_parameters()))
    if stress:
        grads, tic = model.trainable_parameters(), time.perf_counter()
        for _ in range(stress):
            with w.waiting("the stress all-reduce"):
                mx.eval(nn.average_gradients(grads, group=w.group))
        return {"all_reduces": stress, "seconds": time.perf_counter() - tic, "grad_bytes": grad_bytes}
    optimizer = make_optimizer(BENCH_CONFIG, steps + 2)
    optimizer.init(model.trainable_parameters())
    step, times = TrainStep(model, optimizer, loss, max_grad_norm=1.0, world=w), []
    for _ in range(steps + 1):  # the first step compiles: not timed
        t0 = time.perf_counter()
        pending = step.accumulate([batch])
        t1 = time.perf_counter()
        step.apply(pending)
        times.append((t1 - t0, time.perf_counter() - t1))
    compute, apply = (sorted(t[i] for t in times[1:])[len(times[1:]) // 2] for i in (0, 1))
    tokens = batch["input_ids"].size * w.size
    return {"compute_s": compute, "apply_s": apply, "tokens": tokens, "grad_bytes": grad_bytes}


def launch(kind: str, ranks: int, steps: int, stress: int = 0) -> dict:
    env = os.environ | {
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parent),
    }
    cmd = [sys.executable, __file__]  # one rank: a plain process (mlx.launch -n 1 has no ring)
    if ranks > 1:
        cmd = [str(LAUNCH), "-n", str(ranks), "--backend", "ring", *cmd]
    cmd += ["--worker", kind, "--steps", str(steps), "--stress", str(stress)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{kind} at {ranks} ranks failed: {(proc.stdout + proc.stderr)[-1500:]}")
    return json.loads(lines[0][len("RESULT ") :])


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def projection() -> str:
    """Bytes each rank sends per step in a ring all-reduce, 2 (N - 1) / N x the gradient bytes."""
    sizes = {
        "roberta-base full finetuning (125 M fp32 gradients)": 124.6e6 * 4,
        "Llama-2-7b QLoRA adapters (r=8 on q/k/v/o of 32 layers, fp32)": 32 * 4 * 2 * 8 * 4096 * 4,
    }
    rows = []
    for name, size in sizes.items():
        for n in (2, 4, 8):
            sent = 2 * (n - 1) / n * size
            rows.append(
                [name, n, f"{sent / 1e6:.0f}", *(f"{sent / bw * 1e3:.0f} ms" for bw in GBPS.values())]
            )
    return md_table(["gradients per step", "N", "MB sent per rank", *GBPS], rows)


KINDS = {"lora": "LoRA r=8, small Llama, 4 × 256", "full": "full finetuning, MiniLM shape, 8 × 128"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--stress", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 steps and 200 all-reduces")
    p.add_argument("--out", default=None, help="markdown file to write")
    args = p.parse_args()
    if args.worker:
        from mlx_models.train.distributed import world

        result = worker(args.worker, args.steps, args.stress)
        if world().main:
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    steps, stress = (3, 200) if args.quick else (args.steps, 2000)
    speed, hammer = [], []
    for kind, name in KINDS.items():
        for ranks in (1, 2):
            r = launch(kind, ranks, steps)
            total = r["compute_s"] + r["apply_s"]
            speed.append(
                [name, ranks, f"{r['tokens'] / total:.0f}", f"{r['compute_s']:.2f}", f"{r['apply_s']:.3f}"]
            )
            print(speed[-1], flush=True)
        r = launch(kind, 2, 0, stress)  # a hang would end the run through the watchdog
        hammer.append(
            [name, f"{r['grad_bytes'] / 1e6:.1f}", r["all_reduces"], f"{r['seconds'] / stress * 1e3:.2f}"]
        )
        print(hammer[-1], flush=True)
    parts = [
        "# Data-parallel training on this machine",
        f"Command: `python benchmarks/distributed.py{' --quick' if args.quick else ''}`",
        md_table(
            ["step", "ranks", "tokens/s (global)", "compute s/step", "all-reduce + update s/step"], speed
        ),
        md_table(["gradients of", "MB", "all-reduces without a hang", "ms each"], hammer),
        projection(),
    ]
    text = "\n\n".join(parts)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
