"""Trained runs out to the ecosystem: a transformers directory, a PEFT or mlx-lm adapter, a GGUF
file, or a LoRA run fused into a plain checkpoint. ``python -m mlx_models.export RUN --to ...``."""
