"""A trained Llama causal LM as one GGUF file (f16 or f32) for llama.cpp, written with gguf's
``GGUFWriter``: llama.cpp's tensor names, q/k rows permuted for its rope kernel (the inverse of
``sources._unpermute_qk``), the tokenizer from gguf's vocab readers. transformers' GGUF loader and
our ``convert.py`` read it back."""

import tempfile
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np

from ..errors import ConfigError
from ..interop.gguf_blocks import arch
from ..io import output_dir
from ..models import MODULES, family
from ..train.trained import Checkpoint, Trained, inputs_of
from .hf_dir import plain_weights

FILE_TYPES = {"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16}
NUMPY = {"float32": np.float32, "float16": np.float16}


def check_exportable(where: Checkpoint, dtype: str) -> None:
    if family(where.model_type).gguf_arch is None or where.task != "lm":
        archs = ", ".join(sorted(t for t, m in MODULES.items() if m.FAMILY.gguf_arch))
        raise ConfigError(
            f"GGUF holds a Llama causal LM (families: {archs}); {where.path} is a {where.model_type} "
            f"{where.task} model: export it with --to hf (or --to peft for a LoRA run)"
        )
    if dtype not in FILE_TYPES:
        raise ConfigError(f"--to gguf writes float16 or float32, not {dtype}")
    args = where.config
    scaling = args.get("rope_scaling") or args.get("rope_parameters") or {}
    rope = scaling.get("rope_type", scaling.get("type", "default"))
    if rope != "default" or args.get("attention_bias") or args.get("mlp_bias"):
        raise ConfigError(
            f"--to gguf supports Llama without rope scaling or biases ({where.path} has rope type "
            f"{rope!r}); export it with --to hf"
        )


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF q/k rows -> llama.cpp's, as convert_hf_to_gguf.py's ``LlamaModel.permute``."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(t: Trained, dtype: str) -> dict[str, np.ndarray]:
    """llama.cpp name -> array: matrices in ``dtype``, norm weights in f32 (as llama.cpp keeps them)."""
    args, f = t.model.args, family(t.model_type)
    names = gguf.get_tensor_name_map(arch(f.gguf_arch), args.num_hidden_layers)
    weights, out = plain_weights(t, mx.float32), {}
    for hf_name in sorted(weights):
        base, suffix = hf_name.rsplit(".", 1)
        w = np.array(weights.pop(hf_name))  # one dense fp32 tensor alive at a time
        for ending, heads in f.gguf_permuted:
            if hf_name.endswith(ending):
                w = permute_qk(w, getattr(args, heads))
        out[f"{names.get_name(base)}.{suffix}"] = w.astype(NUMPY[dtype] if w.ndim > 1 else np.float32)
    return out


def add_metadata(writer: gguf.GGUFWriter, args, dtype: str, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(args.max_position_embeddings)
    writer.add_embedding_length(args.hidden_size)
    writer.add_block_count(args.num_hidden_layers)
    writer.add_feed_forward_length(args.intermediate_size)
    writer.add_head_count(args.num_attention_heads)
    writer.add_head_count_kv(args.num_key_value_heads)
    writer.add_layer_norm_rms_eps(args.rms_norm_eps)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_rope_dimension_count(args.head_dim)
    writer.add_vocab_size(args.vocab_size)
    writer.add_file_type(FILE_TYPES[dtype])
    if args.head_dim * args.num_attention_heads != args.hidden_size:
        writer.add_key_length(args.head_dim)
        writer.add_value_length(args.head_dim)


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """The tokenizer as llama.cpp stores it: byte-level BPE ("gpt2") or Llama's sentencepiece BPE."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        try:
            vocab = gguf.vocab.BpeVocab(Path(tmp))
        except (FileNotFoundError, ValueError):
            try:
                vocab = gguf.vocab.LlamaHfVocab(Path(tmp))
            except (FileNotFoundError, TypeError, ValueError) as e:
                raise ConfigError(
                    f"--to gguf: the tokenizer is neither byte-level BPE nor Llama's ({e})"
                ) from e
        special = gguf.SpecialVocab(Path(tmp), load_merges=True, n_vocab=vocab_size)
    tokens, scores, types = zip(*vocab.all_tokens(), strict=True)
    tokens, scores, types = list(tokens), list(scores), list(types)
    for i in range(len(tokens), vocab_size):  # embedding rows past the vocabulary (padding)
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special.add_to_gguf(writer, quiet=True)


def export_gguf(t: Trained, out: Path, dtype: str, force: bool) -> Path:
    """Write ``out``/model-<f16|f32>.gguf; returns the file's path."""
    check_exportable(t, dtype)
    arrays = tensors(t, dtype)
    file_name = f"model-{'f16' if dtype == 'float16' else 'f32'}.gguf"
    with output_dir(out, force, inputs_of(t)) as tmp:
        writer = gguf.GGUFWriter(str(tmp / file_name), family(t.model_type).gguf_arch)
        add_metadata(writer, t.model.args, dtype, out.name)
        add_tokenizer(writer, t.tokenizer, t.model.args.vocab_size)
        for name, array in arrays.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out / file_name
