"""The study's table columns: one header and one format per report.json field, shared by
report.md (markdown.py) and index.html (page.py), so both show a number the same way."""

import math

FIELDS = {  # report.json key: (header, format); format None: text
    "cell": ("cell", None),
    "model": ("model", None),
    "dataset": ("dataset", None),
    "status": ("status", None),
    "reason": ("why", None),
    "analysis": ("analysis", None),
    "analysis_reason": ("analysis: why", None),
    # cells: fit
    "test_accuracy": ("test acc", "{:.4f}"),
    "test_f1": ("test F1", "{:.4f}"),
    "test_loss": ("test loss", "{:.4f}"),
    "best_val_loss": ("best val loss", "{:.4f}"),
    "best_step": ("best step", "{}"),
    "last_val_loss": ("last val loss", "{:.4f}"),
    "gap_best": ("gap at best", "{:+.4f}"),
    "gap_last": ("gap at last", "{:+.4f}"),
    "accuracy_gap_best": ("acc gap at best", "{:+.4f}"),
    "accuracy_gap_last": ("acc gap at last", "{:+.4f}"),
    # cells: resources
    "tokens_per_s": ("tokens/s", "{:.0f}"),
    "peak_gb": ("MLX peak GB", "{:.2f}"),
    "max_rss_gb": ("max RSS GB", "{:.2f}"),
    "wall_s": ("wall s", "{:.0f}"),
    "attempts": ("attempts", "{}"),
    # pretraining stages
    "parameters": ("parameters", "{:,}"),
    "tokens": ("tokens", "{:,}"),
    "max_length": ("max length", "{}"),
    "mlm_val_loss": ("MLM val loss", "{:.4f}"),
    # checkpoints: fit and memorisation
    "checkpoint": ("checkpoint", None),
    "method": ("method", None),
    "step": ("step", "{}"),
    "train_loss": ("train loss", "{:.4f}"),
    "val_loss": ("val loss", "{:.4f}"),
    "gap": ("gap", "{:+.4f}"),
    "probe_accuracy": ("probe acc", "{:.3f}"),
    "ece": ("ECE", "{:.3f}"),
    "member_loss": ("member loss", "{:.4f}"),
    "heldout_loss": ("held-out loss", "{:.4f}"),
    "membership_auc": ("membership AUC", "{:.3f}"),
    # checkpoints: explanations
    "comprehensiveness": ("comp. ↑", "{:.3f}"),
    "random_comprehensiveness": ("random comp.", "{:.3f}"),
    "sufficiency": ("suff. ↓", "{:.3f}"),
    "random_sufficiency": ("random suff.", "{:.3f}"),
    "drift_previous": ("ρ vs previous", "{:.3f}"),
    "drift_last": ("ρ vs last", "{:.3f}"),
    "non_predictive_share": ("non-predictive mass", "{:.3f}"),
    # agreement across models
    "a": ("model a", None),
    "b": ("model b", None),
    "spearman": ("Spearman ρ", "{:.3f}"),
    "kendall": ("Kendall τ", "{:.3f}"),
    "top_k_overlap": ("top-k overlap", "{:.3f}"),
    "k": ("k", "{}"),
    "texts": ("texts", "{}"),
    # stability
    "stable_step": ("attributions stable from step", "{}"),
    "best_val_step": ("lowest validation loss at step", "{}"),
    # data maps
    "examples": ("examples", "{}"),
    "checkpoints": ("checkpoints", "{}"),
    "easy": ("easy", "{:.2f}"),
    "ambiguous": ("ambiguous", "{:.2f}"),
    "hard": ("hard", "{:.2f}"),
    "mean_confidence": ("mean confidence", "{:.3f}"),
    "mean_variability": ("mean variability", "{:.3f}"),
}

# The tables, as report.json keys
CELL_FIT = ["test_accuracy", "test_f1", "test_loss", "best_val_loss", "best_step", "last_val_loss"]
CELL_FIT += ["gap_best", "gap_last", "accuracy_gap_best", "accuracy_gap_last"]
RESOURCES = ["tokens_per_s", "peak_gb", "max_rss_gb", "wall_s", "attempts"]
PRETRAINING = ["model", "dataset", "status", "parameters", "tokens", "max_length", "mlm_val_loss"]
FIT = ["checkpoint", "method", "step", "train_loss", "val_loss", "gap", "probe_accuracy", "ece"]
FIT += ["member_loss", "heldout_loss", "membership_auc"]
EXPLANATIONS = ["checkpoint", "method", "step", "comprehensiveness", "random_comprehensiveness"]
EXPLANATIONS += ["sufficiency", "random_sufficiency", "drift_previous", "drift_last", "non_predictive_share"]
AGREEMENT = ["a", "b", "method", "spearman", "kendall", "top_k_overlap", "k", "texts"]
STABILITY = ["cell", "stable_step", "best_val_step"]
DATA_MAPS = ["cell", "examples", "checkpoints", "easy", "ambiguous", "hard", "mean_confidence"]
DATA_MAPS += ["mean_variability"]


def columns(keys: list[str]) -> list[tuple[str, str, str | None]]:
    """(key, header, format) for each key, from FIELDS."""
    return [(key, *FIELDS[key]) for key in keys]


def show(value, fmt: str | None) -> str:
    """A report.json value as a table shows it: "–" for null or a non-finite number, a number in
    its column's format, anything else as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if fmt and is_number(value):
        try:
            return fmt.format(value)
        except (ValueError, TypeError):
            pass
    return str(value)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
