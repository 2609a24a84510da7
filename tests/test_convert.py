"""convert.py: layouts, sharding, quantization, caching, and every kind of bad input."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import mlx_models
import mlx_models.hub
from hf_fixtures import make_hf_model
from mlx_models import kernels, load, load_model
from mlx_models.cli import run_cli
from mlx_models.interop.conversion import convert
from mlx_models.interop.weights import read_weights
from mlx_models.models import MODULES
from mlx_models.models.quant import QuantizedLinear

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from convert import main as convert_main  # noqa: E402


def test_roberta_base_shape_shards_and_reloads_bit_exact(tmp_path):
    config = transformers.RobertaConfig(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.RobertaForMaskedLM(config)
    hf = tmp_path / "hf"
    model.save_pretrained(hf, safe_serialization=True)
    from hf_fixtures import make_tokenizer

    make_tokenizer("roberta", hf)
    mx.reset_peak_memory()
    out = convert(str(hf), tmp_path / "mlx", max_shard_bytes=100 * 1024**2, progress=False)
    # Streaming: MLX never holds much more than one shard of the 500 MB model.
    assert mx.get_peak_memory() < 300 * 1024**2, mx.get_peak_memory()
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 5
    assert all(f.stat().st_size <= 100 * 1024**2 + 160 * 1024**2 for f in shards)  # one tensor may overflow
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    theirs = load_file(hf / "model.safetensors")
    ours = read_weights(out)
    assert set(ours) == set(theirs) - {"lm_head.decoder.weight", "lm_head.decoder.bias"}
    for k, v in ours.items():
        np.testing.assert_array_equal(np.array(v), theirs[k].numpy(), err_msg=k)
    m = load_model(out)  # and it loads as a model
    assert m(mx.array([[0, 100, 200, 2]])).shape == (1, 4, 50265)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pytorch_bin_checkpoint(tmp_path, zip_format):
    """Both torch.save formats: the zip one (torch >= 1.6) and the legacy one, still weights_only."""
    hf = make_hf_model(tmp_path / "st", "bert", "classify")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(hf)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    for f in [*hf.glob("*token*"), hf / "config.json"]:
        (bin_dir / f.name).write_bytes(f.read_bytes())
    assert (bin_dir / "pytorch_model.bin").exists()
    a = read_weights(convert(str(hf), tmp_path / "a", progress=False))
    b = read_weights(convert(str(bin_dir), tmp_path / "b", progress=False))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.array(a[k]), np.array(b[k]))


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_checkpoint_reloads(tmp_path, bits):
    hf = make_hf_model(tmp_path / "hf", "llama", "classify")
    out = tmp_path / "q"
    assert convert_main([str(hf), "--out", str(out), "-q", "--q-bits", str(bits)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": bits, "mode": "affine"}
    weights = read_weights(out)
    assert weights["model.layers.0.mlp.up_proj.weight"].dtype == mx.uint32
    assert "score.scales" not in weights  # the head stays in full precision
    model = load_model(out)
    assert isinstance(model.model.layers[0].mlp.up_proj, QuantizedLinear)
    assert model(mx.array([[1, 2, 3]])).shape == (1, 3)


def test_cpu_dequantize_path_equals_fused_kernel():
    lin = nn.Linear(128, 96)
    ours, native = QuantizedLinear.from_linear(lin, 64, 4), nn.QuantizedLinear.from_linear(lin, 64, 4)
    ours.bias = native.bias = mx.random.normal((96,))
    x = mx.random.normal((3, 7, 128))
    np.testing.assert_allclose(np.array(ours(x)), np.array(native(x)), atol=1e-4)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16])
@pytest.mark.parametrize("shape", [(128, 96), (4096, 4200)])  # one block; several (69 MB in float32)
def test_cpu_dequantize_kernel_equals_mlx_dequantize(dtype, shape, monkeypatch):
    """The CPU path's product by our kernel (where built: the weight dequantized block by block inside
    the product, forward and backward) and by mx.dequantize and a matmul: the same output and input
    gradient, to the bit, with float32 and float16 scales, eager and compiled."""
    if kernels.native is None:
        pytest.skip("mlx_models/kernels is not built (make kernels)")
    (d_in, d_out), x = shape, mx.random.normal((3, 7, shape[0]))
    layer = QuantizedLinear.from_linear(nn.Linear(d_in, d_out), 64, 4)
    layer.scales, layer.biases = layer.scales.astype(dtype), layer.biases.astype(dtype)
    step = mx.value_and_grad(lambda x: (layer(x) * mx.cos(x[..., :1])).sum())
    calls, matmul = [], kernels.native.dequantized_matmul
    monkeypatch.setattr(kernels.native, "dequantized_matmul", lambda *a: calls.append(a[-1]) or matmul(*a))
    ours, compiled = step(x), mx.compile(step)(x)
    assert calls == [True, False] * 2  # the forward product, its vjp's; eager, then traced by compile
    monkeypatch.setattr(kernels, "native", None)
    for a, b, c in zip(ours, step(x), compiled, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
        np.testing.assert_array_equal(np.array(c), np.array(b))


def test_load_converts_hf_dir_once_into_cache(tmp_path, capsys):
    hf = make_hf_model(tmp_path / "hf", "roberta", "classify")
    model, tok = load(hf)
    assert "converting" in capsys.readouterr().err
    cached = [p for p in Path(os.environ["MLX_MODELS_CACHE"]).iterdir() if (p / "config.json").exists()]
    assert cached
    load(hf)
    assert "converting" not in capsys.readouterr().err  # second use reads the cache
    assert model(mx.array(tok(["good film"])["input_ids"])).shape == (1, 3)
    # New weights at the same path: converted again, not the old cached conversion.
    rewrite_weights(hf, lambda t: t.update({k: v + 1.0 for k, v in t.items() if v.is_floating_point()}))
    again, _ = load(hf)
    assert "changed since its cached conversion" in capsys.readouterr().err
    ids = mx.array(tok(["good film"])["input_ids"])
    assert not np.allclose(np.array(model(ids)), np.array(again(ids)))
    now = [p for p in Path(os.environ["MLX_MODELS_CACHE"]).iterdir() if (p / "config.json").exists()]
    assert sorted(now) == sorted(cached)  # replaced in place, not one more copy per change


def test_force_replaces_existing_output(tmp_path, capsys):
    hf = make_hf_model(tmp_path / "hf", "bert", "base")
    out = tmp_path / "out"
    assert convert_main([str(hf), "--out", str(out)]) == 0
    (out / "stale.txt").write_text("old")  # an earlier output of convert: --force replaces it
    assert convert_main([str(hf), "--out", str(out), "--force"]) == 0
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    file_out = tmp_path / "a-file"
    file_out.write_text("in the way")  # a file is no output of ours: --force refuses it (tests/test_force.py)
    assert run_cli(convert_main, [str(hf), "--out", str(file_out), "--force"]) == 2
    assert "not written by mlx_models" in capsys.readouterr().err
    assert file_out.read_text() == "in the way"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "hf", "out"]


# --- bad input: one line, exit code 2, nothing left behind ---------------------------------


@pytest.fixture
def hf_bert(tmp_path):
    return make_hf_model(tmp_path / "hf", "bert", "mlm")


def rewrite_weights(hf: Path, edit) -> None:
    w = load_file(hf / "model.safetensors")
    edit(w)
    save_file(w, hf / "model.safetensors", metadata={"format": "pt"})


def corrupt_model_type(hf):
    c = json.loads((hf / "config.json").read_text())
    c["model_type"] = "gpt2"
    (hf / "config.json").write_text(json.dumps(c))


def truncate(hf):
    f = hf / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def wrong_shape(hf):
    k = "bert.encoder.layer.0.attention.self.query.weight"
    rewrite_weights(hf, lambda w: w.__setitem__(k, w[k][:, :32].contiguous()))


def missing_weight(hf):
    rewrite_weights(hf, lambda w: w.pop("bert.encoder.layer.1.output.dense.weight"))


BAD = {
    "unsupported model_type": (
        corrupt_model_type,
        f"unsupported model_type 'gpt2'; supported: {', '.join(sorted(MODULES))}",  # every family file
    ),
    "no config.json": (lambda hf: (hf / "config.json").unlink(), "has no config.json"),
    "truncated safetensors": (truncate, "corrupt or truncated"),
    "wrong shape": (wrong_shape, "query.weight has shape [64, 32], the config implies [64, 64]"),
    "missing weight": (missing_weight, "missing weights bert.encoder.layer.1.output.dense.weight"),
}


def assert_clean_failure(code, err, out: Path, expect: str):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temp dirs


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint(hf_bert, tmp_path, capsys, case):
    break_it, expect = BAD[case]
    break_it(hf_bert)
    out = tmp_path / "out"
    code = run_cli(convert_main, [str(hf_bert), "--out", str(out)])
    assert_clean_failure(code, capsys.readouterr().err, out, expect)


def test_existing_output_dir(hf_bert, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_cli(convert_main, [str(hf_bert), "--out", str(out)]) == 2
    assert "already exists; it was not written by mlx_models" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_missing_path(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(convert_main, ["./no/such/model", "--out", str(out)])
    assert_clean_failure(code, capsys.readouterr().err, out, "no such file or directory")


def convert_hub_id(out: Path, env: dict) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, asked for a hub id."""
    cmd = [sys.executable, str(ROOT / "convert.py"), "some-org/some-model", "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_unreachable_hub_cli(tmp_path):
    """Exit code 2 and one line on stderr."""
    out = tmp_path / "out"
    r = convert_hub_id(out, {**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_clean_failure(r.returncode, r.stderr, out, "hub is unreachable")


def test_network_down_without_offline_mode_is_one_quick_line(tmp_path):
    """HF_HUB_OFFLINE unset and the hub unreachable (a closed local port): the probe answers at
    once, where the hub client would retry for ~25 s and end in a traceback."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {
        "HF_ENDPOINT": "http://127.0.0.1:9"
    }
    tic = time.monotonic()
    r = convert_hub_id(out, env)
    assert_clean_failure(r.returncode, r.stderr, out, "hub is unreachable (127.0.0.1)")
    assert "HF_HUB_OFFLINE=1" in r.stderr and time.monotonic() - tic < 25


@pytest.mark.parametrize(
    "error,expect",
    [
        ("GatedRepoError", "gated repo: accept its license"),
        ("RepositoryNotFoundError", "was not found on the"),
    ],
)
def test_gated_or_missing_hub_repo(tmp_path, capsys, monkeypatch, error, expect):
    """What the hub answers for a gated or unknown repo becomes a one-line message."""
    import httpx2
    import huggingface_hub
    from huggingface_hub import errors

    def refuse(repo_id, **kwargs):
        request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        raise getattr(errors, error)(f"{error} for {repo_id}", response=httpx2.Response(401, request=request))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(mlx_models.hub, "reachable", lambda: True)  # the fake hub answers
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setattr(huggingface_hub, "list_repo_files", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    out = tmp_path / "out"
    code = run_cli(convert_main, ["meta-llama/Llama-2-7b-hf", "--out", str(out)])
    err = capsys.readouterr().err
    assert_clean_failure(code, err, out, expect)
    assert "hf_secret_value" not in err  # a token is never printed


def test_convert_check_runs_the_parity_report(tmp_path, capsys):
    hf = make_hf_model(tmp_path / "hf", "llama", "lm")
    assert convert_main([str(hf), "--out", str(tmp_path / "mlx"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "lm" in out and "left" in out and "OK: bound" in out


def test_classifier_for_another_label_set_is_initialised_anew(tiny, capsys):
    """As transformers' ignore_mismatched_sizes: a 3-label head on 2-label data is replaced."""
    _, mlx_dir = tiny("roberta", "classify")
    three = load_model(mlx_dir)
    two = load_model(mlx_dir, "classify", config_overrides={"num_labels": 2})
    assert "newly initialised classifier.out_proj.bias, classifier.out_proj.weight" in capsys.readouterr().err
    assert two.classifier.out_proj.weight.shape == (2, 64)
    same = (
        two.roberta.encoder.layer[1].output.dense.weight,
        three.roberta.encoder.layer[1].output.dense.weight,
    )
    np.testing.assert_array_equal(np.array(same[0]), np.array(same[1]))  # the encoder is kept


def test_second_copy_of_the_weights_is_not_read(tmp_path, capsys):
    """Some repos keep their weights twice (Mistral's consolidated.safetensors in its own names):
    only model*.safetensors (or what the index names) is read."""
    from safetensors.numpy import save_file

    hf = make_hf_model(tmp_path / "hf", "bert", "base")
    save_file({"layers.0.attention.wq.weight": np.zeros((4, 4), np.float32)}, hf / "consolidated.safetensors")
    assert convert_main([str(hf), "--out", str(tmp_path / "out")]) == 0
    assert "unknown weights" not in capsys.readouterr().err


def test_config_values_of_the_wrong_type_or_range_are_named_together():
    """Every config.json value is checked against its field before it is used (one error)."""
    from mlx_models.errors import ConfigError
    from mlx_models.models import llama

    base = dict(model_type="llama", vocab_size=10, hidden_size=8, num_hidden_layers=1)
    base |= dict(num_attention_heads=2, intermediate_size=16)
    assert llama.ModelArgs.from_dict(base).head_dim == 4
    with pytest.raises(ConfigError, match=r"head_dim -2 \(must be a positive integer\)"):
        llama.ModelArgs.from_dict(base | {"head_dim": -2})
    with pytest.raises(ConfigError) as e:
        llama.ModelArgs.from_dict(
            base | {"rms_norm_eps": "1e-6", "rope_parameters": "x", "attention_bias": 0}
        )
    assert str(e.value).count("(must be") == 3 and "rope_parameters 'x' (must be dict or null)" in str(
        e.value
    )
    with pytest.raises(ConfigError, match="rms_norm_eps nan"):
        llama.ModelArgs.from_dict(base | {"rms_norm_eps": float("nan")})


@pytest.mark.parametrize("model_type", sorted(MODULES))
def test_keys_transformers_knows_are_never_taken_for_typos(model_type):
    """With every optional field of ours absent (the most room for a false 'did you mean'), the
    keys of transformers' own config for the family still load; a key transformers knows is never
    a typo, however close to one of ours."""
    import dataclasses

    from mlx_models.models.base import hf_config_keys, misspelt_key

    fields = dataclasses.fields(MODULES[model_type].ModelArgs)
    optional = {f.name for f in fields if f.default is not dataclasses.MISSING}
    config = transformers.AutoConfig.for_model(model_type).to_dict()
    config = {k: v for k, v in config.items() if k not in optional}
    assert misspelt_key(config, [f.name for f in fields], hf_config_keys(model_type)) is None
    assert "did you mean layer_norm_eps" in misspelt_key({"layer_norm_epz": 1}, ["layer_norm_eps"])
    assert misspelt_key({"layer_norm_epz": 1}, ["layer_norm_eps"], frozenset({"layer_norm_epz"})) is None
