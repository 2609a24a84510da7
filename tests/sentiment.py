"""A tiny real-text task for training tests: short movie-review sentences whose label is carried
by a sentiment word ("The story was dull, truly dull." = 0), in balanced, disjoint splits."""

import json
from pathlib import Path

import numpy as np

from hf_fixtures import SENTENCES

# Real English with repeated structure: a tiny language model learns it in a few dozen steps.
CORPUS = [
    f"The {s} of the film was {a}, and the audience {v} it."
    for s in ("story", "music", "acting", "ending", "camera work", "dialogue")
    for a in ("wonderful", "dull", "moving", "clumsy")
    for v in ("loved", "hated", "remembered")
] + SENTENCES

POSITIVE = ["great", "brilliant", "wonderful", "charming", "powerful"]
POSITIVE += ["smart", "funny", "sweet", "beautiful", "impressive"]
NEGATIVE = ["terrible", "lazy", "clumsy", "boring", "forced"]
NEGATIVE += ["confusing", "predictable", "weak", "forgettable", "dull"]
SUBJECTS = ["acting", "story", "music", "plot", "ending", "cast", "script", "dialogue", "camera work", "film"]
TEMPLATES = [
    "The {s} was {w}, truly {w}.",
    "I thought the {s} was {w}.",
    "Honestly, a {w} {s}; just {w}.",
    "What a {w} {s}!",
]
SIZES = {"train": 48, "validation": 16, "test": 16}  # per label: 96 / 32 / 32 examples


def sentiment_splits(seed: int = 0) -> dict[str, list[dict]]:
    """Balanced, disjoint, deterministic splits; no sentence appears in two splits."""
    rng = np.random.default_rng(seed)
    pools = {}
    for label, words in ((1, POSITIVE), (0, NEGATIVE)):
        texts = [t.format(s=s, w=w) for t in TEMPLATES for s in SUBJECTS for w in words]
        pools[label] = [texts[i] for i in rng.permutation(len(texts))]
    splits, start = {}, 0
    for name, n in SIZES.items():
        rows = [{"text": t, "label": label} for label in (1, 0) for t in pools[label][start : start + n]]
        splits[name] = [rows[i] for i in rng.permutation(len(rows))]
        start += n
    return splits


def write_splits(directory: Path, splits: dict[str, list]) -> Path:
    directory.mkdir(parents=True)
    for name, rows in splits.items():
        (directory / f"{name}.json").write_text(json.dumps(rows))
    return directory
