"""llama.cpp's Q4_0, Q4_1 and Q8_0 blocks as MLX affine groups of 32, without rounding.

A block holds 32 weights of one row as ``value = d * q + m`` (Q4_1), ``d * (q - 8)`` (Q4_0) or
``d * q`` with signed 8-bit q (Q8_0); d and m are float16. That is MLX's affine quantization with
group size 32: scale = d and bias = m, -8 d or -128 d (with q shifted to unsigned). Every product
and sum is exact in float32, so ``mx.dequantize`` of the result equals ``gguf.dequantize`` of the
blocks bit for bit: keeping the blocks adds no second rounding error under QLoRA. Also: gguf's
enum for a llama.cpp architecture name (`arch`), for import and export alike.
"""

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

GROUP_SIZE = 32
BITS = {Q.Q4_0: 4, Q.Q4_1: 4, Q.Q8_0: 8}


def layout(tensor_type: Q) -> dict | None:
    """MLX's quantization of a GGUF tensor type kept as it is; None for the others (F16, K-quants)."""
    return {"group_size": GROUP_SIZE, "bits": BITS[tensor_type]} if tensor_type in BITS else None


def _halves(b: np.ndarray, start: int) -> np.ndarray:
    return b[..., start : start + 2].copy().view(np.float16).astype(np.float32)  # (rows, n_blocks, 1)


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols) unsigned ints < 2**bits -> MLX's uint32 words, element j at bits (j * bits) % 32."""
    per_word = 32 // bits
    q = q.astype(np.uint32).reshape(q.shape[0], -1, per_word)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)[None, None]
    return np.bitwise_or.reduce(q << shifts, axis=-1)


def to_affine(data: np.ndarray, tensor_type: Q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GGUF block bytes of a (rows, cols) tensor -> (packed uint32 weight, scales, biases) as
    ``mx.quantize(w, 32, bits)`` lays them out; scales and biases are float32 (exact)."""
    bits = BITS[tensor_type]
    rows = data.shape[0]
    blocks = data.reshape(
        rows, -1, {Q.Q4_0: 18, Q.Q4_1: 20, Q.Q8_0: 34}[tensor_type]
    )  # (rows, n_blocks, bytes)
    d = _halves(blocks, 0)
    if tensor_type == Q.Q8_0:
        q = blocks[..., 2:].view(np.int8).astype(np.int16) + 128  # (rows, n_blocks, 32), 0..255
        bias = -128 * d
    else:
        nibbles = blocks[..., 4:] if tensor_type == Q.Q4_1 else blocks[..., 2:]  # (rows, n_blocks, 16)
        # Byte i of a block holds weight i in its low nibble and weight i + 16 in its high one.
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
        bias = _halves(blocks, 2) if tensor_type == Q.Q4_1 else -8 * d
    return _pack(q.reshape(rows, -1), bits), d[..., 0], bias[..., 0]


def arch(name: str) -> gguf.MODEL_ARCH:
    """gguf's enum member for llama.cpp's architecture name ("llama" -> MODEL_ARCH.LLAMA)."""
    return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == name)
