"""Section 2: full finetuning of a MiniLM-sized BERT for sequence classification, ours vs transformers."""

import mlx_models  # noqa: F401, I001  (OpenBLAS before MLX)

import mlx.core as mx
from common import describe, eval_row, mlx_row, prepare, section, time_interleaved, torch_row
from shapes import MINILM

from mlx_models.models import build_model
from mlx_models.train.tasks import classify_loss

SHAPE = MINILM
EVAL_X = 4  # the trainer's evaluation batch: 4 x the training batch


def run(quick: bool, batch: int = 8, seq: int = 128) -> str:
    shape = SHAPE | ({"num_hidden_layers": 2} if quick else {})
    if quick:
        batch, seq = 4, 64
    cfg = {"model_type": "bert", **shape}  # dropout 0.1 (BERT's default) in both
    mx.random.seed(0)
    ids = mx.random.randint(1000, shape["vocab_size"], (batch, seq))
    mask = mx.ones((batch, seq), mx.int32)
    labels = mx.random.randint(0, 2, (batch,))
    tokens = batch * seq
    w, n = (1, 2) if quick else (2, 10)

    batch_args = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    torch_cfg = {"model": cfg, "batch": batch, "seq": seq}
    pt = prepare(
        "transformers BertForSequenceClassification, PyTorch CPU fp32",
        lambda: torch_row("bert", torch_cfg, tokens, w, n),
    )
    inproc = prepare(
        "same, PyTorch in this process (after `import mlx_models` and the MLX rows)",
        lambda: torch_row("bert", torch_cfg, tokens, w, n, in_process=True),
    )
    ours = prepare(
        "ours: BERT full finetuning (compiled step)",
        lambda: mlx_row(build_model(cfg, "classify"), classify_loss, batch_args, tokens, w, n),
    )
    eval_args = {k: mx.concatenate([v] * EVAL_X) for k, v in batch_args.items()}
    ev = prepare(
        f"ours: evaluation (the trainer's compiled no-grad forward), batch {EVAL_X * batch}",
        lambda: eval_row(build_model(cfg, "classify"), "classify", eval_args, EVAL_X * tokens, w, n),
    )
    rows = time_interleaved([ours, pt, inproc, ev])
    desc = (
        f"BERT {describe(cfg)} (MiniLM-L6 shape); batch {batch} × seq {seq} = {tokens} tokens/step; "
        "every weight trained, 2-label classification, dropout 0.1, AdamW lr 1e-4."
    )
    pairs = [
        ("ours ÷ PyTorch", ours, pt),
        ("PyTorch in this process ÷ in a clean process", inproc, pt),
        ("ours: evaluation ÷ training", ev, ours),
    ]
    return section("2. Encoder full finetuning step", desc, rows, pairs)
