"""Metrics: classification scores, the run's metrics.jsonl, and curves.png.

A record is one evaluation: {"split": "train" | "validation" | "test", "step": int,
"epoch": float, "loss": float, "accuracy": float, ...}, one JSON object per line.
"""

import io
import json
import os
from pathlib import Path

from ..io import atomic_write_bytes
from . import reporting

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def classification_metrics(y_true: list[int], y_pred: list[int], num_labels: int) -> dict[str, float]:
    """Accuracy, precision, recall and F1: of the positive class (1) for two labels, macro-averaged
    over all labels otherwise; a class never predicted scores 0 rather than raising."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support  # slow import, eval only

    average = "binary" if num_labels == 2 else "macro"
    p, r, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(num_labels)), average=average, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f1),
    }


def append_metrics(run_dir: str | os.PathLike, record: dict) -> None:
    """Append ``record`` to metrics.jsonl, and hand it to the run's --report-to loggers."""
    # fsync per record: after a crash metrics.jsonl still holds every finished evaluation.
    path = Path(run_dir) / METRICS_FILE
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    reporting.forward(run_dir, record)


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # only the last line may be cut short, by a crash mid-write
                raise
    return records


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Keep the records up to ``step`` (a resumed run redoes what came after its checkpoint)."""
    kept = [r for r in read_metrics(run_dir) if r["step"] <= step and r["split"] != "test"]
    atomic_write_bytes(
        Path(run_dir) / METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode()
    )


def plot_curves(run_dir: str | os.PathLike, title: str | None = None, x: str = "step") -> Path:
    """Write RUN_DIR/curves.png: loss and accuracy against ``x`` (step, or tokens seen), train vs
    validation (test as stars)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or GUI state
    from matplotlib.ticker import MaxNLocator

    records = read_metrics(run_dir)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    styles = {"train": ("tab:blue", "o-"), "validation": ("tab:orange", "s-"), "test": ("tab:green", "*")}
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for split, (color, style) in styles.items():
            points = sorted(
                (r[x], r[key]) for r in records if r.get("split") == split and key in r and x in r
            )
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(
                    steps, values, style, color=color, label=split, markersize=10 if split == "test" else 4
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len({r.get(x) for r in records}) == 1:  # a single evaluation (tfidf): centre it
            ax.set_xlim(records[0][x] - 1, records[0][x] + 1)
        ax.set_xlabel("tokens seen" if x == "tokens" else x)
        ax.set_ylabel(key)
        ax.set_title(f"{key}: train vs validation")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.suptitle(title or Path(run_dir).resolve().name)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    path = Path(run_dir) / CURVES_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path
