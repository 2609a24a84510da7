"""Fuzzing the two readers of user input: the data files and the training command line. Whatever
they are given, they either succeed or raise one of our one-line errors, never anything else."""

import csv
import io
import json
import os
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_models.errors import MLXModelsError
from mlx_models.train.config import TrainConfig, load_train_config
from mlx_models.train.data import load_splits

SETTINGS = settings(  # FUZZ_EXAMPLES=2000 for a longer hunt than CI's
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# -- data files -------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
rows = st.lists(
    st.dictionaries(st.sampled_from(["text", "label", "other", ""]), values, max_size=3), max_size=12
)


def write(path, records, kind: str) -> None:
    if kind == "json":
        path.write_text(json.dumps(records))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=sorted({k for r in records for k in r}) or ["text"])
        writer.writeheader()
        writer.writerows(
            [{k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in r.items()} for r in records]
        )
        path.write_text(buf.getvalue())


def check_loader(directory, task: str = "classify") -> None:
    try:
        splits = load_splits(TrainConfig(dataset="fuzz", data_dir=str(directory), task=task))
    except MLXModelsError as e:
        assert "\n" not in str(e) and str(e)
        return
    for split in (splits.train, splits.validation, splits.test):  # what loads is usable
        assert len(split) > 0 and all(isinstance(t, str) for t in split.texts)
        if task == "classify":
            assert all(0 <= y < splits.num_labels for y in split.labels)


@SETTINGS
@given(
    train=rows,
    test=rows,
    kind=st.sampled_from(["json", "jsonl", "csv"]),
    task=st.sampled_from(["classify", "mlm"]),
)
def test_structured_data_files(tmp_path_factory, train, test, kind, task):
    d = tmp_path_factory.mktemp("fuzz")
    write(d / f"train.{kind}", train, kind)
    write(d / f"test.{kind}", test, kind)
    check_loader(d, task)


@SETTINGS
@given(blob=st.binary(max_size=300), kind=st.sampled_from(["json", "jsonl", "csv", "parquet"]))
def test_arbitrary_bytes(tmp_path_factory, blob, kind):
    d = tmp_path_factory.mktemp("fuzz")
    (d / f"train.{kind}").write_bytes(blob)
    check_loader(d)


# -- the command line -------------------------------------------------------------------------------

keys = st.sampled_from(
    ["model", "epochs", "learning-rate", "learning_rate", "lora", "quantize", "dropout", "seed", "max-length",
     "lora-targets", "batch-size", "memory-limit", "task", "lr-schedule", "bogus", "", "resume", "eval-only"]
)  # fmt: skip
words = st.one_of(
    st.sampled_from(
        ["1", "0", "-1", "1e3", "1.5", "nan", "inf", "-inf", "none", "true", "yes", "", "4", "2.0"]
    ),
    st.text(string.printable, max_size=8),
)
tokens = st.one_of(
    st.tuples(keys, words).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(keys, words).map(lambda kv: [f"--{kv[0]}", kv[1]]),
    keys.map(lambda k: f"--{k}"),
    keys.map(lambda k: f"--no-{k}"),
    words,
)


@SETTINGS
@given(argv=st.lists(tokens, max_size=6))
def test_command_line(tmp_path_factory, argv):
    flat = [t for item in argv for t in (item if isinstance(item, list) else [item])]
    out = tmp_path_factory.mktemp("fuzz") / "run"
    try:
        cfg = load_train_config([*flat, "--out", str(out)])
    except MLXModelsError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(cfg, TrainConfig)
    assert cfg.learning_rate > 0 and cfg.learning_rate == cfg.learning_rate  # bounds hold, no NaN
