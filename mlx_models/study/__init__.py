"""The study: every selected model on every selected dataset, trained as cells and compared in one
report. ``python -m mlx_models.study NAME`` (or ``train.py --study NAME``)."""
