"""Why PyTorch's step is slower in a process that imported mlx_models: each cause on its own.

    python benchmarks/torch_inprocess.py [--kind llama|bert] [--repeats 2]

Times PyTorch's train step (torch_peers.py's, the shapes of run.py's sections 1 and 2) in fresh
child processes, one condition each, round-robin: clean; clean with ``OMP_WAIT_POLICY=PASSIVE``
(libgomp's threads sleep between parallel regions instead of spinning); after ``import
mlx_models`` (OpenBLAS loaded globally, which then serves libtorch's BLAS calls instead of its
MKL); the same with ``MLX_MODELS_NO_OPENBLAS=1``; and after MLX's CPU stream has run OpenMP work
(MLX GEMMs, i.e. OpenBLAS, or our kernels): libgomp then manages a second team of threads, and
with more of its threads than cores it cuts spin-waiting short. Prints a markdown table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import shapes

CONDITIONS = {  # name: (environment, what the child does before PyTorch's step)
    "clean": ({}, "nothing"),
    "clean, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, "nothing"),
    "after `import mlx_models` (OpenBLAS loaded)": ({}, "import"),
    "after `import mlx_models`, MLX_MODELS_NO_OPENBLAS=1": ({"MLX_MODELS_NO_OPENBLAS": "1"}, "import"),
    "after 20 MLX GEMMs on the CPU stream (OpenBLAS's OpenMP team)": ({}, "gemm"),
    "after 20 calls of our GELU kernel (its OpenMP team)": ({}, "kernel"),
}


def config(kind: str) -> dict:
    if kind == "llama":
        model = {"model_type": "llama", "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **shapes.LLAMA}
        extra = {
            "rank": shapes.LORA_RANK,
            "alpha": shapes.LORA_ALPHA,
            "targets": shapes.LORA_TARGETS,
            "seq": 256,
        }
        return {"model": model, "batch": 4, **extra, "warmup": 2, "steps": 6}
    return {"model": {"model_type": "bert", **shapes.MINILM}, "batch": 8, "seq": 128, "warmup": 2, "steps": 6}


def child(kind: str, before: str) -> float:
    """Median step seconds of PyTorch's step after ``before`` (run in a fresh process)."""
    if before != "nothing":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import mlx_models  # noqa: F401  (OpenBLAS before MLX)

    if before in ("gemm", "kernel"):
        import mlx.core as mx

        from mlx_models.kernels import native

        a = mx.random.normal((1024, 1024))
        for _ in range(20):
            mx.eval(a @ a if before == "gemm" or native is None else native.gelu(a))
    import torch_peers

    return statistics.median(torch_peers.main(kind, config(kind))["times"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["llama", "bert"], default="llama")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.kind, args.child)))
        return 0
    times = {name: [] for name in CONDITIONS}
    for _ in range(args.repeats):
        for name, (env, before) in CONDITIONS.items():
            cmd = [sys.executable, __file__, "--kind", args.kind, "--child", before]
            out = subprocess.run(cmd, env=os.environ | env, capture_output=True, text=True, check=True)
            times[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    clean = statistics.median(times["clean"])
    print(f"PyTorch {args.kind} train step, median of {args.repeats} child processes × 6 steps\n")
    print("| condition | s/step | ÷ clean (speed) |\n|---|---:|---:|")
    for name, t in times.items():
        s = statistics.median(t)
        print(f"| {name} | {s:.3f} | {clean / s:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
