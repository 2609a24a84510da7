"""A model and a tokenizer from nothing: the architecture from a config, HF's initialisation, and a
byte-level BPE tokenizer trained on the corpus (for pretraining from scratch).

A from-scratch run keeps both in ``RUN_DIR/init/`` (config.json and the tokenizer files, no
weights): the run's checkpoints name it as their base, and a resumed run reads it back instead of
training the tokenizer again.
"""

import dataclasses
import difflib
import os
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import ConfigError
from ..io import atomic_dir, atomic_write_json, read_json
from ..models import MODULES, build_model
from ..registry import read_config_yaml
from .config import TrainConfig, convert, resolve_model_alias

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as roberta-base; <mask> is the last id


def model_config(cfg: TrainConfig) -> dict:
    """The architecture of a --from-scratch run (see ``architecture``)."""
    return architecture(cfg.model, cfg.model_config)


def architecture(model: str, spec: str | None = None, config_path: str | os.PathLike | None = None) -> dict:
    """The architecture to build for ``model``: its alias's ``config:`` in config.yaml
    (``config_path``, default the one in force), else a config.json (a file, or a directory holding
    one), with ``spec`` (``--model-config``) on top: a config.json path, or comma-separated
    key=value overrides."""
    base = {}
    if Path(model).expanduser().exists():
        path = Path(model).expanduser()
        base = read_json(
            path / "config.json" if path.is_dir() else path, ConfigError, "pass an HF config.json"
        )
    elif model in read_config_yaml(config_path)["models"]:
        base = dict(resolve_model_alias(model, config_path).get("config") or {})
    if not base:
        raise ConfigError(
            f"--from-scratch needs the architecture of {model}: give the alias a config: in config.yaml, "
            "or pass --model path/to/config.json"
        )
    extra = overrides(spec)
    check_known_keys(extra, (base | extra).get("model_type"))
    return base | extra


def check_known_keys(keys: dict, model_type: str | None) -> None:
    """``--model-config`` keys must be config.json keys of the family (ours or transformers'): a
    typo is an error with the nearest key, not an override that is silently dropped."""
    if model_type not in MODULES or not keys:
        return  # an unknown model_type is refused when the model is built
    from transformers import AutoConfig

    known = {f.name for f in dataclasses.fields(MODULES[model_type].ModelArgs)}
    known |= set(AutoConfig.for_model(model_type).to_dict())
    for key in sorted(set(keys) - known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"did you mean {close[0]}?" if close else "see the model's config.json for its keys"
        raise ConfigError(f"--model-config: unknown key {key!r} for {model_type}; {hint}")


def overrides(spec: str | None) -> dict:
    """``--model-config``: a path to a config.json, or key=value pairs (numbers parsed as such)."""
    if not spec:
        return {}
    if Path(spec).expanduser().is_file():
        return read_json(Path(spec).expanduser(), ConfigError, "pass a JSON object of HF config keys")
    pairs = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-config item {item!r} is not key=value (or the path of a config.json)")
        pairs[key.strip()] = _number(value.strip())
    return pairs


def _number(text: str) -> Any:
    for tp in (int, float):
        try:
            return convert(text, tp)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def init_weights(model: nn.Module, std: float) -> None:
    """transformers' `_init_weights`: normal(0, std) for linear and embedding weights (the padding
    row of an embedding zero), zero biases, LayerNorm/RMSNorm weights one."""
    norms = {p for p, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
             if isinstance(m, nn.LayerNorm | nn.RMSNorm)}  # fmt: skip
    new = []
    for key, value in tree_flatten(model.parameters()):
        module, name = key.rsplit(".", 1)
        if module in norms:
            new.append((key, mx.ones_like(value) if name == "weight" else mx.zeros_like(value)))
        elif name == "bias":
            new.append((key, mx.zeros_like(value)))
        else:
            new.append((key, std * mx.random.normal(value.shape)))
    model.update(tree_unflatten(new))
    pad = getattr(model.args, "pad_token_id", None)
    for path, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        padded = path.endswith("word_embeddings") or (path.endswith("position_embeddings") and pad == 1)
        if isinstance(m, nn.Embedding) and padded and pad is not None and pad < m.weight.shape[0]:
            m.weight[pad] = 0.0  # HF's padding_idx (RoBERTa's positions use it too)


def build(config: dict, task: str, seed: int) -> nn.Module:
    mx.random.seed(seed)
    model = build_model(config, task)
    init_weights(model, config.get("initializer_range", 0.02))
    mx.eval(model.parameters())
    return model


def train_tokenizer(texts: list[str], vocab_size: int):
    """A RoBERTa-style byte-level BPE: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> the last id; loads in
    `transformers.AutoTokenizer` once saved."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    if vocab_size < len(SPECIALS) + 1 + 256:
        raise ConfigError(
            f"vocab_size {vocab_size} is smaller than the {len(SPECIALS) + 1} special tokens plus the 256 "
            "bytes a byte-level tokenizer needs; pass --model-config vocab_size=8192 (or more)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    mask = AddedToken("<mask>", lstrip=True, special=True)  # "Hello <mask>" -> "Hello", "<mask>"
    tok.add_special_tokens([mask])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.RobertaProcessing(("</s>", eos), ("<s>", bos), add_prefix_space=False)
    return RobertaTokenizerFast(tokenizer_object=tok, mask_token=mask)


def tokenizer_for(cfg: TrainConfig, texts: list[str]):
    """``--tokenizer`` when given, else a byte-level BPE trained on ``texts`` to the vocab_size of
    the architecture."""
    if cfg.tokenizer:
        from ..interop.loading import load_tokenizer

        return load_tokenizer(cfg.tokenizer)
    wanted = int(model_config(cfg).get("vocab_size", 50265))
    print(f"training a byte-level BPE tokenizer ({wanted} tokens) on {len(texts)} texts", file=sys.stderr)
    tokenizer = train_tokenizer(texts, wanted)
    if len(tokenizer) < wanted:
        print(f"notice: the corpus yields {len(tokenizer)} tokens (of {wanted})", file=sys.stderr)
    return tokenizer


def config_for(cfg: TrainConfig, tokenizer) -> dict:
    """The architecture with the tokenizer's vocabulary and special ids (a trained tokenizer sets
    vocab_size; a given one may be smaller than the model's vocabulary)."""
    config = model_config(cfg)
    vocab = max(int(config.get("vocab_size", 0)), len(tokenizer)) if cfg.tokenizer else len(tokenizer)
    config |= {
        "vocab_size": vocab,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config.pop("architectures", None)
    build_model(config, cfg.task)  # the architecture is checked before anything is trained or written
    return config


def save(directory: Path, config: dict, tokenizer) -> None:
    """``RUN_DIR/init/``: what `load` needs besides weights (config.json, tokenizer files)."""
    with atomic_dir(directory, force=True) as tmp:
        atomic_write_json(tmp / "config.json", config)
        tokenizer.save_pretrained(str(tmp))


def init_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "init"
