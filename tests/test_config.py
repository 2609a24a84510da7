"""Training config: precedence, key=value, casting, unknown keys, validation, resume."""

import dataclasses
import json
import textwrap

import pytest

from mlx_models.errors import ConfigError
from mlx_models.train.config import (
    TrainConfig,
    build_parser,
    load_train_config,
    resolve_model_alias,
    save_train_config,
)

YAML = """
models:
  m1:
    source: org/m1
    train: {batch_size: 4, learning_rate: 1e-3, max_length: 256}
  m2:
    source: org/m2
  tfidf:
    source: builtin:tfidf
default_run:
  model: m2
  profile: small
datasets:
  d1: {hub: org/d1, text: text, label: label, num_labels: 2}
  imdb: {hub: org/imdb}
profiles:
  p: {weight_decay: 0.0, batch_size: 2, dropout: 0.0}
  small: {dataset: d1, max_samples: 10, epochs: 2}
"""


@pytest.fixture
def cfg_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run dirs are relative; keep them out of the repo
    path = tmp_path / "config.yaml"
    path.write_text(YAML)
    return path


def load(argv, path):
    return load_train_config(argv, config_path=path)


def test_precedence_yaml_model_profile_cli(cfg_path):
    cfg = load(["--model", "m1", "--dataset", "d1", "--profile", "p", "epochs=5"], cfg_path)
    assert cfg.epochs == 5  # default 3 < CLI 5
    assert cfg.learning_rate == 1e-3  # default 2e-5 < model 1e-3 (YAML's `1e-3` is a string: cast)
    assert cfg.max_length == 256  # model block
    assert cfg.batch_size == 2  # default 8 < model 4 < profile 2
    assert cfg.weight_decay == 0.0  # default 0.01 < profile 0.0
    assert cfg.dropout == 0.0
    assert cfg.warmup_ratio == 0.06  # untouched dataclass default
    assert cfg.max_samples is None  # default_run (model and profile) only applies when no model is given
    assert load(["--model", "m1", "--profile", "p", "--batch-size", "3"], cfg_path).batch_size == 3


def test_default_run_applies_without_model(cfg_path):
    cfg = load([], cfg_path)
    assert (cfg.model, cfg.max_samples, cfg.epochs) == ("m2", 10, 2)
    assert load(["--seed", "1"], cfg_path).max_samples == 10
    assert load(["--max-samples", "3"], cfg_path).max_samples == 3
    assert load(["--model", "m2"], cfg_path).max_samples is None


def test_key_value_form_and_casting(cfg_path):
    cfg = load(
        [
            "model=m1",
            "learning-rate=3e-4",
            "lora_targets=q_proj, v_proj",
            "lora=true",
            "quantize=4",
            "dropout=none",
            "--max-grad-norm",
            "none",
            "memory_limit=12",
            "compile=false",
        ],
        cfg_path,
    )
    assert cfg.model == "m1" and cfg.learning_rate == pytest.approx(3e-4)
    assert isinstance(cfg.learning_rate, float)
    assert cfg.lora_targets == ["q_proj", "v_proj"]
    assert cfg.lora is True and cfg.quantize == 4 and cfg.compile is False
    assert cfg.dropout is None and cfg.max_grad_norm is None
    assert cfg.memory_limit == 12.0 and isinstance(cfg.memory_limit, float)
    assert load(["--lora", "--no-compile", "--epochs", "1e1"], cfg_path).epochs == 10


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["epochs=two"], "epochs"), (["batch_size=2.5"], "batch_size"), (["lora=maybe"], "lora")],
)
def test_bad_values_are_config_errors(cfg_path, argv, needle):
    with pytest.raises(ConfigError, match=needle):
        load(argv, cfg_path)


def test_unknown_key_on_command_line(cfg_path):
    with pytest.raises(ConfigError, match=r"'learnin_rate'.*did you mean learning_rate"):
        load(["learnin_rate=1"], cfg_path)
    with pytest.raises(ConfigError, match=r"--batchsize.*batch_size"):
        load(["--batchsize", "3"], cfg_path)
    with pytest.raises(ConfigError, match="not key=value"):
        load(["m1"], cfg_path)
    with pytest.raises(ConfigError, match="--lora/--no-lora.*flag=true"):
        load(["--lora=yes"], cfg_path)
    with pytest.raises(ConfigError, match="--epochs: expected one argument"):
        load(["--epochs"], cfg_path)
    with pytest.raises(ConfigError, match="given twice"):
        load(["--epochs", "2", "epochs=3"], cfg_path)


BASE = "models:\n  m1: {source: x}\ndatasets:\n  d1: {hub: x}\n"


@pytest.mark.parametrize(
    ("yaml_text", "where"),
    [
        (
            "models:\n  m1:\n    source: x\n    train: {lerning_rate: 1}\ndatasets:\n  d1: {hub: x}\n",
            "models.m1.train",
        ),
        (BASE + "profiles:\n  p: {dropuot: 0.0}\n", "profiles.p"),
        (BASE + "default_run:\n  modle: m1\n", "default_run:"),
    ],
)
def test_unknown_key_in_yaml(tmp_path, yaml_text, where):
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    argv = ["--dataset", "d1"] + (["--profile", "p"] if "profiles" in yaml_text else [])
    argv += [] if "default_run" in yaml_text else ["--model", "m1"]
    with pytest.raises(ConfigError, match=f"unknown training key .* in .*{where}"):
        load(argv, path)


def test_unknown_yaml_section_and_dataset_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match="trian"):
        load([], path)
    path.write_text(BASE + "train:\n  epochs: 3\n")  # the global train: layer is gone: profiles do that
    with pytest.raises(ConfigError, match=r"unknown section\(s\) train in .*allowed: models, datasets"):
        load(["--model", "m1", "--dataset", "d1"], path)
    path.write_text("models:\n  m1: {source: x}\ndatasets:\n  d1: {hub: x, colum: y}\n")
    with pytest.raises(ConfigError, match="colum"):
        load(["--model", "m1", "--dataset", "d1"], path)


def test_unknown_model_and_dataset_list_the_known_ones(cfg_path, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*m1, m2, tfidf"):
        load(["--model", "nope"], cfg_path)
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'.*registered: d1"):
        load(["--model", "m1", "--dataset", "nope"], cfg_path)
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load(["--model", "m1", "--dataset", "d1", "--profile", "nope"], cfg_path)


def test_model_paths_and_data_dir(cfg_path, tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    gguf = tmp_path / "small.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = load(["--model", str(model_dir), "--dataset", "d1"], cfg_path)
    assert cfg.model == str(model_dir) and "/my-model-d1-" in cfg.out
    assert resolve_model_alias(str(gguf), cfg_path)["name"] == "small"
    data = tmp_path / "data"
    data.mkdir()
    cfg = load(["--model", "m1", "--data-dir", str(data)], cfg_path)
    assert cfg.dataset == "local" and cfg.data_dir == str(data)
    with pytest.raises(ConfigError, match="not a directory"):
        load(["--model", "m1", "--data-dir", str(tmp_path / "missing")], cfg_path)


def test_the_learning_rate_follows_the_method_unless_given(cfg_path, tmp_path):
    """No layer sets it: 2e-5 for full finetuning, 1e-4 for LoRA and QLoRA, for an alias or a path;
    a model's train block, a profile or the command line wins; the resolved rate is saved."""
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    for model in ("m2", str(model_dir)):
        assert load(["--model", model], cfg_path).learning_rate == 2e-5
        assert load(["--model", model, "--lora"], cfg_path).learning_rate == 1e-4
        assert load(["--model", model, "--lora", "--quantize", "4"], cfg_path).learning_rate == 1e-4
        assert load(["--model", model, "--lora", "--learning-rate", "3e-4"], cfg_path).learning_rate == 3e-4
        assert load(["--model", model, "--lora", "learning_rate=none"], cfg_path).learning_rate == 1e-4
    assert load(["--model", "m1", "--lora"], cfg_path).learning_rate == 1e-3  # its train block's
    assert TrainConfig(adapter="some/adapter").learning_rate == 1e-4  # an imported adapter: LoRA
    cfg = load(["--model", "m2", "--lora", "--out", str(tmp_path / "run")], cfg_path)
    save_train_config(cfg, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["learning_rate"] == 1e-4


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "key=value" in text


def test_validation_collects_every_problem():
    with pytest.raises(ConfigError) as err:
        TrainConfig(batch_size=0, learning_rate=-1, task="x", lora_rank=0, quantize=3, lr_schedule="step")
    msg = str(err.value)
    for needle in ("batch_size", "learning_rate", "task", "lora_rank", "quantize", "lr_schedule"):
        assert needle in msg, needle
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="quantize=4 needs lora=true"):
        TrainConfig(quantize=4)
    with pytest.raises(ConfigError, match="tfidf"):
        TrainConfig(model="tfidf", task="mlm")


def test_existing_out_resume_and_eval_only(cfg_path, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        load(["--model", "m1", "--dataset", "d1", "--out", str(run)], cfg_path)
    with pytest.raises(ConfigError, match="config.json not found"):
        load(["--resume", str(run)], cfg_path)
    save_train_config(
        TrainConfig(model="m1", dataset="d1", learning_rate=5e-5, out=str(run)), run / "config.json"
    )
    cfg = load(["--resume", str(run), "--max-steps", "7"], cfg_path)
    assert (cfg.resume, cfg.out, cfg.max_steps, cfg.learning_rate) == (str(run), str(run), 7, 5e-5)
    with pytest.raises(ConfigError, match=r"cannot change learning_rate"):
        load(["--resume", str(run), "learning_rate=1"], cfg_path)
    cfg = load(["--eval-only", str(run), "--batch-size", "32"], cfg_path)
    assert (cfg.eval_only, cfg.resume, cfg.batch_size) == (str(run), None, 32)


def test_json_round_trip_and_unknown_key(tmp_path):
    cfg = TrainConfig(model="m1", lora=True, quantize=8, lora_targets=["q_proj"], dropout=0.0)
    save_train_config(cfg, tmp_path / "config.json")
    assert TrainConfig.from_json(tmp_path / "config.json") == cfg
    data = json.loads((tmp_path / "config.json").read_text()) | {"bogus": 1}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_json(tmp_path / "bad.json")


def test_shipped_config_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config([])
    assert (cfg.model, cfg.dataset, cfg.max_length) == ("minilm-l6", "imdb", 128)
    assert cfg.max_samples and cfg.out.startswith("results/models/minilm-l6-imdb-")
    llama = load_train_config(["--model", "llama-2-7b"])
    assert (llama.batch_size, llama.grad_accum, llama.quantize, llama.lora) == (2, 8, 4, True)
    assert llama.grad_checkpoint and llama.learning_rate == 2e-4 and llama.max_samples is None
    roberta = load_train_config(textwrap.dedent("model=roberta-base dataset=ag_news").split())
    assert (roberta.batch_size, roberta.learning_rate, roberta.max_length) == (8, 2e-5, 512)
    overfit = load_train_config(["--model", "bert-base-uncased", "--profile", "overfit"])
    assert overfit.dropout == 0.0 and overfit.weight_decay == 0.0 and overfit.epochs > 3
    assert resolve_model_alias("tfidf")["source"] == "builtin:tfidf"
