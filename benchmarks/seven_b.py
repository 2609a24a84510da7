"""Section 3: peak memory of one QLoRA step on a Llama-2-7B-shaped model with random 4-bit weights.

The fp32 weights are never materialised: the lazy random model is quantized (still lazy), then
every quantized layer gets fresh random packed uint32 weights and fp16 scales/biases of the right
shapes, and the model is evaluated layer by layer. With ``full_step`` (``run.py --seven-b``) the
32-layer compiled step is measured directly and its peak taken apart; the lines fitted through
fewer layers are context.
"""

import mlx_models  # noqa: F401, I001  (OpenBLAS before MLX)

import contextlib
import gc
import os
import sys
import time
import traceback
from collections.abc import Iterator

import mlx.core as mx
import mlx.nn as nn
from common import mlx_row
from mlx.utils import tree_flatten

from mlx_models.models import build_model
from mlx_models.models.lora import apply_lora
from mlx_models.models.quant import quantize
from mlx_models.train.config import load_train_config
from mlx_models.train.tasks import classify_loss

SEVEN_B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
}
MAC_16GB_WORKING_SET_GB = 10.7  # Metal's default recommendedMaxWorkingSetSize on a 16 GB Mac
# The study's Llama-2-7b settings as train.py resolves them (config.yaml): batch 2 x 512, 4-bit,
# LoRA rank/alpha/dropout/targets, gradient checkpointing.
STUDY = load_train_config(["--model", "llama-2-7b"])
BITS, GROUP = STUDY.quantize, 64
GB = 1e9


def random_quantized(model: nn.Module) -> None:
    """Quantize the lazy model without evaluating it, then swap in random 4-bit weights."""
    quantize(model, BITS, GROUP)  # lazy graphs of fp32 weights: replaced below, never evaluated
    for _, m in model.named_modules():
        if isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding):
            rows, packed = m.weight.shape
            groups = packed * 32 // BITS // GROUP
            m.weight = mx.random.randint(0, 256, (rows, packed * 4), dtype=mx.uint8).view(mx.uint32)
            m.scales = mx.random.uniform(0.001, 0.003, (rows, groups)).astype(mx.float16)
            m.biases = -7.5 * m.scales  # zero-mean weights, std ~0.01


@contextlib.contextmanager
def op_by_op() -> Iterator[None]:
    """MLX evaluating one operation at a time. Its scheduler allocates an operation's output when it
    schedules it, up to 10 operations ahead of the one running; past the memory limit it waits for
    the running ones first (mlx/transforms.cpp), so a limit of 1 byte leaves none in flight."""
    old = mx.set_memory_limit(1)
    try:
        yield
    finally:
        mx.set_memory_limit(old)


def build(layers: int) -> nn.Module:
    """The 7B shape with ``layers`` blocks, random 4-bit weights, LoRA as the study sets it, evaluated."""
    cfg = {"model_type": "llama", **SEVEN_B, "num_hidden_layers": layers, "rms_norm_eps": 1e-5}
    model = build_model(cfg | {"max_position_embeddings": 4096, "num_labels": 2}, "classify")
    random_quantized(model)
    apply_lora(model, STUDY.lora_targets, STUDY.lora_rank, STUDY.lora_alpha, STUDY.lora_dropout)
    for layer in model.layers:
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    return model


def step(layers: int, batch: int, seq: int, compiled: bool, again: bool = False) -> dict:
    """One AdamW step with gradient checkpointing (the first: compiled, it compiles); memory in GB.
    ``again``: then a second step, and a third evaluated op by op (peaks "again", "op by op")."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    base = mx.get_active_memory()
    model = build(layers)
    weights = (mx.get_active_memory() - base) / GB
    trainable = sum(p.nbytes for _, p in tree_flatten(model.trainable_parameters())) / GB
    ids = mx.random.randint(0, SEVEN_B["vocab_size"], (batch, seq))
    args = {
        "input_ids": ids,
        "attention_mask": mx.ones((batch, seq), mx.int32),
        "labels": mx.arange(batch) % 2,
    }
    block = type(model.layers[0])
    call = block.__call__
    grad_checkpoint(model.layers[0])  # patches the class: restored below
    try:
        row = mlx_row(model, classify_loss, args, batch * seq, warmup=1, steps=0, compiled=compiled)
        point = {"layers": layers, "weights": weights, "trainable": trainable, "time": row.warmup_s[0]}
        point["peak"] = weights + row.peak_gb
        if again:
            point |= more_steps(row.step, base)
    finally:
        block.__call__ = call
    return point


def more_steps(train_step, base: int) -> dict:
    """Peaks (GB over ``base``) and times of a second step, and of a third one evaluated op by op."""
    out = {}
    for name, context in (("again", contextlib.nullcontext), ("op by op", op_by_op)):
        with context():
            mx.reset_peak_memory()
            tic = time.perf_counter()
            train_step()
            out[name], out[f"{name} time"] = (mx.get_peak_memory() - base) / GB, time.perf_counter() - tic
    return out


def fit(points: list[dict], key: str, at: int) -> float:
    """Least-squares line through (layers, key), evaluated at ``at`` layers."""
    xs, ys = [p["layers"] for p in points], [p[key] for p in points]
    mx_, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx_) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx_) ** 2 for x in xs)
    return my + slope * (at - mx_)


VARIANTS = {True: "compiled step (as the trainer)", False: "uncompiled step"}


def available_gb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) / 1e6
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / GB


def point(n: int, batch: int, seq: int, compiled: bool, again: bool = False) -> dict:
    print(f"  running: 7B-shaped QLoRA step, {VARIANTS[compiled]}, {n} layers", file=sys.stderr, flush=True)
    try:
        return step(n, batch, seq, compiled, again)
    finally:
        gc.collect()
        mx.clear_cache()


def row(name: str, p: dict, how: str) -> str:
    return f"| {name} | {p['layers']} | {how} | {p['weights']:.2f} | {p['peak']:.2f} | {p['time']:.0f} |"


def measure(layer_counts: list[int], batch: int, seq: int, compiled: bool) -> tuple[list[str], list[dict]]:
    """(table rows, the measured points) at ``layer_counts`` layers, and the line through them at 32."""
    name, full = VARIANTS[compiled], SEVEN_B["num_hidden_layers"]
    try:  # the first compiled point also takes its peak apart (breakdown)
        points = [
            point(n, batch, seq, compiled, again=compiled and i == 0) for i, n in enumerate(layer_counts)
        ]
    except Exception as e:  # noqa: BLE001  (reported in the section instead of ending the run)
        traceback.print_exc()
        return [f"| {name} | | failed: {type(e).__name__}: {e} | | | |"], []
    est = {k: fit(points, k, full) for k in ("weights", "peak", "time")} | {"layers": full}
    rows = [row(name, p, "measured") for p in points]
    return rows + [row(name, est, "extrapolated (linear per layer): context only")], points


def direct_step(batch: int, seq: int) -> tuple[dict | None, str]:
    """The 32-layer compiled step measured directly, or None and why not."""
    full, need = SEVEN_B["num_hidden_layers"], 8.0  # GB, with room: 5.6 measured
    if need > 0.85 * (have := available_gb()):
        return None, f"not run: needs ~{need:.0f} GB, {have:.0f} GB available"
    try:
        return point(full, batch, seq, compiled=True), ""
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        return None, f"failed: {type(e).__name__}: {e}"


def breakdown(full: dict, small: dict, batch: int, seq: int) -> str:
    """Where the measured 32-layer peak goes: sizes, and the parts measured at ``small``'s layers."""
    D, F, n = SEVEN_B["hidden_size"], SEVEN_B["intermediate_size"], small["layers"]
    kept = lambda layers: layers * batch * seq * D * 4 / GB  # noqa: E731  (a block's fp32 input)
    at, params = f"measured at {n} layers", full["trainable"] * GB / 4e6
    parts = [
        (
            f"4-bit weights with their fp16 scales and biases (embeddings, {full['layers']} blocks), the "
            "adapters and the score head",
            full["weights"],
            "measured: MLX's active memory once the model is evaluated",
        ),
        (
            f"gradients and AdamW m, v of what trains (adapters, score head: {params:.1f} M parameters)",
            3 * full["trainable"],
            "sizes",
        ),
        (
            f"each block's input, kept by gradient checkpointing ({full['layers']} × {batch} × {seq} × {D} "
            "fp32)",
            kept(full["layers"]),
            "sizes",
        ),
        (
            f"one block recomputed and differentiated: its activations (an MLP one is {batch} × {seq} × "
            f"{F} fp32, {batch * seq * F * 4 / 1e6:.0f} MB), at most 48 MB of a weight dequantized; no "
            "attention scores (the fused kernel keeps none)",
            small["op by op"] - small["weights"] - 3 * small["trainable"] - kept(n),
            f"{at}, MLX evaluating op by op, minus the rows above",
        ),
        (
            "outputs of the operations MLX's CPU scheduler has in flight (it allocates an output when it "
            "schedules the operation, up to 10 ahead)",
            small["again"] - small["op by op"],
            f"{at}: the step as it runs minus op by op",
        ),
        (
            "compilation (the first step only)",
            small["peak"] - small["again"],
            f"{at}: first step minus second",
        ),
    ]
    total = sum(gb for _, gb, _ in parts)
    lines = ["| part of the peak | GB | how it is known |", "|---|---:|---|"]
    lines += [f"| {part} | {gb:.2f} | {how} |" for part, gb, how in parts]
    lines.append(f"| **sum** | **{total:.2f}** | |")
    rest = f"{full['peak'] - total:+.2f} GB not accounted for above"
    lines.append(f"| **measured peak, {full['layers']} layers** | **{full['peak']:.2f}** | {rest} |")
    return "\n".join(lines)


HEADER = ["| step | layers | | model resident GB | peak GB | step time s |", "|---|---:|---|---:|---:|---:|"]


def description(batch: int, seq: int, layer_counts: list[int], full: bool) -> str:
    counts = ", ".join(map(str, layer_counts))
    how = (
        f"The {SEVEN_B['num_hidden_layers']}-layer compiled step is **measured directly** (first table); "
        if full
        else f"The {SEVEN_B['num_hidden_layers']}-layer step is not measured in this run (it takes minutes: "
        "`python benchmarks/run.py --seven-b` measures it); "
    )
    return (
        "Llama-2-7B shape (4096 hidden, 32 heads, intermediate 11008, vocab 32000) as "
        "LlamaForSequenceClassification, RANDOM 4-bit weights (group 64, fp16 scales/biases, "
        "embeddings quantized; the fp32 weights are never materialised), the study's `llama-2-7b` "
        f"settings from config.yaml: LoRA r={STUDY.lora_rank} alpha {STUDY.lora_alpha:g} dropout "
        f"{STUDY.lora_dropout:g} on {', '.join(STUDY.lora_targets)} + the 2-label score head, "
        "gradient checkpointing on every block (mlx-lm's `grad_checkpoint`), one AdamW step at batch "
        f"{batch} × {seq} tokens (the first step: the compiled one includes compilation). Peak = "
        "`mx.get_peak_memory()` from before the optimizer is created (weights + optimizer + step). "
        f"{how}the steps at {counts} layers and the lines through them are context."
    )


def verdict(name: str, p: dict, how: str) -> str:
    fits = "yes" if p["peak"] <= MAC_16GB_WORKING_SET_GB else "no"
    return (
        f"- {name}: {p['layers']}-layer peak {p['peak']:.2f} GB ({how}) → within a 16 GB Mac's default "
        f"Metal working set: **{fits}**"
    )


NOTES = (
    f"Assumption: a 16 GB Mac gives Metal ~{MAC_16GB_WORKING_SET_GB} GB by default "
    "(`recommendedMaxWorkingSetSize`; `sudo sysctl iogpu.wired_limit_mb=...` raises it). These "
    "peaks are for this CPU path, and are upper bounds for a Mac: here the step computes in fp32 "
    "(MLX's CPU fp16 matmul runs at ~1.4 GFLOP/s), while on Metal activations would be fp16 and the "
    "fused quantized matmul dequantizes nothing into memory. On the CPU the quantized linear is our "
    "kernel's `dequantized_matmul` (`mlx_models/kernels/dequantize.cpp`): it dequantizes at most 48 MB "
    "of a weight at a time, inside the product, forward and backward, so no fp32 copy of a whole "
    "weight (180 MB for an MLP one) exists. Before it, each weight was dequantized whole by an "
    "operation of its own, and MLX allocated those copies when it scheduled them, up to 10 operations "
    "ahead: ~1 GB more at the peak (the 32-layer step measured 6.55 GB)."
)


def run(
    layer_counts: list[int],
    full_step: bool = False,
    batch: int = STUDY.batch_size,
    seq: int = STUDY.max_length,
) -> str:
    """The steps at ``layer_counts`` layers (compiled and not) and the lines through them, as context;
    with ``full_step`` the 32-layer compiled step measured directly, and where its peak goes."""
    full = SEVEN_B["num_hidden_layers"]
    context, verdicts, small = list(HEADER), [], {}
    for compiled in (True, False):
        rows, points = measure(layer_counts, batch, seq, compiled)
        context += rows
        if points:
            small = points[0] if compiled else small
            est = {k: fit(points, k, full) for k in ("weights", "peak", "time")} | {"layers": full}
            verdicts.append(verdict(VARIANTS[compiled], est, "extrapolated"))
    parts = [f"## 3. 7B QLoRA memory\n\n{description(batch, seq, layer_counts, full_step)}\n"]
    if full_step:
        parts.append(direct_part(batch, seq, small, verdicts))
    parts.append("Context: steps with fewer layers, and lines through them to 32 layers:\n")
    parts.append("\n".join(context) + "\n")
    parts.append("\n".join(verdicts) + "\n\n" + NOTES + "\n")
    return "\n".join(parts) + (first_steps(small) if "again" in small else "")


def direct_part(batch: int, seq: int, small: dict, verdicts: list[str]) -> str:
    """The 32-layer compiled step's table and its breakdown; its verdict goes first in ``verdicts``."""
    measured, why = direct_step(batch, seq)
    name, layers = VARIANTS[True], SEVEN_B["num_hidden_layers"]
    if measured is None:
        return "\n".join(HEADER + [f"| {name} | {layers} | {why} | | | |"]) + "\n"
    verdicts.insert(0, verdict(name, measured, "**measured**"))
    text = "\n".join(HEADER + [row(name, measured, "**measured**")]) + "\n"
    if "op by op" in small:
        text += "\nWhere the measured peak goes:\n\n" + breakdown(measured, small, batch, seq) + "\n"
    return text


def first_steps(small: dict) -> str:
    """The step times at the breakdown's layer count: compilation's share of the first step."""
    return (
        f"\nAt {small['layers']} layers, compiled: first step {small['time']:.0f} s (it compiles), second "
        f"{small['again time']:.0f} s, a third evaluated op by op {small['op by op time']:.0f} s "
        f"(peaks {small['peak']:.2f}, {small['again']:.2f}, {small['op by op']:.2f} GB).\n"
    )
