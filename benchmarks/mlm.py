"""Section 4: a masked-LM pretraining step of a roberta-base-shaped model, ours vs transformers."""

import mlx_models  # noqa: F401, I001  (OpenBLAS before MLX)

import mlx.core as mx
import numpy as np
from common import describe, mlx_row, prepare, section, time_interleaved, torch_row

from mlx_models.train import scratch
from mlx_models.train.tasks import IGNORE, Masking, make_batch, mlm_loss

ROBERTA_BASE = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
}
QUICK = {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}


def every_position(batch: dict) -> dict:
    """The same batch with the head run on all B x L positions (the loss still counts the masked)."""
    labels = np.array(batch["labels"]).ravel()
    at = np.arange(labels.size, dtype=np.int32)
    return batch | {"masked_at": mx.array(at), "masked_keep": mx.array(labels != IGNORE)}


def run(quick: bool, batch: int = 8, seq: int = 128) -> str:
    cfg = ROBERTA_BASE | (QUICK if quick else {})
    if quick:
        batch, seq = 4, 64
    rng = np.random.default_rng(0)
    seqs = [[0, *rng.integers(4, 50264, seq - 2).tolist(), 2] for _ in range(batch)]  # <s> ... </s>
    masking = Masking(mask_id=50264, vocab_size=50265, special_ids=(0, 1, 2, 3))  # roberta-base's ids
    batch_in = make_batch("mlm", seqs, None, pad_id=1, masking=masking, rng=rng)
    tokens = batch * seq
    w, n = (1, 2) if quick else (1, 4)
    pt = prepare(
        "transformers RobertaForMaskedLM, PyTorch CPU fp32",
        lambda: torch_row("roberta_mlm", {"model": cfg, "batch": batch, "seq": seq}, tokens, w, n),
    )
    ours = prepare(
        "ours: RoBERTa from scratch, masked-LM (compiled step; head on the masked tokens)",
        lambda: mlx_row(scratch.build(cfg, "mlm", seed=0), mlm_loss, batch_in, tokens, w, n),
    )
    every = every_position(batch_in)
    dense = prepare(
        "ours, the head on every position (as transformers)",
        lambda: mlx_row(scratch.build(cfg, "mlm", seed=0), mlm_loss, every, tokens, w, n),
    )
    rows = time_interleaved([ours, pt, dense])
    mx.clear_cache()
    desc = (
        f"RoBERTa {describe(cfg)} (roberta-base shape{', shrunk for --quick' if quick else ''}), HF's "
        f"initialisation; batch {batch} × seq {seq} = {tokens} tokens/step, 15% of the tokens masked "
        "(80/10/10), every weight trained (tied decoder), dropout 0.1, AdamW lr 1e-4, clipping 1.0. "
        "Ours runs the LM head (dense, LayerNorm, the 50265-way decoder) on the masked tokens only, "
        "padded to a multiple of 64 (ModernBERT's sparse prediction); transformers' RobertaForMaskedLM "
        "runs it on every position, as does our third row (same loss)."
    )
    pairs = [("ours ÷ PyTorch", ours, pt), ("ours, head on every position ÷ PyTorch", dense, pt)]
    return section("4. Masked-LM pretraining step (RoBERTa)", desc, rows, pairs)
