"""Section 1: LoRA / QLoRA train step on a small Llama, ours vs mlx-lm vs transformers + peft."""

import mlx_models  # noqa: F401, I001  (OpenBLAS before MLX)

import mlx.core as mx
import mlx.nn as nn
from common import eval_row, mlx_row, prepare, ratio_table, table, time_interleaved, torch_row
from shapes import LLAMA, LLAMA_QUICK, LORA_ALPHA, LORA_RANK, LORA_TARGETS

from mlx_models.models import build_model
from mlx_models.models.lora import apply_lora
from mlx_models.models.quant import quantizable, quantize
from mlx_models.train.tasks import lm_loss

BITS, GROUP = 4, 64
EVAL_X = 4  # the trainer's evaluation batch: 4 x the training batch
SHAPE, QUICK_SHAPE, TARGETS, RANK, ALPHA = LLAMA, LLAMA_QUICK, LORA_TARGETS, LORA_RANK, LORA_ALPHA


def ours(cfg: dict, bits: int | None, train_head: bool = False):
    model = build_model(cfg, "lm")
    if bits:
        quantize(model, bits, GROUP)
    apply_lora(model, TARGETS, RANK, ALPHA, 0.0)
    if not train_head:  # apply_lora trains the task head too; peft and mlx-lm leave lm_head frozen
        model.lm_head.freeze()
    return model


def mlx_lm_model(cfg: dict, bits: int | None):
    from mlx_lm.models import llama
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model = llama.Model(llama.ModelArgs(**cfg))
    if bits:  # mlx-lm's own QuantizedLinear (fused quantized_matmul), on the layers ours quantizes
        nn.quantize(model, GROUP, bits, class_predicate=lambda p, m: quantizable(p, m, GROUP, ("lm_head",)))
    model.freeze()
    keys = [f"self_attn.{t}" for t in TARGETS]
    lora = {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0, "keys": keys}
    linear_to_lora_layers(model, len(model.layers), lora)
    return model


def mlx_lm_loss(model, batch):
    """``lm_loss`` for mlx-lm's model, which takes no padding mask (the batch has no padding)."""
    return lm_loss(lambda ids, attention_mask: model(ids), batch)


def run(quick: bool, batch: int = 4, seq: int = 256) -> str:
    shape = QUICK_SHAPE if quick else SHAPE
    if quick:
        batch, seq = 2, 64
    cfg = {"model_type": "llama", "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **shape}
    mx.random.seed(0)
    ids = mx.random.randint(0, shape["vocab_size"], (batch, seq))
    mask = mx.ones((batch, seq), mx.int32)
    tokens = batch * seq
    w, n = (1, 2) if quick else (2, 8)
    slow_w, slow_n = (1, 1) if quick else (1, 2)  # native quantized matmul: ~50 s a step here

    batch_args = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    ours_row = lambda bits, head=False: mlx_row(ours(cfg, bits, head), lm_loss, batch_args, tokens, w, n)
    mlx_lm_row = lambda bits, w, n: mlx_row(mlx_lm_model(cfg, bits), mlx_lm_loss, batch_args, tokens, w, n)
    peft = {"model": cfg, "rank": RANK, "alpha": ALPHA, "targets": TARGETS, "batch": batch, "seq": seq}
    pt = prepare(
        "transformers + peft: LoRA, PyTorch CPU fp32", lambda: torch_row("llama", peft, tokens, w, n)
    )
    inproc = prepare(
        "same, PyTorch in this process (after `import mlx_models` and the MLX rows)",
        lambda: torch_row("llama", peft, tokens, w, n, in_process=True),
    )
    o32 = prepare("ours: LoRA, fp32 base", lambda: ours_row(None))
    o4 = prepare("ours: QLoRA, 4-bit base (dequantize + BLAS GEMM)", lambda: ours_row(BITS))
    l32 = prepare("mlx-lm: LoRA, fp32 base", lambda: mlx_lm_row(None, w, n))
    l4 = prepare(
        "mlx-lm: QLoRA, 4-bit base (native quantized_matmul)", lambda: mlx_lm_row(BITS, slow_w, slow_n)
    )
    head = prepare(
        "ours: LoRA, fp32 base, lm_head trained too (apply_lora default)", lambda: ours_row(None, True)
    )
    eval_args = {k: mx.concatenate([v] * EVAL_X) for k, v in batch_args.items()}
    ev = prepare(
        f"ours: evaluation of the LoRA model (the trainer's compiled no-grad forward), "
        f"batch {EVAL_X * batch}",
        lambda: eval_row(ours(cfg, None), "lm", eval_args, EVAL_X * tokens, w, n),
    )
    rows = time_interleaved([o32, o4, l32, l4, pt, inproc, head, ev])
    desc = (
        f"Llama {shape['hidden_size']} hidden, {shape['num_hidden_layers']} layers, "
        f"{shape['num_attention_heads']} heads ({shape['num_key_value_heads']} kv), "
        f"intermediate {shape['intermediate_size']}, vocab {shape['vocab_size']}; "
        f"batch {batch} × seq {seq} = {tokens} tokens/step; LoRA r={RANK} alpha={ALPHA} on "
        f"{', '.join(TARGETS)}; causal-LM loss; AdamW lr 1e-4. Unless said, lm_head is frozen in "
        "every row (as in peft and mlx-lm). 4-bit rows: group 64; embeddings and every linear whose "
        "input dim is a multiple of 64 are quantized, in ours and mlx-lm alike (lm_head, and down_proj "
        "when the intermediate size is not a multiple of 64 as with 1376, stay fp32)."
    )
    ratios = ratio_table(
        [
            ("ours LoRA ÷ mlx-lm LoRA (fp32)", o32, l32),
            ("ours QLoRA ÷ mlx-lm QLoRA (4-bit)", o4, l4),
            ("ours LoRA ÷ PyTorch + peft (fp32)", o32, pt),
            ("ours QLoRA ÷ PyTorch + peft (fp32)", o4, pt),
            ("PyTorch + peft in this process ÷ in a clean process", inproc, pt),
            ("ours: evaluation ÷ LoRA training (fp32)", ev, o32),
        ]
    )
    return f"## 1. LoRA / QLoRA train step, small Llama\n\n{desc}\n\n{table(rows)}\n\nRatios:\n\n{ratios}\n"
