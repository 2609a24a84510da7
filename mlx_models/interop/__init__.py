"""Models in and out: HF sources (hub, directory, GGUF) read tensor by tensor, conversion to an MLX
checkpoint directory, loading it back, and LoRA adapters in PEFT's and mlx-lm's formats."""
