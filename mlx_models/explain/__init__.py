"""What a trained classifier relies on: token attributions (IG, grad x input, occlusion, SHAP,
TF-IDF's exact contributions) summed onto words, faithfulness, and drift across checkpoints.
``python -m mlx_models.explain RUN ...``."""
