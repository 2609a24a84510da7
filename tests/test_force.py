"""--force never destroys what the tool did not write: every command that takes --out (convert,
export in each format, fuse, explain) refuses, with one line and exit code 2, to replace a user's
directory, its own input or anything holding it, or the current directory; it replaces only an
earlier output of its own (marked by OUTPUT_MARKER)."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from mlx_models.cli import run_cli
from mlx_models.explain import cli as explain
from mlx_models.export import cli as export
from mlx_models.export import fuse
from mlx_models.io import OUTPUT_MARKER
from mlx_models.train.config import load_train_config
from mlx_models.train.trainer import run as train_run
from sentiment import sentiment_splits, write_splits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from convert import main as convert_main  # noqa: E402

QUICK = ["--max-length", "32", "--batch-size", "8", "--max-steps", "2"]


@pytest.fixture(scope="module")
def world(tiny, tmp_path_factory):
    """A HF model to convert and two finished LoRA runs of a tiny Llama (a classifier, a causal LM)
    to export, fuse and explain."""
    root = tmp_path_factory.mktemp("force")
    hf, classifier = tiny("llama", "classify", num_labels=2)
    lm = tiny("llama", "lm", tie_word_embeddings=True)[1]  # tied: an mlx-lm adapter holds all it trains
    data = write_splits(root / "data", sentiment_splits())
    world = {"hf": hf}
    for name, task, model in (("run", "classify", classifier), ("lm_run", "lm", lm)):
        world[name] = root / name
        argv = ["--model", str(model), "--data-dir", str(data), "--out", str(world[name]), "--task", task]
        train_run(load_train_config([*argv, *QUICK, "--lora"]))
    return world


# command -> (main, its arguments before --out given its input, which input of `world`)
COMMANDS = {
    "convert": (convert_main, lambda src: [str(src)], "hf"),
    "export-hf": (export.main, lambda src: [str(src), "--to", "hf"], "run"),
    "export-peft": (export.main, lambda src: [str(src), "--to", "peft"], "run"),
    "export-mlx-lm": (export.main, lambda src: [str(src), "--to", "mlx-lm"], "lm_run"),
    "export-gguf": (export.main, lambda src: [str(src), "--to", "gguf"], "lm_run"),
    "fuse": (fuse.main, lambda src: [str(src)], "run"),
    "explain": (explain.main, lambda src: [str(src), "--n", "4", "--steps", "2"], "run"),
}


def tree(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def place(world, tmp_path):
    """A private copy of the command's input inside tmp/home/, beside a user's file."""

    def make(kind: str) -> Path:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        (home / "thesis.txt").write_text("a user's file")
        return Path(shutil.copytree(world[kind], home / kind))

    return make


def refused(capsys, main, argv, says: str) -> None:
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


@pytest.mark.parametrize("name", COMMANDS)
def test_force_spares_what_the_tool_did_not_write(name, place, tmp_path, capsys):
    main, head, kind = COMMANDS[name]
    src = place(kind)
    home = src.parent
    before_home, before_src = tree(home), tree(src)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    refused(capsys, main, [*head(src), "--out", str(user), "--force"], "not written by mlx_models")
    refused(capsys, main, [*head(src), "--out", str(user)], "remove it yourself or choose another --out")
    assert tree(user) == {Path("notes.txt"): b"keep me"}
    refused(capsys, main, [*head(src), "--out", str(src), "--force"], f"is the input {src}")
    refused(capsys, main, [*head(src), "--out", str(home), "--force"], f"holds the input {src}")
    if kind != "hf":  # a checkpoint inside the run: read by the command, or at least not ours
        refused(capsys, main, [*head(src), "--out", str(src / "best"), "--force"], "--force")
        base = Path(json.loads((src / "best" / "config.json").read_text())["base_model"])
        assert (base / OUTPUT_MARKER).is_file()  # written by convert: only the input rule protects it
        before_base = tree(base)
        refused(capsys, main, [*head(src), "--out", str(base), "--force"], f"is the input {base}")
        assert tree(base) == before_base
    assert tree(home) == before_home and tree(src) == before_src


@pytest.mark.parametrize("name", COMMANDS)
def test_force_replaces_its_own_output_only(name, place, tmp_path, capsys, monkeypatch):
    main, head, kind = COMMANDS[name]
    src = place(kind)
    out = tmp_path / "out"
    assert run_cli(main, [*head(src), "--out", str(out)]) == 0
    assert (out / OUTPUT_MARKER).is_file()
    capsys.readouterr()
    refused(capsys, main, [*head(src), "--out", str(out)], "already exists; pass --force to replace it")
    (out / "stale.txt").write_text("from before")
    assert run_cli(main, [*head(src), "--out", str(out), "--force"]) == 0
    assert not (out / "stale.txt").exists() and (out / OUTPUT_MARKER).is_file()
    capsys.readouterr()
    monkeypatch.chdir(out)  # the current directory is never replaced, even when it is ours
    refused(capsys, main, [*head(src), "--out", ".", "--force"], "the current directory")
    refused(capsys, main, [*head(src), "--out", str(tmp_path), "--force"], "the current directory")
    assert sorted(os.listdir(tmp_path)) == ["home", "out"]


def test_convert_never_replaces_its_own_earlier_output_that_is_the_input(world, tmp_path, capsys):
    first = tmp_path / "first"
    assert run_cli(convert_main, [str(world["hf"]), "--out", str(first)]) == 0
    before = tree(first)
    refused(capsys, convert_main, [str(first), "--out", str(first), "--force"], f"is the input {first}")
    link = tmp_path / "link"
    link.symlink_to(first)
    refused(capsys, convert_main, [str(first), "--out", str(link), "--force"], "is the input")
    assert tree(first) == before
