"""The bad-input catalogue: every command refuses bad input with one line on stderr, exit code 2,
nothing on stdout, and nothing written or changed on disk.

Commands: convert.py, train.py, python -m mlx_models.parity, python -m mlx_models.export.fuse,
docs/probe_encoder.py and the library's load(). A case is (command, arguments, what the message must say); arguments may name
the fixtures below as {model}, {data}, {run}, {lora_run}, {tmp}, ... (see `paths`).
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

import mlx_models.hub
import train
from hf_fixtures import make_hf_model
from mlx_models import load
from mlx_models.cli import run_cli
from mlx_models.export import fuse
from mlx_models.parity import check as parity
from mlx_models.train.config import load_train_config
from mlx_models.train.trainer import run as train_run
from sentiment import sentiment_splits, write_splits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from convert import main as convert_main  # noqa: E402

sys.path.insert(0, str(ROOT / "docs"))
from probe_encoder import main as probe_main  # noqa: E402

COMMANDS = {
    "convert": convert_main,
    "train": train.main,
    "parity": parity.main,
    "fuse": fuse.main,
    "probe": probe_main,
    "load": lambda argv: load(*argv[:1], **dict(a.split("=", 1) for a in argv[1:])),
}
QUICK = ["--max-length", "32", "--batch-size", "8", "--max-steps", "2"]


@pytest.fixture(scope="module")
def world(tiny, tmp_path_factory):
    """Models, data and two finished runs (full finetuning, LoRA) that the cases point at."""
    root = tmp_path_factory.mktemp("catalogue")
    bert = tiny("bert", "classify", num_labels=2)[1]
    llama = tiny("llama", "classify", num_labels=2)[1]
    data = write_splits(root / "data", sentiment_splits())
    runs = {}
    for name, model, extra in (("run", bert, []), ("lora_run", llama, ["--lora"])):
        argv = ["--model", str(model), "--data-dir", str(data), "--out", str(root / name), *QUICK, *extra]
        train_run(load_train_config(argv))
        runs[name] = root / name
    hf = make_hf_model(root / "hf", "bert", "mlm")
    return {"model": bert, "llama": llama, "data": data, "hf": hf, "root": root, **runs}


def snapshot(*roots: Path) -> dict:
    return {
        p: (p.stat().st_size, p.stat().st_mtime_ns) for r in roots if r.exists() for p in sorted(r.rglob("*"))
    }


# ---- what a case may prepare in its own temp dir (tmp) before the command runs ----------------


def config_edit(**changes):
    def edit(world, tmp):
        hf = shutil.copytree(world["hf"], tmp / "hf")
        config = json.loads((hf / "config.json").read_text())
        for k, v in changes.items():
            if v is None:
                config.pop(k, None)
            else:
                config[k] = v
        (hf / "config.json").write_text(json.dumps(config))

    return edit


def write_file(name: str, content: bytes | str):
    def make(world, tmp):
        hf = shutil.copytree(world["hf"], tmp / "hf")
        path = hf / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return make


def data_with(extra: tuple[str, str] | None = None, **splits):
    """A data dir in tmp/data: the good splits with some replaced (a list of rows, or a
    (file name, raw text) pair), plus an ``extra`` raw file."""

    def make(world, tmp):
        good = sentiment_splits()
        d = write_splits(tmp / "data", {k: v for k, v in good.items() if k not in splits})
        for name, rows in [*splits.items(), *([("", extra)] if extra else [])]:
            if isinstance(rows, tuple):
                (d / rows[0]).write_text(rows[1], encoding="utf-8")
            else:
                (d / f"{name}.json").write_text(json.dumps(rows))

    return make


def latin1(name: str):
    """The good data with the train split as ``name`` in Latin-1, not UTF-8 ("Très bon" as 0xe8)."""

    def make(world, tmp):
        good = sentiment_splits()
        d = write_splits(tmp / "data", {k: v for k, v in good.items() if k != "train"})
        rows = [{"text": r["text"] + " Très", "label": r["label"]} for r in good["train"]]
        if name.endswith(".csv"):
            text = "text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows)
        else:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (d / name).write_bytes(text.encode("latin-1"))

    return make


def run_copy(name: str, edit):
    def make(world, tmp):
        run = shutil.copytree(world[name], tmp / "run")
        edit(run)

    return make


def nan_weight(world, tmp):
    mlx = shutil.copytree(world["model"], tmp / "mlx")
    w = load_file(mlx / "model.safetensors")
    w["bert.encoder.layer.0.output.dense.weight"][0, 0] = float("nan")
    save_file(w, mlx / "model.safetensors", metadata={"format": "mlx"})


GOOD = sentiment_splits()
LONG_TEXT = "word " * 700
C = ["{hf}", "--out", "{tmp}/out"]  # convert the tiny HF checkpoint
CT = ["{tmp}/hf", "--out", "{tmp}/out"]  # convert the case's edited copy of it
T = ["--model", "{model}", "--data-dir", "{data}", "--out", "{tmp}/r"]  # train on good data
TD = ["--model", "{model}", "--data-dir", "{tmp}/data", "--out", "{tmp}/r"]  # train on the case's data


def odd_sizes(world, tmp):
    make_hf_model(tmp / "hf", "bert", "base", hidden_size=48, intermediate_size=80)


def garbage_bin(world, tmp):
    hf = shutil.copytree(world["hf"], tmp / "hf", ignore=shutil.ignore_patterns("*.safetensors"))
    (hf / "pytorch_model.bin").write_bytes(b"not a pickle")


def no_checkpoints(run: Path):
    for name in ("best", "last"):
        shutil.rmtree(run / name)


# fmt: off
CASES = {
    # -- convert.py: options
    "convert q-group-size 7": ("convert", [*C, "-q", "--q-group-size", "7"], "invalid choice: 7"),
    "convert q-group-size 0": ("convert", [*C, "-q", "--q-group-size", "0"], "invalid choice: 0"),
    "convert q-group-size 48": ("convert", [*C, "-q", "--q-group-size", "48"], "invalid choice: 48"),
    "convert q-group-size text": ("convert", [*C, "--q-group-size", "big"], "invalid int value"),
    "convert q-bits 3": ("convert", [*C, "-q", "--q-bits", "3"], "invalid choice: 3"),
    "convert group fits no layer": ("convert", [odd_sizes, *CT, "-q", "--q-group-size", "32"], "nothing would be quantized"),
    "convert corrupt tokenizer.json": ("convert", [write_file("tokenizer.json", "{not json"), *CT], "the tokenizer of directory"),
    "convert group leaves layers out": ("convert", [*C, "-q", "--q-group-size", "128"], "does not divide the input size of 11 of 13 layers (bert.embeddings.word_embeddings: 64), which would stay in full precision; use --q-group-size 64"),
    "convert shard size nan": ("convert", [*C, "--max-shard-size", "nan"], "finite number > 0"),
    "convert shard size inf": ("convert", [*C, "--max-shard-size", "inf"], "finite number > 0"),
    "convert shard size -1": ("convert", [*C, "--max-shard-size", "-1"], "finite number > 0"),
    "convert dtype float64": ("convert", [*C, "--dtype", "float64"], "invalid choice: 'float64'"),
    "convert unknown flag": ("convert", [*C, "--quantise"], "unrecognized arguments: --quantise"),
    "convert no source": ("convert", [], "the following arguments are required: source"),
    "convert missing path": ("convert", ["./no/such/model", "--out", "{tmp}/out"], "no such file or directory"),
    "convert out under a file": ("convert", ["{hf}", "--out", "{tmp}/afile/out"], "cannot write"),
    "convert hub unreachable": ("convert", ["some-org/some-model", "--out", "{tmp}/out"], "hub is unreachable"),
    # -- convert.py: checkpoints
    "convert config not json": ("convert", [write_file("config.json", "{not json"), *CT], "is not valid JSON"),
    "convert config a list": ("convert", [write_file("config.json", "[1, 2]"), *CT], "holds a JSON list"),
    "convert config no hidden_size": ("convert", [config_edit(hidden_size=None), *CT], "lacks required keys hidden_size"),
    "convert config zero layers": ("convert", [config_edit(num_hidden_layers=0), *CT], "num_hidden_layers 0 (must be a positive"),
    "convert config heads": ("convert", [config_edit(num_attention_heads=5), *CT], "not divisible by 5 heads"),
    "convert config hidden_act": ("convert", [config_edit(hidden_act="swish2"), *CT], "hidden_act 'swish2'"),
    "convert config eps as a string": ("convert", [config_edit(layer_norm_eps="1e-12"), *CT], "layer_norm_eps '1e-12' (must be float)"),
    "convert config size as a float": ("convert", [config_edit(intermediate_size=128.5), *CT], "intermediate_size 128.5 (must be int)"),
    "convert config flag as a number": ("convert", [config_edit(tie_word_embeddings=1), *CT], "tie_word_embeddings 1 (must be bool)"),
    "convert config misspelt key": ("convert", [config_edit(num_hiden_layers=2, num_hidden_layers=None), *CT], "unknown key 'num_hiden_layers'"),
    "convert config misspelt optional key": ("convert", [config_edit(layer_norm_epz=1e-5, layer_norm_eps=None), *CT], "so layer_norm_eps would take its default; did you mean layer_norm_eps?"),
    "convert config model_type": ("convert", [config_edit(model_type="t5"), *CT], "unsupported model_type 't5'"),
    "convert garbage gguf": ("convert", [write_file("m.gguf", b"GGUF" + bytes(64)), "{tmp}/hf/m.gguf", "--out", "{tmp}/out"], "not a readable GGUF"),
    "convert garbage bin": ("convert", [garbage_bin, *CT], "could not be read safely"),
    # -- train.py: options
    "train lr inf": ("train", [*T, "--learning-rate", "inf"], "learning_rate must be a finite number"),
    "train lr nan": ("train", [*T, "--learning-rate", "nan"], "learning_rate must be a finite number"),
    "train lr negative": ("train", [*T, "learning_rate=-1"], "learning_rate must be > 0"),
    "train memory limit inf": ("train", [*T, "--memory-limit", "inf"], "memory_limit must be a finite number"),
    "train huge seed": ("train", [*T, "--seed", str(2**70)], "seed must be <= 4294967295"),
    "train batch size 0": ("train", [*T, "--batch-size", "0"], "batch_size must be >= 1"),
    "train batch size 2**64": ("train", [*T, "--batch-size", str(2**64)], "batch_size must be <= 2147483647"),
    "train max steps 1e30": ("train", [*T, "--max-steps", "1e30"], "max_steps must be <= 2147483647"),
    "train lora rank huge": ("train", [*T, "--lora", "--lora-rank", "100000"], "lora_rank must be <= 4096"),
    "train epochs 1.5": ("train", [*T, "--epochs", "1.5"], "epochs: expected an integer"),
    "train dropout 1": ("train", [*T, "--dropout", "1"], "dropout must be < 1"),
    "train lora dropout nan": ("train", [*T, "--lora-dropout", "nan"], "lora_dropout must be a finite number"),
    "train warmup 1": ("train", [*T, "--warmup-ratio", "1"], "warmup_ratio must be < 1"),
    "train quantize 3": ("train", [*T, "--lora", "--quantize", "3"], "quantize must be one of 4, 8"),
    "train quantize without lora": ("train", [*T, "--quantize", "4"], "quantize=4 needs lora=true"),
    "train dora from scratch": ("train", [*T, "--dora", "--from-scratch"], "--from-scratch trains every weight: drop --lora/--dora"),
    "train dora on tfidf": ("train", ["--model", "tfidf", "--data-dir", "{data}", "--dora"], "the tfidf baseline has no layers to adapt"),
    "train dora with a value": ("train", [*T, "--dora=1"], "--dora/--no-dora"),
    "train dora rank 0": ("train", [*T, "--dora", "--lora-rank", "0"], "lora_rank must be >= 1"),
    "train save points and save every": ("train", [*T, "--save-points", "3", "--save-every", "2"], "save_points sets save_every from the run's length; give only one of them"),
    "train save points 0": ("train", [*T, "--save-points", "0"], "save_points must be >= 1"),
    "train task foo": ("train", [*T, "--task", "foo"], "task must be one of classify, mlm, lm"),
    "train schedule step": ("train", [*T, "--lr-schedule", "step"], "lr_schedule must be one of"),
    "train padding middle": ("train", [*T, "padding_side=middle"], "padding_side must be one of"),
    "train unknown flag": ("train", ["--model", "{model}", "--learnin-rate", "1"], "did you mean learning_rate"),
    "train ranks 0": ("train", [*T, "--ranks", "0"], "--ranks '0': expected 1..64 processes on this machine"),
    "train ranks not a number": ("train", [*T, "--ranks=two"], "--ranks 'two': expected 1..64"),
    "train ranks without a value": ("train", [*T, "--ranks"], "--ranks '': expected 1..64"),
    "train report-to unknown": ("train", [*T, "--report-to", "mlflow"], "report_to: unknown 'mlflow'; allowed: none, all, tensorboard, wandb"),
    "train report-to none and a logger": ("train", [*T, "report_to=none,wandb"], "report_to: none and all stand alone"),
    "train not key=value": ("train", ["--model", "{model}", "roberta"], "is not key=value"),
    "train bool flag with value": ("train", ["--model", "{model}", "--lora=yes"], "--lora/--no-lora"),
    "train flag without value": ("train", ["--model", "{model}", "--epochs"], "expected one argument"),
    "train max length over positions": ("train", [*T, "--max-length", "100000"], "max_length 100000 is longer than the 64 positions"),
    "train unknown model": ("train", ["--model", "no-such-model", "--data-dir", "{data}"], "unknown model 'no-such-model'"),
    "train unknown dataset": ("train", ["--model", "{model}", "--dataset", "nope", "--out", "{tmp}/r"], "unknown dataset 'nope'"),
    "train missing data dir": ("train", ["--model", "{model}", "--data-dir", "{tmp}/none"], "is not a directory"),
    "train existing out": ("train", ["--model", "{model}", "--data-dir", "{data}", "--out", "{run}"], "already exists"),
    "train resume and eval-only": ("train", ["--resume", "{run}", "--eval-only", "{run}"], "cannot be combined"),
    "train resume not a run": ("train", ["--resume", "{tmp}"], "config.json not found"),
    "train resume changes lr": ("train", ["--resume", "{run}", "--learning-rate", "1"], "cannot change learning_rate"),
    "train resume corrupt config": ("train", [run_copy("run", lambda r: (r / "config.json").write_text("[]")), "--resume", "{tmp}/run"], "holds a JSON list"),
    "train eval-only, checkpoints gone": ("train", [run_copy("run", no_checkpoints), "--eval-only", "{tmp}/run"], "has no checkpoint"),
    "train eval-only, more labels than the head": (
        "train", [data_with(test=[*GOOD["test"], {"text": "Meh.", "label": 2}]), "--eval-only", "{run}", "--data-dir", "{tmp}/data"],
        "the data has 3 labels but the classifier"),
    "train tfidf on empty texts": (
        "train", [data_with(train=[{"text": "", "label": i % 2} for i in range(40)]), "--model", "tfidf", "--data-dir", "{tmp}/data", "--out", "{tmp}/r"],
        "cannot fit"),
    # -- train.py: data
    "data no text column": ("train", [data_with(train=[{"review": "a", "label": 0}] * 20), *TD], "no text column 'text'"),
    "data no label column": ("train", [data_with(validation=[{"text": "a"}] * 20), *TD], "no label column 'label'"),
    "data label out of range": ("train", [data_with(test=[*GOOD["test"], {"text": "x", "label": -1}]), *TD], "labels [-1] out of range"),
    "data label 0.5": ("train", [data_with(train=[*GOOD["train"], {"text": "x", "label": 0.5}]), *TD], "labels must be integers or names"),
    "data label '0.5' in csv": ("train", [data_with(train=("train.csv", "text,label\na,0\nb,0.5\nc,1\n" * 8)), *TD], "found ['0.5'"),
    "data empty split": ("train", [data_with(validation=[]), *TD], "has no examples"),
    "data missing text": ("train", [data_with(train=[*GOOD["train"], {"text": None, "label": 1}]), *TD], "without a text"),
    "data not json": ("train", [data_with(train=("train.json", "{oops")), *TD], "cannot read"),
    "data json scalars": ("train", [data_with(train=("train.json", "[1, 2, 3]")), *TD], "must hold strings"),
    "data two train files": ("train", [data_with(extra=("train.csv", "text,label\na,0\n")), *TD], "several train files"),
    "data not UTF-8 (jsonl)": ("train", [latin1("train.jsonl"), *TD], "is not UTF-8 text (byte "),
    "data not UTF-8 (json)": ("train", [latin1("train.json"), *TD], "is not UTF-8 text (byte "),
    "data not UTF-8 (csv)": ("train", [latin1("train.csv"), *TD], "is not UTF-8 text (byte "),
    "data mixed label kinds": ("train", [data_with(test=[{"text": "x", "label": "pos"}] * 4), *TD], "mix integers and names"),
    # -- parity
    "parity tol nan": ("parity", ["{model}", "--tol", "nan"], "finite number > 0"),
    "parity tol negative": ("parity", ["{model}", "--tol", "-1"], "finite number > 0"),
    "parity tol inf": ("parity", ["{model}", "--tol", "inf"], "finite number > 0"),
    "parity dtype": ("parity", ["{model}", "--dtype", "float64"], "invalid choice: 'float64'"),
    "parity task foo": ("parity", ["{model}", "--task", "foo"], "invalid choice: 'foo'"),
    "parity head of another family": ("parity", ["{model}", "--task", "lm"], "task 'lm' is not available for bert"),
    "parity missing path": ("parity", ["./no/such/dir"], "no such file or directory"),
    # -- fuse
    "fuse full run": ("fuse", ["{run}", "--out", "{tmp}/f"], "is a full finetuning run"),
    "fuse existing out": ("fuse", ["{lora_run}", "--out", "{tmp}"], "already exists; it was not written by mlx_models"),
    "fuse no out": ("fuse", ["{lora_run}"], "the following arguments are required: --out"),
    "fuse unknown checkpoint": ("fuse", ["{lora_run}", "--out", "{tmp}/f", "--checkpoint", "iter-999"], "is not a checkpoint"),
    "fuse not a run": ("fuse", ["{tmp}", "--out", "{tmp}/f"], "is not a checkpoint of a train.py run"),
    "fuse corrupt train config": (
        "fuse", [run_copy("lora_run", lambda r: (r / "best" / "train_config.json").write_text("{")), "{tmp}/run", "--out", "{tmp}/f"],
        "is not valid JSON"),
    # -- docs/probe_encoder.py
    "probe no checkpoint": ("probe", [], "the following arguments are required: checkpoint"),
    "probe missing path": ("probe", ["./no/such/dir"], "has no config.json"),
    "probe not a model dir": ("probe", ["{tmp}"], "has no config.json"),
    # -- load()
    "load unknown task": ("load", ["{model}", "task=segment"], "unknown task 'segment'"),
    "load missing path": ("load", ["./no/such/dir"], "no such file or directory"),
    "load unknown hub id": ("load", ["no-org/no-model"], "hub is unreachable"),
    "load config not json": ("load", [run_copy("run", lambda r: (r / "best" / "config.json").write_text("nope")), "{tmp}/run/best"], "is not valid JSON"),
}
# fmt: on


def paths(world: dict, tmp: Path) -> dict:
    return {k: str(v) for k, v in world.items() if isinstance(v, Path)} | {"tmp": str(tmp)}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(world, tmp_path, capsys, monkeypatch, case):
    command, args, message = CASES[case]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the hub probe itself must answer fast
    monkeypatch.setattr(mlx_models.hub, "reachable", lambda: False)
    (tmp_path / "afile").write_text("a file where a directory is expected")
    for step in [a for a in args if callable(a)]:
        step(world, tmp_path)
    argv = [a.format(**paths(world, tmp_path)) for a in args if not callable(a)]
    before = snapshot(tmp_path, world["root"], Path(world["model"]))
    capsys.readouterr()
    code = run_cli(COMMANDS[command], argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert out == ""
    assert snapshot(tmp_path, world["root"], Path(world["model"])) == before  # nothing written or changed


def test_catalogue_covers_every_command():
    assert len(CASES) >= 60
    assert {c for c, _, _ in CASES.values()} == set(COMMANDS)


def test_parity_fails_on_a_nan_weight(world, tmp_path, capsys):
    """A NaN can never pass a check: exit 1 and FAIL, not OK."""
    nan_weight(world, tmp_path)
    assert run_cli(parity.main, [str(tmp_path / "mlx"), "--task", "classify"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_load_refuses_an_input_longer_than_the_positions(world):
    model, tokenizer = load(world["model"])
    ids = tokenizer(LONG_TEXT)["input_ids"]
    assert len(ids) > model.args.max_positions
    import mlx.core as mx

    from mlx_models.errors import DataError

    positions = model.args.max_positions
    with pytest.raises(
        DataError, match=rf"of {len(ids)} tokens is longer than the model's {positions} positions"
    ):
        model(mx.array([ids]))


def test_a_diverging_run_stops_with_one_line_and_leaves_nothing(world, tmp_path, capsys):
    """A NaN in the weights makes the first loss NaN: the run stops, exit 2; no checkpoint was
    written, so no run directory is left either."""
    nan_weight(world, tmp_path)
    out = tmp_path / "run"
    argv = ["--model", str(tmp_path / "mlx"), "--data-dir", str(world["data"]), "--out", str(out), *QUICK]
    assert run_cli(train.main, argv) == 2
    out_text, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the training loss became nan at step 1: training diverged" in errors[0]
    assert "no checkpoint was written" in errors[0] and out_text == ""
    assert not out.exists()
