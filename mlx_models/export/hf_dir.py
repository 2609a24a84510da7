"""A trained model as a plain transformers directory: config.json, model.safetensors (or shards with
an index), tokenizer files. LoRA is fused and 4-bit layers dequantized; our module names are HF's,
so the weights keep their names. ``AutoModelFor...from_pretrained(DIR)`` loads it."""

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..batching import pad_id_for
from ..interop.weights import save_weights
from ..io import atomic_write_json, output_dir
from ..models import architecture, family
from ..models.lora import fuse_lora
from ..models.quant import dequantized_weights
from ..train.trained import Trained, inputs_of, label_names

# What config.json of ours holds that transformers has no use for.
NOT_HF = ("quantization", "quantization_config", "base_model", "lora")


def plain_weights(t: Trained, dtype: mx.Dtype) -> dict[str, mx.array]:
    """HF-named dense weights: adapters folded in, quantized layers dequantized, in ``dtype``."""
    model = fuse_lora(t.model) if t.lora else t.model
    return {k: v.astype(dtype) for k, v in dequantized_weights(model).items()}


def hf_config(t: Trained, model: nn.Module, dtype: str) -> dict:
    config = {k: v for k, v in t.config.items() if k not in NOT_HF}
    config["architectures"] = [architecture(t.model_type, t.task)]
    config["dtype"] = config["torch_dtype"] = dtype
    if t.task == "classify" and (t.cfg is not None or "id2label" not in config):
        names = label_names(t.cfg, model.args.num_labels)
        config["num_labels"] = len(names)
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
        config["label2id"] = {n: i for i, n in enumerate(names)}
    if t.task == "classify" and family(t.model_type).causal:
        # transformers finds the last real token from pad_token_id (we pool by the mask).
        if t.tokenizer.pad_token is None:
            t.tokenizer.pad_token = t.tokenizer.eos_token
        config["pad_token_id"] = pad_id_for(t.tokenizer)
    return config


def export_hf(t: Trained, out: Path, dtype: str, force: bool, max_shard_bytes: int) -> Path:
    weights = plain_weights(t, getattr(mx, dtype))
    config = hf_config(t, t.model, dtype)
    with output_dir(out, force, inputs_of(t)) as tmp:
        save_weights(tmp, weights, max_shard_bytes, metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", config)
        t.tokenizer.save_pretrained(str(tmp))
    return out
