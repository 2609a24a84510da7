"""Where a train step's time goes, per op family: MLX (ours) next to PyTorch, same shapes.

    python benchmarks/step_profile.py [--quick] [--out benchmarks/profile.md]

MLX has no per-op profiler on the CPU, so its breakdown is measured by ablation: the compiled
step is timed whole, then again with one op family replaced by a pass-through of the same shape
(attention -> the queries, norms -> their input, RoPE -> its input, the activation -> its input,
the optimizer update -> none); a family's share is what removing it saves. GEMMs are timed on
their own: every matrix product of the step's forward and backward, at the step's shapes, through
the same BLAS. What is left is "other": embeddings, the loss, copies, the graph and its sync.
PyTorch's breakdown comes from `torch.profiler` (self CPU time per aten op, grouped the same way),
in a child process (see benchmarks/README.md for why).
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]
from profile_common import ABLATED, FAMILIES, interleaved, matmul_shapes, sizes  # noqa: E402

import mlx_models  # noqa: E402, F401  (OpenBLAS before MLX)


@contextlib.contextmanager
def ablate(family: str):
    """Replace one op family by a pass-through of the same shape while inside."""
    import mlx.nn as nn

    from mlx_models import kernels
    from mlx_models.models import bert, cpu_ops, norms

    saved = []

    def patch(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    if family == "attention":
        patch(cpu_ops, "attention", lambda q, k, v, scale, mask=None, dropout=0.0, causal=False: q)
    elif family == "norms":
        for cls in (nn.RMSNorm, nn.LayerNorm, norms.RMSNorm, norms.LayerNorm):  # ours override __call__
            patch(cls, "__call__", lambda self, x: x)
    elif family == "rope":
        patch(nn.RoPE, "__call__", lambda self, x, offset=0: x)
    elif family == "builtins":  # the step as before cpu_ops: MLX's own ops and optimizer throughout
        patch(cpu_ops, "on_cpu", lambda: False)
        patch(kernels, "native", None)
    elif family == "activations":
        for owner, names in ((nn, ("silu", "gelu", "gelu_approx")), (cpu_ops, ("silu", "gelu"))):
            for name in names:
                patch(owner, name, lambda x: x)
        patch(bert, "activation", lambda name: lambda x: x)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def kernel_time(run, repeats: int) -> dict:
    """``run`` timed back to back: seconds per step, system CPU seconds per wall second (all
    threads; can pass 100%) and minor page faults per step, from ``getrusage``."""
    import resource

    before, tic = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(repeats):
        run()
    wall, after = time.perf_counter() - tic, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "step_s": wall / repeats,
        "sys_share": (after.ru_stime - before.ru_stime) / wall,
        "faults": (after.ru_minflt - before.ru_minflt) / repeats,
    }


def glibc_child(kind: str, quick: bool, repeats: int) -> dict:
    """``kernel_time`` of our whole step in a child process that keeps glibc's own malloc settings
    (``MLX_MODELS_NO_MALLOPT=1``: no mallopt call, so glibc's dynamic mmap threshold works)."""
    cmd = [sys.executable, __file__, "--child", kind, "--repeats", str(repeats)] + ["--quick"] * quick
    env = {**os.environ, "MLX_MODELS_NO_MALLOPT": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(kind: str, quick: bool, repeats: int) -> dict:
    step, batch = build(kind, quick)
    for _ in range(2):
        step([batch])
    timing = kernel_time(lambda: step([batch]), repeats)
    return {**timing, "keeps_freed_memory": mlx_models.KEEPS_FREED_MEMORY}


def gemm_seconds(shapes: list[tuple[int, int, int]], repeats: int) -> float:
    """Time of a step's matrix products, one after another, through MLX's BLAS."""
    import mlx.core as mx

    mats = [(mx.random.normal((m, k)), mx.random.normal((k, n))) for m, k, n in shapes]
    mx.eval(mats)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        mx.eval([a @ b for a, b in mats])
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


class NoUpdate:
    """Stands for the optimizer in the step without its update (the weights stay as they are)."""

    @staticmethod
    def make():
        import mlx.optimizers as optim

        class _NoUpdate(optim.Optimizer):
            def init_single(self, parameter, state):
                pass

            def apply_single(self, gradient, parameter, state):
                return parameter

        return _NoUpdate()


def build(kind: str, quick: bool, update: bool = True):
    """(step, batch): the trainer's compiled step on a fresh model of ``kind``."""
    import mlx.core as mx
    from common import BENCH_CONFIG
    from llama_lora import ours

    from mlx_models.models import build_model
    from mlx_models.train.step import TrainStep, make_optimizer
    from mlx_models.train.tasks import classify_loss, lm_loss

    model_cfg, batch, seq = sizes(kind, quick)
    mx.random.seed(0)
    if kind == "lora":
        model, loss = ours(model_cfg, None), lm_loss
    else:
        model, loss = build_model(model_cfg, "classify"), classify_loss
    optimizer = make_optimizer(BENCH_CONFIG, 100) if update else NoUpdate.make()
    optimizer.init(model.trainable_parameters())
    ids = mx.random.randint(1000, model_cfg["vocab_size"], (batch, seq))
    labels = ids if kind == "lora" else mx.random.randint(0, 2, (batch,))
    step = TrainStep(model, optimizer, loss, max_grad_norm=1.0)
    return step, {"input_ids": ids, "attention_mask": mx.ones(ids.shape, mx.int32), "labels": labels}


def mlx_profile(kind: str, quick: bool, repeats: int) -> dict:
    """Seconds per family for ours, by ablation: each variant is built and traced (compiled) with
    its family patched out, then all are timed round-robin."""
    variants = {"full": build(kind, quick), "optimizer": build(kind, quick, update=False)}
    for family in [f for f, _ in ABLATED] + ["builtins"]:
        with ablate(family):
            variants[family] = build(kind, quick)
            variants[family][0]([variants[family][1]])  # traced now, with the patch in place
    steps = {name: (lambda s=s, b=b: s([b])) for name, (s, b) in variants.items()}
    for run in steps.values():
        run()
    t = interleaved(steps, repeats)
    builtins_s = t.pop("builtins")
    kernel = kernel_time(steps["full"], repeats)
    glibc = glibc_child(kind, quick, repeats)
    if glibc["keeps_freed_memory"] or not mlx_models.KEEPS_FREED_MEMORY:
        glibc = None  # not glibc, or MLX_MODELS_NO_MALLOPT set here too: nothing to compare
    shares = {label: max(t["full"] - t[family], 0.0) for family, label in ABLATED}
    shares["optimizer"] = max(t["full"] - t["optimizer"], 0.0)
    shares["GEMM"] = gemm_seconds(matmul_shapes(kind, quick), repeats)
    shares["other"] = max(t["full"] - sum(shares.values()), 0.0)
    return {
        "step_s": t["full"],
        "families": shares,
        "builtins_s": builtins_s,
        "kernel": kernel,
        "glibc": glibc,
    }


def torch_profile(kind: str, quick: bool) -> dict:
    script = Path(__file__).with_name("profile_torch.py")
    cmd = [sys.executable, str(script), kind, json.dumps({"quick": quick})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(name: str, ours: dict, theirs: dict) -> str:
    speed = theirs["step_s"] / ours["step_s"]
    lines = [
        f"### {name}",
        "",
        f"Step: ours {ours['step_s']:.2f} s, PyTorch {theirs['step_s']:.2f} s "
        f"(ours ÷ PyTorch speed {speed:.2f}×). The same step with MLX's built-in exp, softmax, "
        f"activations, norms and AdamW instead of `cpu_ops` and our kernels: {ours['builtins_s']:.2f} s "
        f"({theirs['step_s'] / ours['builtins_s']:.2f}× PyTorch). {malloc_line(ours)}",
        "",
        "| op family | ours s | ours share | PyTorch s | PyTorch share | ours ÷ PyTorch time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for f in FAMILIES:
        a, b = ours["families"].get(f, 0.0), theirs["families"].get(f, 0.0)
        ratio = f"{a / b:.1f}×" if b > 1e-4 else "–"
        share_a, share_b = a / ours["step_s"], b / theirs["step_s"]
        lines.append(f"| {f} | {a:.3f} | {share_a:.0%} | {b:.3f} | {share_b:.0%} | {ratio} |")
    return "\n".join(lines)


def malloc_line(ours: dict) -> str:
    k, g = ours["kernel"], ours["glibc"]
    if g is None:
        return "(No malloc comparison: not glibc, or `MLX_MODELS_NO_MALLOPT` is set.)"
    return (
        f"Timed back to back, ours {k['step_s']:.2f} s a step, {k['faults']:,.0f} minor page faults, "
        f"{k['sys_share']:.0%} system CPU per wall second; in a child process with glibc's own malloc "
        f"settings (`MLX_MODELS_NO_MALLOPT=1`, before `mlx_models/_malloc.py`): {g['step_s']:.2f} s, "
        f"{g['faults']:,.0f} faults, {g['sys_share']:.0%}."
    )


STEPS = {
    "lora": "LoRA step, small Llama (8 layers × 512, 4 × 256 tokens)",
    "encoder": "Full finetuning step, MiniLM shape (6 layers × 384, 8 × 128 tokens)",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--child", choices=list(STEPS), help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    if args.child:
        print(json.dumps(child(args.child, args.quick, repeats)))
        return 0
    command = f"python benchmarks/step_profile.py{' --quick' if args.quick else ''}"
    parts = ["# Where a training step's time goes", f"Command: `{command}`"]
    for kind, name in STEPS.items():
        parts.append(table(name, mlx_profile(kind, args.quick, repeats), torch_profile(kind, args.quick)))
        print(parts[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
