"""train.py --adapter DIR: a LoRA adapter trained elsewhere (transformers + PEFT, or mlx-lm) becomes
the start of a run, evaluated as it is (--max-steps 0) or trained on; our logits equal the library's.
Adapters that do not fit are one-line errors, and nothing is written."""

import json

import mlx.core as mx
import numpy as np
import peft
import pytest
import torch
import transformers
from mlx.utils import tree_flatten

import train
from hf_fixtures import SENTENCES, padded_batch
from mlx_models.cli import run_cli
from mlx_models.parity.reference import HF_AUTO_CLASSES, torch_forward
from mlx_models.train import trainer
from mlx_models.train.config import load_train_config
from mlx_models.train.trained import load_trained
from sentiment import CORPUS, sentiment_splits, write_splits

LABELS = [1, 0, 1, 0]  # for SENTENCES


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    text = {"train": CORPUS[:16], "validation": CORPUS[16:24], "test": CORPUS[24:32]}
    text = {k: [{"text": t} for t in v] for k, v in text.items()}
    return {
        "classify": write_splits(root / "sentiment", sentiment_splits()),
        "lm": write_splits(root / "text", text),
    }


def train_peft(hf_dir, task: str, out, steps: int = 3, **lora) -> tuple:
    """A PEFT LoRA adapter trained ``steps`` AdamW steps with transformers; (dir, PeftModel)."""
    base = getattr(transformers, HF_AUTO_CLASSES[task]).from_pretrained(hf_dir, attn_implementation="eager")
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    task_type = {"classify": "SEQ_CLS", "lm": "CAUSAL_LM"}[task]
    model = peft.get_peft_model(base, peft.LoraConfig(task_type=task_type, **lora))
    batch = {k: torch.from_numpy(v.astype(np.int64)) for k, v in padded_batch(tok, SENTENCES).items()}
    labels = (
        torch.tensor(LABELS)
        if task == "classify"
        else batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out, model.eval()


def import_run(mlx_dir, adapter, data, out, task: str, *extra: str) -> dict:
    argv = ["--model", str(mlx_dir), "--adapter", str(adapter), "--task", task, "--out", str(out)]
    argv += ["--data-dir", str(data[task]), "--max-length", "32", "--batch-size", "8", *extra]
    return trainer.run(load_train_config(argv))


def assert_same_logits(run_dir, reference, task: str) -> None:
    t = load_trained(run_dir)
    batch = padded_batch(t.tokenizer, SENTENCES)
    ours = np.array(t.model(mx.array(batch["input_ids"]), attention_mask=mx.array(batch["attention_mask"])))
    theirs = torch_forward(reference, batch["input_ids"], batch["attention_mask"], task)
    if task != "classify":
        real = batch["attention_mask"].astype(bool)
        ours, theirs = ours[real], theirs[real]
    d = np.abs(ours - theirs).max()
    assert d <= 1e-4 * max(1.0, np.abs(theirs).max()), f"max|Δ| {d:.2e}"


CASES = {
    # PEFT's "output.dense" wraps BERT's attention output *and* its FFN output: both come over
    "bert-classify": ("bert", "classify", {"target_modules": ["query", "value", "output.dense"]}),
    "llama-classify": ("llama", "classify", {"target_modules": ["q_proj", "v_proj"]}),
    "llama-lm-rslora": ("llama", "lm", {"target_modules": ["q_proj", "down_proj"], "use_rslora": True}),
    "bert-classify-dora": ("bert", "classify", {"target_modules": ["query", "value"], "use_dora": True}),
    "llama-lm-dora": ("llama", "lm", {"target_modules": ["q_proj", "down_proj"], "use_dora": True}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_peft_adapter_trained_with_transformers_gives_the_same_logits(tiny, data, tmp_path, name):
    model_type, task, targets = CASES[name]
    hf_dir, mlx_dir = tiny(model_type, task, **({"num_labels": 2} if task == "classify" else {}))
    adapter, reference = train_peft(
        hf_dir, task, tmp_path / "adapter", r=4, lora_alpha=8, lora_dropout=0.1, **targets
    )
    record = import_run(mlx_dir, adapter, data, tmp_path / "run", task, "--max-steps", "0")
    assert record["split"] == "test" and record["step"] == 0 and record["checkpoint"] == "last"
    assert_same_logits(tmp_path / "run", reference, task)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    scale = 8 / 2 if "rslora" in name else 8 / 4  # rsLoRA: alpha / sqrt(r)
    assert (saved["lora"], saved["lora_rank"], saved["lora_alpha"] / 4, saved["lora_dropout"]) == (
        True,
        4,
        scale,
        0.1,
    )
    assert saved["dora"] == name.endswith("dora")
    wrapped = {
        k.rsplit(".", 1)[0]
        for k in mx.load(str(tmp_path / "run" / "last" / "adapters.safetensors"))
        if "lora_" in k
    }
    expect = {"bert-classify": 8, "llama-classify": 4, "llama-lm-rslora": 4, "bert-classify-dora": 4}
    assert len(wrapped) == expect.get(name, 4)


def test_minilm_peft_adapter_imports(minilm, minilm_hf, data, tmp_path):
    """The real all-MiniLM-L6-v2 with a PEFT classifier adapter (new head saved as modules_to_save)."""
    transformers.set_seed(0)
    adapter, reference = train_peft(
        minilm_hf,
        "classify",
        tmp_path / "adapter",
        r=8,
        lora_alpha=16,
        target_modules=["query", "key", "value"],
    )
    import_run(minilm, adapter, data, tmp_path / "run", "classify", "--max-steps", "0")
    assert_same_logits(tmp_path / "run", reference, "classify")


def test_imported_adapter_trains_on(tiny, data, tmp_path):
    hf_dir, mlx_dir = tiny("llama", "classify", num_labels=2)
    adapter, _ = train_peft(
        hf_dir, "classify", tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
    )
    import_run(
        mlx_dir, adapter, data, tmp_path / "run", "classify", "--max-steps", "3", "--learning-rate", "1e-2"
    )
    start = {
        k.replace(".lora_A.weight", ".lora_a"): v
        for k, v in peft.utils.load_peft_weights(str(adapter)).items()
    }
    after = mx.load(str(tmp_path / "run" / "last" / "adapters.safetensors"))
    key = "model.layers.0.self_attn.q_proj.lora_a"
    assert json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())["step"] == 3
    assert np.abs(np.array(after[key]) - start["base_model.model." + key].numpy().T).max() > 1e-4  # trained


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_mlx_lm_adapter_imports(tiny, data, tmp_path, kind):
    """An adapter laid out by mlx-lm's own tuner (linear_to_lora_layers on mlx_lm.load's model)."""
    import mlx_lm
    from mlx_lm.tuner.utils import linear_to_lora_layers

    _, mlx_dir = tiny("llama", "lm")
    model, _ = mlx_lm.load(str(mlx_dir))
    params = {"rank": 4, "scale": 3.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "mlp.up_proj"]}
    model.freeze()
    linear_to_lora_layers(model, 1, params, use_dora=kind == "dora")  # the last layer only
    mx.random.seed(0)
    lora = {k: 0.1 * mx.random.normal(v.shape) for k, v in tree_flatten(model.trainable_parameters())}
    model.load_weights(list(lora.items()), strict=False)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    mx.save_safetensors(str(adapter / "adapters.safetensors"), lora)
    config = {"fine_tune_type": kind, "num_layers": 1, "lora_parameters": params}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    import_run(mlx_dir, adapter, data, tmp_path / "run", "lm", "--max-steps", "0")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dora"] == (kind == "dora")
    t = load_trained(tmp_path / "run")
    ids = mx.array([[1, 40, 90, 7, 300, 12]])
    np.testing.assert_allclose(np.array(t.model(ids)), np.array(model(ids)), atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lora_targets"] == [
        "model.layers.1.mlp.up_proj",
        "model.layers.1.self_attn.q_proj",
    ]


# --- adapters that do not fit: one line, exit 2, no run directory ---------------------------------


def write_peft(directory, config: dict, weights: dict) -> None:
    directory.mkdir()
    base = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "task_type": "CAUSAL_LM",
    }
    (directory / "adapter_config.json").write_text(json.dumps(base | config))
    mx.save_safetensors(str(directory / "adapter_model.safetensors"), weights, metadata={"format": "pt"})


Q = "base_model.model.model.layers.0.self_attn.q_proj"
GOOD = {f"{Q}.lora_A.weight": mx.zeros((4, 64)), f"{Q}.lora_B.weight": mx.zeros((64, 4))}
BAD_ADAPTERS = {
    "dora without magnitudes": ({"use_dora": True}, GOOD, "missing lora_A, lora_B or lora_magnitude_vector"),
    "dora magnitude of another base": (
        {"use_dora": True},
        GOOD | {f"{Q}.lora_magnitude_vector": mx.ones((32,))},
        "q_proj DoRA magnitude shape [32], the model needs [64]",
    ),
    "use_dora a string": ({"use_dora": "yes"}, GOOD, "use_dora 'yes' (must be a boolean)"),
    "rank pattern": ({"rank_pattern": {"q_proj": 8}}, GOOD, "per-module rank_pattern/alpha_pattern"),
    "prefix tuning": (
        {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4},
        GOOD,
        "is a PREFIX_TUNING adapter",
    ),
    "another base": (
        {},
        {f"{Q}.lora_A.weight": mx.zeros((4, 32)), f"{Q}.lora_B.weight": mx.zeros((32, 4))},
        "model.layers.0.self_attn.q_proj LoRA shapes [32, 4] x [4, 32], the model needs [64, 4] x [4, 64]",
    ),
    "unknown target": (
        {},
        {
            "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight": mx.zeros((4, 64)),
            "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight": mx.zeros((64, 4)),
        },
        "is not a linear layer of the LlamaForCausalLM base model",
    ),
    "lora_A only": ({}, {f"{Q}.lora_A.weight": mx.zeros((4, 64))}, "missing lora_A or lora_B"),
    "rank 0": ({"r": 0}, GOOD, "r 0 (must be a positive integer)"),
    "rank as a string": ({"r": "4"}, GOOD, "r '4' (must be a positive integer)"),
    "alpha as a string": ({"lora_alpha": "8"}, GOOD, "lora_alpha '8' (must be a finite number)"),
    "dropout 2": ({"lora_dropout": 2}, GOOD, "lora_dropout 2 (must be a number in [0, 1))"),
    "targets a number": ({"target_modules": 5}, GOOD, "target_modules 5 (must be a list of module names)"),
    "misspelt key": ({"lora_alpah": 16}, GOOD, "unknown key 'lora_alpah'; did you mean lora_alpha?"),
    "a newer peft's setting": ({"spectral_init": {"iters": 3}}, GOOD, "has no such LoRA setting"),
}
MLX_LM_GOOD = {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}
BAD_MLX_LM = {
    "rank 0": ({"rank": 0}, "lora_parameters.rank 0 (must be a positive integer)"),
    "scale as a string": ({"scale": "2"}, "lora_parameters.scale '2' (must be a finite number)"),
    "dropout 1": ({"dropout": 1}, "lora_parameters.dropout 1 (must be a number in [0, 1))"),
    "misspelt key": ({"dropuot": 0.1}, "unknown key lora_parameters.dropuot; did you mean dropout?"),
    "no rank": ({"rank": None}, "no lora_parameters with rank and scale"),
}


def bad_import(tiny, data, tmp_path, capsys, adapter) -> str:
    _, mlx_dir = tiny("llama", "lm")
    out = tmp_path / "run"
    argv = ["--model", str(mlx_dir), "--adapter", str(adapter), "--task", "lm", "--data-dir", str(data["lm"])]
    capsys.readouterr()
    assert run_cli(train.main, [*argv, "--out", str(out), "--max-steps", "0"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and captured.out == "", captured
    assert not out.exists()
    return err[-1]


@pytest.mark.parametrize("case", list(BAD_ADAPTERS))
def test_adapter_that_does_not_fit_is_refused(tiny, data, tmp_path, capsys, case):
    config, weights, message = BAD_ADAPTERS[case]
    write_peft(tmp_path / "adapter", config, weights)
    assert message in bad_import(tiny, data, tmp_path, capsys, tmp_path / "adapter")


@pytest.mark.parametrize("case", list(BAD_MLX_LM))
def test_mlx_lm_adapter_config_that_does_not_fit_is_refused(tiny, data, tmp_path, capsys, case):
    edit, message = BAD_MLX_LM[case]
    adapter = tmp_path / "mlx-lm"
    adapter.mkdir()
    weights = {"model.layers.0.self_attn.q_proj.lora_a": mx.zeros((64, 4))}
    weights["model.layers.0.self_attn.q_proj.lora_b"] = mx.zeros((4, 64))
    mx.save_safetensors(str(adapter / "adapters.safetensors"), weights)
    parameters = {k: v for k, v in (MLX_LM_GOOD | edit).items() if v is not None}
    config = {"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": parameters, "iters": 10}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert message in bad_import(tiny, data, tmp_path, capsys, adapter)


def test_corrupt_or_missing_adapter_files_are_refused(tiny, data, tmp_path, capsys):
    write_peft(tmp_path / "adapter", {}, GOOD)
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert "unreadable adapter weights" in bad_import(tiny, data, tmp_path, capsys, tmp_path / "adapter")
    (tmp_path / "empty").mkdir()
    assert "is not a LoRA adapter directory" in bad_import(tiny, data, tmp_path, capsys, tmp_path / "empty")
    for kind, message in [
        ("full", "holds a 'full' fine-tune; only LoRA and DoRA adapters import"),
        ("dora", "not DORA weights: no x.lora_b, no x.m"),
    ]:
        mlx_lm = tmp_path / f"mlx-lm-{kind}"
        mlx_lm.mkdir()
        mx.save_safetensors(str(mlx_lm / "adapters.safetensors"), {"x.lora_a": mx.zeros((2, 2))})
        config = {"fine_tune_type": kind, "num_layers": 2, "lora_parameters": {"rank": 2, "scale": 1.0}}
        (mlx_lm / "adapter_config.json").write_text(json.dumps(config))
        assert message in bad_import(tiny, data, tmp_path, capsys, mlx_lm)
