"""The bag-of-words baseline: TF-IDF features and logistic regression (scikit-learn).

Same splits, metrics and run-directory layout as the transformer runs, so the study compares
like with like: config.json, metrics.jsonl (train, validation and test records), curves.png,
and the fitted pipeline as best/model.joblib and last/model.joblib (identical: one fit, no
epochs). The run directory is written atomically, so a failed run leaves nothing behind.
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..io import atomic_dir
from ..registry import config_file
from . import run_dir as rd
from .config import TrainConfig, default_run_dir, resolve_model_alias, save_train_config
from .data import Split, Splits, load_splits
from .metrics import append_metrics, classification_metrics, plot_curves
from .reporting import reporting
from .run_dir import TFIDF_MODEL

# Overridden by `params:` of the model's entry in config.yaml.
DEFAULT_PARAMS = {"C": 1.0, "ngram_max": 2, "min_df": 2, "max_features": 200_000}
SPLITS = ("train", "validation", "test")


def run_tfidf(
    cfg: TrainConfig, splits: Splits | None = None, config_path: str | os.PathLike | None = None
) -> dict[str, float]:
    """Fit on train, score train, validation and test; return the test metrics."""
    config_path = config_path or config_file()
    import joblib

    if cfg.resume:
        raise ConfigError(
            "the tfidf baseline fits in one go: --resume does not apply; run it again with a new --out"
        )
    if cfg.eval_only:
        return evaluate_tfidf(cfg, config_path)
    run_dir = Path(cfg.out or default_run_dir(cfg.model, cfg.dataset, config_path))
    if run_dir.exists():
        raise ConfigError(f"output directory {run_dir} already exists; choose another --out")
    params = DEFAULT_PARAMS | resolve_model_alias(cfg.model, config_path)["params"]
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ConfigError(
            f"unknown tfidf params {unknown} in config.yaml; allowed: {', '.join(DEFAULT_PARAMS)}"
        )
    splits = splits or load_splits(cfg, config_path)
    if len(set(splits.train.labels)) < 2:
        raise DataError(f"the training split of {splits.source} has a single class; a classifier needs two")
    model = pipeline(params, cfg.seed)
    start = time.perf_counter()
    try:
        model.fit(splits.train.texts, splits.train.labels)
    except ValueError as e:  # e.g. "empty vocabulary": texts without a word that occurs min_df times
        raise DataError(f"the tfidf baseline cannot fit {splits.source}: {e}; check the texts") from e
    records = [score(model, name, getattr(splits, name), splits.num_labels) for name in SPLITS]
    records[0]["fit_seconds"] = round(time.perf_counter() - start, 3)
    print(f"tfidf: fitted on {len(splits.train)} examples from {splits.source} -> {run_dir}", file=sys.stderr)

    cfg = dataclasses.replace(cfg, out=str(run_dir))
    with atomic_dir(run_dir) as tmp, reporting(cfg, tmp, name=run_dir.name):
        save_train_config(cfg, tmp / "config.json")
        for record in records:
            append_metrics(tmp, record)
        plot_curves(tmp, title=f"{run_dir.name} ({splits.source})")
        for sub in ("last", "best"):
            (tmp / sub).mkdir()
            joblib.dump(model, tmp / sub / TFIDF_MODEL)
    print(json.dumps(records[-1], sort_keys=True))
    return {k: v for k, v in records[-1].items() if k not in ("split", "step", "epoch")}


def evaluate_tfidf(cfg: TrainConfig, config_path: str | os.PathLike) -> dict[str, float]:
    """``train.py --eval-only RUN`` for a TF-IDF run: its fitted pipeline scored on the test split,
    as for the other models (a metrics.jsonl record and one JSON line on stdout)."""
    from .trained import load_trained

    run_dir = Path(cfg.out)
    rd.check_unlocked(run_dir)
    trained = load_trained(run_dir)
    splits = load_splits(dataclasses.replace(cfg, eval_only=None), config_path)
    if splits.num_labels > trained.num_labels:
        raise DataError(
            f"the data has {splits.num_labels} labels but the classifier of {run_dir} has "
            f"{trained.num_labels}; evaluate it on data with the labels it was trained on"
        )
    record = score(trained.pipeline, "test", splits.test, trained.num_labels)
    record["checkpoint"] = trained.path.name
    with rd.one_writer(run_dir), reporting(cfg, run_dir):
        append_metrics(run_dir, record)
        plot_curves(run_dir, title=f"{run_dir.name} ({splits.source})")
    print(json.dumps(record, sort_keys=True))
    return {k: v for k, v in record.items() if k not in ("split", "step", "epoch", "checkpoint")}


def pipeline(params: dict, seed: int):
    """TfidfVectorizer (sublinear tf, n-grams) + LogisticRegression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    tfidf = TfidfVectorizer(
        sublinear_tf=True,
        ngram_range=(1, int(params["ngram_max"])),
        min_df=int(params["min_df"]),
        max_features=int(params["max_features"]),
        dtype=np.float32,
    )
    clf = LogisticRegression(C=float(params["C"]), max_iter=1000, random_state=seed)
    return Pipeline([("tfidf", tfidf), ("clf", clf)])


def score(model, name: str, split: Split, num_labels: int) -> dict:
    """The split's metrics record, as the transformer runs write it."""
    from sklearn.metrics import log_loss

    proba = model.predict_proba(split.texts)
    pred = model.classes_[proba.argmax(axis=1)]
    loss = float(log_loss(split.labels, proba, labels=model.classes_))
    record = {"split": name, "step": 1, "epoch": 1.0, "n": len(split), "loss": loss}
    return record | classification_metrics(split.labels, pred.tolist(), num_labels)
