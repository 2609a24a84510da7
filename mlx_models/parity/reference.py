"""The PyTorch reference: the same weights through transformers, on MPS, else CUDA, else CPU."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..models.quant import dequantized_weights

HF_AUTO_CLASSES = {
    "base": "AutoModel",
    "mlm": "AutoModelForMaskedLM",
    "classify": "AutoModelForSequenceClassification",
    "lm": "AutoModelForCausalLM",
}


def torch_device() -> str:
    import torch

    if torch.backends.mps.is_available():
        return "mps"
    return "cuda" if torch.cuda.is_available() else "cpu"


def to_torch(a: mx.array):
    import torch

    return torch.from_numpy(np.array(a.astype(mx.float32)))


def torch_model(mlx_model: nn.Module, config: dict, task: str, device: str | None = None, pad_token_id=None):
    """A transformers model of the same architecture carrying ``mlx_model``'s weights in fp32
    (a quantized model's weights dequantized), in eval mode on ``device``."""
    import torch
    import transformers

    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    config["num_labels"] = getattr(mlx_model.args, "num_labels", 2)
    config.pop("id2label", None), config.pop("label2id", None)
    if pad_token_id is not None:
        config["pad_token_id"] = pad_token_id
    hf_config = transformers.AutoConfig.for_model(**config)
    auto = getattr(transformers, HF_AUTO_CLASSES[task])
    with torch.device("cpu"):
        model = auto.from_config(hf_config, dtype=torch.float32, attn_implementation="eager")
    state = {k: to_torch(v) for k, v in dequantized_weights(mlx_model).items()}
    for bias in ("cls.predictions.bias", "lm_head.bias"):  # transformers ties decoder.bias to these
        if bias in state:
            state[bias.replace(".bias", ".decoder.bias")] = state[bias]
    result = model.load_state_dict(state, strict=False)
    buffers = {k for k, _ in model.named_buffers()}
    tied = {k for k in result.missing_keys if k.endswith(("decoder.weight", "lm_head.weight"))}
    missing = set(result.missing_keys) - buffers - tied
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"reference weights mismatch: missing {sorted(missing)}, unexpected {result.unexpected_keys}"
        )
    model.tie_weights()
    return model.eval().to(device or torch_device())


def torch_forward(model, input_ids: np.ndarray, attention_mask: np.ndarray, task: str) -> np.ndarray:
    """The same output the MLX model returns: logits, or the last hidden state for ``base``."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(input_ids.astype(np.int64)).to(device),
            attention_mask=torch.from_numpy(attention_mask.astype(np.int64)).to(device),
        )
    y = out.last_hidden_state if task == "base" else out.logits
    return y.float().cpu().numpy()
