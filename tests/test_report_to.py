"""--report-to: TensorBoard and W&B get every metrics.jsonl record and the resolved config, read
back with their own readers (TensorBoard's EventAccumulator; W&B's offline run file, decoded
with wandb's own protobuf Record); a resume continues the same TensorBoard dir and W&B run;
bad values and missing packages fail before anything is written; only rank 0 logs."""

import json
import struct
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mlx_models.train.trainer as trainer
import train
from mlx_models.cli import run_cli
from mlx_models.errors import ConfigError
from mlx_models.train import reporting
from mlx_models.train import run_dir as rd
from mlx_models.train.config import TrainConfig, build_parser, load_train_config
from mlx_models.train.metrics import append_metrics, read_metrics

QUICK = ["--max-length", "32", "--batch-size", "8", "--max-steps", "4", "--eval-every", "2"]


@pytest.fixture(scope="module", autouse=True)
def wandb_offline(tmp_path_factory):
    """W&B offline, silent, and every file it writes under a temp dir (nothing in $HOME)."""
    home = tmp_path_factory.mktemp("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    env |= {k: str(home / k.lower()) for k in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}
    env |= {"WANDB_DATA_DIR": str(home / "data"), "WANDB_ARTIFACT_DIR": str(home / "artifacts")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("WANDB_PROJECT", "WANDB_API_KEY", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
            mp.delenv(k, raising=False)
        yield home
        import wandb

        wandb.teardown()  # stops wandb's service process before the env goes back


def argv(model: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", model, "--data-dir", str(data), "--out", str(out), *QUICK, *extra]


def expected_scalars(records: list[dict], skip_splits: tuple[str, ...] = ()) -> dict[str, list]:
    """tag -> [(step, value)] from metrics.jsonl: every number of every record but its step."""
    out: dict[str, list] = {}
    for r in records:
        if r["split"] in skip_splits:
            continue
        for k, v in r.items():
            if k != "step" and type(v) in (int, float):
                out.setdefault(f"{r['split']}/{k}", []).append((r["step"], v))
    return out


# ---- readers --------------------------------------------------------------------------------------


def tensorboard(run_dir: Path):
    """(tag -> [(step, value)], the config text) as TensorBoard itself reads RUN/tensorboard/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    config = acc.Tensors("config")[-1].tensor_proto.string_val[0].decode()
    return scalars, json.loads(textwrap.dedent(config))


def wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (RUN/wandb/offline-run-*/run-ID.wandb): a 7-byte
    header (":W&B", magic, version), then LevelDB's log format (32 KiB blocks of chunks, each a
    7-byte header: CRC, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4), each record one protobuf
    `Record` of wandb's own schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run(path: Path) -> dict:
    """id, name, project, config, history rows (without W&B's own _ keys) and exit code."""
    out = {"history": [], "config": {}, "exit_code": None}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out |= {"id": r.run.run_id, "name": r.run.display_name, "project": r.run.project}
        if kind in ("run", "config"):
            items = (r.run if kind == "run" else r).config.update
            out["config"] |= {i.key: json.loads(i.value_json) for i in items if i.key != "_wandb"}
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            out["history"].append({k: v for k, v in row.items() if not k.startswith("_")})
        if kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


def wandb_runs(run_dir: Path, wait: float = 30.0) -> list[dict]:
    """Every W&B run of ``run_dir``. wandb-core writes the file from its own process and may still
    be flushing it when finish() returns on a loaded machine: read until each has its exit record."""
    deadline = time.monotonic() + wait
    while True:
        runs = [wandb_run(p) for p in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))]
        if all(r["exit_code"] is not None and "name" in r for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def history_of(records: list[dict]) -> list[dict]:
    """The W&B rows metrics.jsonl's records should have become."""
    rows = []
    for r in records:
        row = {f"{r['split']}/{k}": v for k, v in r.items() if k != "step" and type(v) in (int, float)}
        rows.append(row | {"train/global_step": r["step"]})
    return rows


def check_tensorboard(run_dir: Path, records: list[dict], **changed) -> None:
    """TensorBoard holds exactly metrics.jsonl's numbers, and the config (config.json | changed)."""
    scalars, config = tensorboard(run_dir)
    want = expected_scalars(records)
    assert set(scalars) == set(want)
    for tag, points in want.items():
        got = scalars[tag]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-7), tag
    assert config == json.loads((run_dir / "config.json").read_text()) | changed


# ---- the runs -------------------------------------------------------------------------------------


def test_tensorboard_gets_every_record_and_the_config(bert_classifier, sentiment, tmp_path):
    out = tmp_path / "run"
    test = trainer.run(load_train_config(argv(bert_classifier, sentiment, out, "--report-to", "tensorboard")))
    records = read_metrics(out)
    assert [(r["split"], r["step"]) for r in records] == [
        ("train", 2), ("validation", 2), ("train", 4), ("validation", 4), ("test", test["step"]),
    ]  # fmt: skip
    tags = set(expected_scalars(records))
    wanted = {"train/loss", "train/learning_rate", "train/tokens_per_s", "train/peak_gb"}
    assert wanted | {"validation/accuracy", "test/f1", "test/loss"} <= tags
    check_tensorboard(out, records)
    assert json.loads((out / "config.json").read_text())["report_to"] == ["tensorboard"]
    assert not (out / "wandb").exists()


def test_wandb_offline_gets_every_record_and_the_config(bert_classifier, sentiment, tmp_path, capsys):
    out = tmp_path / "run"
    test = trainer.run(load_train_config(argv(bert_classifier, sentiment, out, "--report-to", "wandb")))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == test  # stdout: one JSON line
    runs = wandb_runs(out)
    assert len(runs) == 1
    run = runs[0]
    assert run["id"] == (out / "wandb" / "run_id").read_text().strip()
    assert (run["name"], run["project"], run["exit_code"]) == ("run", "mlx_models", 0)
    assert run["config"] == json.loads((out / "config.json").read_text())
    assert run["history"] == history_of(read_metrics(out))
    assert not (out / "tensorboard").exists()


def test_resume_continues_the_same_tensorboard_dir_and_wandb_run(
    bert_classifier, sentiment, tmp_path, monkeypatch
):
    """A run killed after the records of step 6, before their checkpoint (its newest is step 4),
    then resumed: TensorBoard drops the events of the redone steps, W&B continues the same run
    id; both end equal to metrics.jsonl. The killed session's W&B run ends with a non-zero code."""
    out = tmp_path / "run"
    save = trainer.Run.save

    def killed_at_6(run, name, state):
        if state.step == 6:
            raise KeyboardInterrupt  # after step 6's records, before its best/ or last/
        save(run, name, state)

    monkeypatch.setattr(trainer.Run, "save", killed_at_6)
    args = argv(bert_classifier, sentiment, out, "--report-to", "tensorboard,wandb", "--save-every", "4")
    args[args.index("--max-steps") + 1] = "8"
    with pytest.raises(KeyboardInterrupt):
        trainer.run(load_train_config(args))
    monkeypatch.undo()
    assert rd.checkpoint_step(rd.latest_checkpoint(out)) == 4
    (first,) = wandb_runs(out)
    assert first["exit_code"] != 0
    assert [row["train/global_step"] for row in first["history"]] == [2, 2, 4, 4, 6, 6]
    assert [s for s, _ in tensorboard(out)[0]["validation/loss"]] == [2, 4, 6]

    trainer.run(load_train_config(["--resume", str(out)]))
    records = read_metrics(out)
    assert [r["step"] for r in records if r["split"] == "validation"] == [2, 4, 6, 8]
    check_tensorboard(out, records, resume=str(out))  # the killed session's step-6 events are gone
    assert len(list((out / "tensorboard").iterdir())) == 2  # one event file per session, one dir
    first, second = wandb_runs(out)
    assert first["id"] == second["id"] == (out / "wandb" / "run_id").read_text().strip()
    assert second["exit_code"] == 0 and second["config"]["resume"] == str(out)
    assert second["history"] == history_of([r for r in records if r["step"] > 4])


def test_eval_only_logs_its_test_record_to_the_same_run(bert_classifier, sentiment, tmp_path):
    out = tmp_path / "run"
    trainer.run(load_train_config(argv(bert_classifier, sentiment, out, "--report-to", "tensorboard,wandb")))
    trainer.run(load_train_config(["--eval-only", str(out)]))
    tests = [r for r in read_metrics(out) if r["split"] == "test"]
    assert len(tests) == 2
    first, second = wandb_runs(out)
    assert second["id"] == first["id"] and second["exit_code"] == 0
    assert second["history"] == history_of(tests[1:])
    check_tensorboard(out, read_metrics(out), eval_only=str(out))  # both test records; the latest config


def test_tfidf_baseline_reports_too(sentiment, tmp_path):
    """The baseline writes its run directory atomically: the loggers write in the temp dir that
    becomes RUN, under RUN's name; its --eval-only continues them."""
    out = tmp_path / "tfidf"
    args = ["--model", "tfidf", "--data-dir", str(sentiment), "--out", str(out), "--report-to", "all"]
    assert run_cli(train.main, args) == 0
    records = read_metrics(out)
    check_tensorboard(out, records)
    (run,) = wandb_runs(out)
    assert run["name"] == "tfidf" and run["history"] == history_of(records)
    assert json.loads((out / "config.json").read_text())["report_to"] == ["tensorboard", "wandb"]
    assert run_cli(train.main, ["--eval-only", str(out)]) == 0  # its test record, to the same runs
    records = read_metrics(out)
    check_tensorboard(out, records, eval_only=str(out))
    first, second = wandb_runs(out)
    assert second["id"] == first["id"] and second["history"] == history_of(records[-1:])


# ---- failures -------------------------------------------------------------------------------------


def refused(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert run_cli(train.main, argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and out == "", err
    return lines[0]


@pytest.mark.parametrize(
    "value,message",
    [
        ("mlflow", "report_to: unknown 'mlflow'; allowed: none, all, tensorboard, wandb"),
        ("tensorboard,none", "report_to: none and all stand alone"),
        ("all,wandb", "report_to: none and all stand alone"),
    ],
)
def test_bad_value_exits_2_before_anything_is_written(
    bert_classifier, sentiment, tmp_path, capsys, value, message
):
    out = tmp_path / "run"
    assert message in refused(argv(bert_classifier, sentiment, out, "--report-to", value), capsys)
    assert not out.exists()


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_missing_package_exits_2_before_anything_is_written(
    bert_classifier, sentiment, tmp_path, capsys, monkeypatch, logger
):
    monkeypatch.setitem(sys.modules, logger, None)  # `import` then fails as for a missing package
    out = tmp_path / "run"
    line = refused(argv(bert_classifier, sentiment, out, "--report-to", f"tensorboard,{logger}"), capsys)
    assert line == f"error: --report-to {logger} needs the {logger} package: pip install {logger}"
    assert not out.exists()


def test_all_without_either_package_exits_2(bert_classifier, sentiment, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    assert "found neither package" in refused(
        argv(bert_classifier, sentiment, out, "--report-to", "all"), capsys
    )
    assert not out.exists()


def unreachable(*args, **kwargs):
    import wandb

    raise wandb.errors.CommError("Run initialization has timed out after 90.0 sec.\nPlease try again.")


def test_unreachable_wandb_stops_before_training_unless_optional(
    bert_classifier, sentiment, tmp_path, capsys, monkeypatch
):
    import wandb

    monkeypatch.setattr(wandb, "init", unreachable)
    out = tmp_path / "run"
    line = refused(argv(bert_classifier, sentiment, out, "--report-to", "tensorboard,wandb"), capsys)
    assert "W&B could not start (CommError: Run initialization has timed out" in line
    assert "--report-to-optional" in line and not out.exists()

    args = argv(bert_classifier, sentiment, out, "--report-to", "tensorboard,wandb", "--report-to-optional")
    assert run_cli(train.main, args) == 0
    err = capsys.readouterr().err
    assert "warning: W&B could not start (CommError" in err and "going on without it" in err
    records = read_metrics(out)
    assert len(records) == 5
    check_tensorboard(out, records)  # the other logger carries on


def test_a_refused_eval_only_leaves_no_logger_files(
    bert_classifier, sentiment, tmp_path, capsys, monkeypatch
):
    """--eval-only (or --resume) of a run that never logged, with W&B unreachable: one line, exit
    2, and the run directory as it was (TensorBoard, opened first, leaves no event file)."""
    import wandb

    out = tmp_path / "run"
    trainer.run(load_train_config(argv(bert_classifier, sentiment, out)))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setattr(wandb, "init", unreachable)
    line = refused(["--eval-only", str(out), "--report-to", "tensorboard,wandb"], capsys)
    assert "W&B could not start" in line
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# ---- units: the option, rank 0 -----------------------------------------------------------------


def test_option_values_yaml_and_help(tmp_path, monkeypatch, capsys):
    assert TrainConfig().report_to is None and TrainConfig(report_to="none").report_to is None
    assert TrainConfig(report_to="TensorBoard, wandb").report_to == ["tensorboard", "wandb"]
    assert TrainConfig(report_to=["wandb"], report_to_optional="yes").report_to_optional is True
    with pytest.raises(ConfigError, match="unknown 'comet'"):
        TrainConfig(report_to=["comet"])
    monkeypatch.chdir(tmp_path)
    yaml = "models: {m: {source: org/m}}\ndefault_run: {model: m}\ndatasets: {d: {hub: org/d}}\n"
    (tmp_path / "c.yaml").write_text(yaml + "profiles: {p: {report_to: [tensorboard, wandb]}}\n")
    cfg = load_train_config(["--model", "m", "--dataset", "d", "--profile", "p"], tmp_path / "c.yaml")
    assert cfg.report_to == ["tensorboard", "wandb"]
    cfg = load_train_config(["--model", "m", "--dataset", "d", "report_to=all"], tmp_path / "c.yaml")
    assert cfg.report_to == ["tensorboard", "wandb"]  # all = those installed, resolved before saving
    text = build_parser().format_help()
    assert "--report-to REPORT_TO" in text and "--report-to-optional" in text and "WANDB_MODE" in text


def test_only_rank_0_logs(tmp_path):
    cfg = TrainConfig(report_to=["tensorboard", "wandb"])
    with reporting.reporting(cfg, tmp_path, main=False) as reporter:
        append_metrics(tmp_path, {"split": "validation", "step": 1, "loss": 0.5})
        assert reporter.loggers == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no tensorboard/, no wandb/
    with reporting.reporting(cfg, tmp_path, main=True) as reporter:
        assert set(reporter.loggers) == {"tensorboard", "wandb"}
        append_metrics(tmp_path, {"split": "validation", "step": 1, "loss": 0.5, "note": "x", "ok": True})
    assert tensorboard(tmp_path)[0] == {"validation/loss": [(1, 0.5)]}  # numbers only, bools are not
