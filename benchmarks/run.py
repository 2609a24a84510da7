"""Training-step benchmarks of mlx_models against mlx-lm and transformers/peft on the same machine.

    python benchmarks/run.py [--quick] [--seven-b] [--out benchmarks/results.md]

Prints markdown tables and writes them to --out (default benchmarks/results.md; --quick writes
nothing unless --out is given). See benchmarks/README.md.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mlx_models  # noqa: E402  (loads OpenBLAS; must come before every `import mlx.core`)


def machine() -> str:
    import mlx.core as mx
    import mlx_lm
    import peft
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 if hasattr(os, "sysconf") else 0
    return "\n".join(
        [
            f"- CPU: {cpu}, {os.cpu_count()} logical cores, {ram:.0f} GB RAM, {platform.system()}",
            f"- MLX {mx.__version__} ({mx.default_device()}), BLAS: {mlx_models.BLAS}",
            f"- mlx-lm {mlx_lm.__version__}",
            f"- PyTorch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, peft {peft.__version__}",
            f"- load average at start (1/5/15 min): {load()}",
        ]
    )


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def publish(text: str, body: str, out: str | None) -> None:
    """Print ``body``; write the whole report ``text`` to ``out`` (atomically) when there is one."""
    from mlx_models.io import atomic_write_text

    print(body)
    if out:
        atomic_write_text(Path(out), text)
        print(f"wrote {out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, few steps: a smoke run (< 2 min)")
    p.add_argument(
        "--seven-b",
        action="store_true",
        help="also measure the 32-layer 7B step directly and take its peak apart (~5 min more)",
    )
    p.add_argument(
        "--seven-b-layers",
        default="2,4",
        help="layer counts of the 7B steps measured as context, and lines through them (default 2,4)",
    )
    p.add_argument("--sections", default="1,2,3,4", help="which sections to run (default 1,2,3,4)")
    p.add_argument("--out", help="markdown file to write (default benchmarks/results.md, none with --quick)")
    args = p.parse_args(argv)
    out = args.out or (None if args.quick else str(Path(__file__).with_name("results.md")))
    sections = {int(s) for s in args.sections.split(",")}

    import encoder  # these import mlx.core: only after mlx_models
    import llama_lora
    import mlm
    import seven_b

    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    tic = time.perf_counter()
    parts = [f"# mlx_models training benchmarks\n\nCommand: `{command.strip()}`\n\n{machine()}\n"]
    print(parts[0], flush=True)

    def emit(text: str) -> None:
        parts.append(text)
        print(text, flush=True)
        if out:
            Path(out).write_text("\n".join(parts))

    if 1 in sections:
        emit(llama_lora.run(args.quick))
    if 2 in sections:
        emit(encoder.run(args.quick))
    if 3 in sections:
        layers = [int(n) for n in args.seven_b_layers.split(",")]
        if args.quick:
            emit(seven_b.run([1, 2], seq=64))
        else:
            emit(seven_b.run(layers, full_step=args.seven_b))
    if 4 in sections:
        emit(mlm.run(args.quick))
    emit(f"Wall time of the whole run: {time.perf_counter() - tic:.0f} s; load average at end: {load()}.\n")
    if out:
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
