"""Metrics: hand-computed scores, metrics.jsonl, curves.png."""

import pytest

from mlx_models.train.metrics import append_metrics, classification_metrics, plot_curves, read_metrics


def test_binary_scores_match_hand_computation():
    # TP=3 (0, 2, 6), FN=1 (1), FP=2 (4, 5), TN=2 (3, 7)
    m = classification_metrics([1, 1, 1, 0, 0, 0, 1, 0], [1, 0, 1, 0, 1, 1, 1, 0], num_labels=2)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)


def test_four_classes_are_macro_averaged():
    m = classification_metrics([0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 0, 0, 2, 2, 3], num_labels=4)
    # per class (P, R): 0: (2/3, 1), 1: (1, 1/2), 2: (2/3, 1), 3: (1, 1/2)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx((2 / 3 + 1 + 2 / 3 + 1) / 4)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx((0.8 + 2 / 3 + 0.8 + 2 / 3) / 4)
    # A class that is never predicted or present scores 0 instead of raising.
    assert classification_metrics([0, 0], [0, 0], num_labels=4)["precision"] == pytest.approx(0.25)


def test_metrics_jsonl_round_trip_and_truncated_tail(tmp_path):
    records = [{"split": "train", "step": s, "epoch": s / 10, "loss": 1.0 / (s + 1)} for s in range(3)]
    for r in records:
        append_metrics(tmp_path, r)
    assert read_metrics(tmp_path) == records
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"split": "valid')  # a crash mid-write
    assert read_metrics(tmp_path) == records
    (tmp_path / "metrics.jsonl").write_text('{"bad\n{"split": "train"}\n')
    with pytest.raises(ValueError):
        read_metrics(tmp_path)


def test_plot_curves_writes_a_png(tmp_path):
    for step in (0, 10, 20):
        for split, loss, acc in (("train", 1 / (step + 1), 0.5 + step / 50), ("validation", 0.6, 0.7)):
            append_metrics(
                tmp_path, {"split": split, "step": step, "epoch": step / 20, "loss": loss, "accuracy": acc}
            )
    append_metrics(tmp_path, {"split": "test", "step": 20, "epoch": 1.0, "loss": 0.65, "accuracy": 0.69})
    path = plot_curves(tmp_path)
    data = path.read_bytes()
    assert path.name == "curves.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]  # no temp left
