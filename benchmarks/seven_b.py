"""Section 3: peak memory of one QLoRA step on a Llama-2-7B-shaped model with random 4-bit weights.

The fp32 weights are never materialised: the lazy random model is quantized (still lazy), then
every quantized layer gets fresh random packed uint32 weights and fp16 scales/biases of the right
shapes, and the model is evaluated layer by layer.
"""

import mlx_models  # noqa: F401, I001  (OpenBLAS before MLX)

import gc
import os
import sys
import traceback

import mlx.core as mx
import mlx.nn as nn
from common import mlx_row

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


def step(layers: int, batch: int, seq: int, compiled: bool) -> dict:
    """Build, LoRA as the study configures it + grad checkpointing, one AdamW step; memory in GB."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    cfg = {"model_type": "llama", **SEVEN_B, "num_hidden_layers": layers, "rms_norm_eps": 1e-5}
    cfg |= {"max_position_embeddings": 4096, "num_labels": 2}
    base = mx.get_active_memory()
    model = build_model(cfg, "classify")
    random_quantized(model)
    apply_lora(model, STUDY.lora_targets, STUDY.lora_rank, STUDY.lora_alpha, STUDY.lora_dropout)
    for layer in model.layers:
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    weights = (mx.get_active_memory() - base) / 1e9
    ids = mx.random.randint(0, SEVEN_B["vocab_size"], (batch, seq))
    labels = mx.arange(batch) % 2
    block = type(model.layers[0])
    call = block.__call__
    grad_checkpoint(model.layers[0])  # patches the class: restored below
    try:
        args = {"input_ids": ids, "attention_mask": mx.ones((batch, seq), mx.int32), "labels": labels}
        row = mlx_row(model, classify_loss, args, batch * seq, warmup=1, steps=0, compiled=compiled)
    finally:
        block.__call__ = call
    return {"layers": layers, "weights": weights, "peak": weights + row.peak_gb, "time": row.warmup_s[0]}


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
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 1e9


def point(n: int, batch: int, seq: int, compiled: bool) -> dict:
    print(f"  running: 7B-shaped QLoRA step, {VARIANTS[compiled]}, {n} layers", file=sys.stderr, flush=True)
    try:
        return step(n, batch, seq, compiled)
    finally:
        gc.collect()
        mx.clear_cache()


def measure(layer_counts: list[int], batch: int, seq: int, compiled: bool, full_step: bool):
    """(table rows, 32-layer figures or an error message, how they were obtained) for one variant."""
    full, name = SEVEN_B["num_hidden_layers"], VARIANTS[compiled]
    row = lambda p, how: (
        f"| {name} | {p['layers']} | {how} | {p['weights']:.2f} | {p['peak']:.2f} | {p['time']:.0f} |"
    )
    try:
        points = [point(n, batch, seq, compiled) for n in layer_counts]
    except Exception as e:  # noqa: BLE001  (reported in the section instead of ending the run)
        traceback.print_exc()
        return [], f"{type(e).__name__}: {e}", ""
    rows = [row(p, "measured") for p in points]
    est = {k: fit(points, k, full) for k in ("weights", "peak", "time")} | {"layers": full}
    rows.append(row(est, "**extrapolated** (linear per layer)"))
    if not full_step or not compiled:  # the direct 32-layer run is for the trainer's (compiled) step
        return rows, est, "extrapolated"
    if est["peak"] > 0.85 * (have := available_gb()):
        rows.append(
            f"| {name} | {full} | not run: needs ~{est['peak']:.0f} GB, {have:.0f} GB available | | | |"
        )
        return rows, est, "extrapolated"
    try:
        measured = point(full, batch, seq, compiled)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rows.append(f"| {name} | {full} | failed: {type(e).__name__}: {e} | | | |")
        return rows, est, "extrapolated"
    rows.append(row(measured, "**measured**"))
    return rows, measured, "measured"


def run(
    layer_counts: list[int],
    full_step: bool = False,
    batch: int = STUDY.batch_size,
    seq: int = STUDY.max_length,
) -> str:
    """Both variants at ``layer_counts`` layers, extrapolated to 32; with ``full_step`` the
    32-layer step is also measured where its extrapolated peak fits in this machine's memory."""
    full = SEVEN_B["num_hidden_layers"]
    lines = [
        "| step | layers | | model resident GB | peak GB | step time s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    verdicts, minutes = [], []
    for compiled in (True, False):
        rows, est, how = measure(layer_counts, batch, seq, compiled, full_step)
        lines += rows
        if isinstance(est, str):
            verdicts.append(f"- {VARIANTS[compiled]}: failed: {est}")
            continue
        minutes.append(est["time"] / 60)
        fits = "yes" if est["peak"] <= MAC_16GB_WORKING_SET_GB else "no"
        verdicts.append(
            f"- {VARIANTS[compiled]}: 32-layer peak {est['peak']:.2f} GB ({how}) → within a 16 GB Mac's "
            f"default Metal working set: **{fits}**"
        )
    span = f"~{min(minutes):.0f}–{max(minutes):.0f} min" if minutes else "minutes"
    how = (
        f"extrapolated linearly per layer from {', '.join(map(str, layer_counts))} layers and, for the "
        "compiled step where it fits in this machine's memory, measured directly"
        if full_step
        else f"**extrapolated linearly per layer** from {', '.join(map(str, layer_counts))} layers: a "
        f"{full}-layer step takes {span} on this CPU (estimate), too long for the default run; "
        "`python benchmarks/run.py --seven-b` also measures it directly"
    )
    desc = (
        "Llama-2-7B shape (4096 hidden, 32 heads, intermediate 11008, vocab 32000) as "
        "LlamaForSequenceClassification, RANDOM 4-bit weights (group 64, fp16 scales/biases, "
        "embeddings quantized; the fp32 weights are never materialised), the study's `llama-2-7b` "
        f"settings from config.yaml: LoRA r={STUDY.lora_rank} alpha {STUDY.lora_alpha:g} dropout "
        f"{STUDY.lora_dropout:g} on {', '.join(STUDY.lora_targets)} + the 2-label score head, "
        "gradient checkpointing on every block "
        "(mlx-lm's `grad_checkpoint`), one AdamW step at batch "
        f"{batch} × {seq} tokens (the first step: the compiled one includes compilation). Peak = "
        "`mx.get_peak_memory()` from before the optimizer is created (weights + optimizer + step). "
        f"32-layer figures are {how}."
    )
    notes = (
        f"Assumption: a 16 GB Mac gives Metal ~{MAC_16GB_WORKING_SET_GB} GB by default "
        "(`recommendedMaxWorkingSetSize`; `sudo sysctl iogpu.wired_limit_mb=...` raises it). These "
        "peaks are for this CPU path, and are upper bounds for a Mac: here the step computes in fp32 "
        "(MLX's CPU fp16 matmul runs at ~1.4 GFLOP/s) and every weight is dequantized to a transient "
        "fp32 copy, while on Metal activations would be fp16 and the fused quantized matmul makes no "
        "copy (not measurable here; the 4-bit weights alone are the 'model resident' column). The "
        "CPU path's quantized linear is a custom function whose backward re-dequantizes its weight, "
        "ordered by `mx.depends`, so under `mx.compile` only about one layer's dequantized fp32 "
        "weights (~0.8 GB at 7B) are alive at a time; the uncompiled step is shown for comparison "
        "(without the compiler's scheduling, more transient copies overlap)."
    )
    return (
        f"## 3. 7B QLoRA memory\n\n{desc}\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(verdicts)
        + f"\n\n{notes}\n"
    )
