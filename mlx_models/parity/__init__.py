"""The cross-check: the same token ids through our model and through transformers + PyTorch (the
reference path), logits compared. ``python -m mlx_models.parity PATH``."""
