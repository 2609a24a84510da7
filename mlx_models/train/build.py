"""What a training run starts from: the model (pretrained, LoRA/QLoRA on it, or from scratch), its
tokenizer, and the token ids of the examples."""

import dataclasses
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..batching import encode
from ..errors import ConfigError, DataError
from ..interop.adapters import check_against, read_adapter
from ..interop.loading import check_tokenizer, load_model, load_tokenizer, read_config, resolve
from ..interop.weights import add_or_strip_prefix
from ..models import build_model
from ..models.lora import Adapter, apply_lora, target_paths
from . import scratch
from .config import TrainConfig
from .corpus import blocks, load_corpus
from .data import Splits, load_splits
from .distributed import world

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")


def build(cfg: TrainConfig, num_labels: int, texts: list[str] | None = None) -> tuple[nn.Module, Any, Path]:
    """(model, tokenizer, base directory) ready for training as ``cfg`` says. A from-scratch model
    needs the training ``texts`` for its tokenizer (unless resumed: then RUN_DIR/init has it)."""
    if cfg.task == "classify" and cfg.num_labels and cfg.num_labels < num_labels:
        raise DataError(f"the data has {num_labels} labels, more than --num-labels {cfg.num_labels}")
    overrides = {"num_labels": cfg.num_labels or num_labels} if cfg.task == "classify" else {}
    if cfg.dropout is not None:
        overrides.update(dict.fromkeys(DROPOUT_KEYS, cfg.dropout))
    if cfg.from_scratch:
        model, tokenizer, directory = _from_scratch(cfg, overrides, texts)
    else:
        directory = resolve_once(cfg)
        mx.random.seed(cfg.seed)
        # a run reloaded (--eval-only, export, explain) gets its trained head back right after
        model = load_model(directory, cfg.task, config_overrides=overrides, note_new=not cfg.eval_only)
        tokenizer = load_tokenizer(directory)
        check_tokenizer(tokenizer, read_config(directory), cfg.model)
        if not cfg.lora and "quantization" in read_config(directory):
            raise ConfigError(f"{directory} is quantized: train it with --lora (QLoRA)")
    _check_fit(cfg, model, tokenizer)
    if cfg.lora:
        dropout = cfg.lora_dropout if cfg.dropout is None else cfg.dropout
        # From the seed alone: building a 4-bit base draws random numbers a dense one does not
        # (MLX initialises each quantized layer before its weights are loaded), and the adapters,
        # then the dropout masks, must not depend on how the base is stored.
        mx.random.seed(cfg.seed)
        apply_lora(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, dropout, use_dora=cfg.dora)
    if cfg.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(model.layers[0])
    return model, tokenizer, directory


def resolve_once(cfg: TrainConfig) -> Path:
    """The model's MLX directory; a conversion into the cache happens once, on rank 0, while the
    other ranks wait (they would race on the cache)."""
    w = world()
    directory = resolve(cfg.model, quantize_bits=cfg.quantize) if w.main else None
    w.barrier("rank 0's conversion of the model into the cache")
    return directory or resolve(cfg.model, quantize_bits=cfg.quantize)


def _from_scratch(cfg: TrainConfig, overrides: dict, texts: list[str] | None):
    """A new model (the trainer writes its config and tokenizer to RUN_DIR/init when it creates the
    run directory), or, for a run that exists, the one in RUN_DIR/init."""
    init = scratch.init_dir(cfg.out)
    if cfg.resume or cfg.eval_only:
        config, tokenizer = read_config(init), load_tokenizer(init)
    else:
        tokenizer = scratch.tokenizer_for(cfg, texts or [])
        config = scratch.config_for(cfg, tokenizer)
    model = scratch.build(config | overrides, cfg.task, cfg.seed)
    return model, tokenizer, init


def _check_fit(cfg: TrainConfig, model: nn.Module, tokenizer: Any) -> None:
    positions = model.args.max_positions
    if positions and cfg.max_length > positions:
        raise ConfigError(
            f"max_length {cfg.max_length} is longer than the {positions} positions of {cfg.model}; "
            f"pass --max-length {positions} or less"
        )
    if cfg.task == "mlm" and tokenizer.mask_token_id is None:
        raise ConfigError(f"{cfg.model} has no mask token, so it cannot train masked-LM; use --task lm")
    if cfg.task == "classify" and cfg.num_labels and cfg.num_labels < model.args.num_labels:
        raise DataError(
            f"the data has {model.args.num_labels} labels, more than --num-labels {cfg.num_labels}"
        )


def load_data(cfg: TrainConfig) -> Splits:
    """Labelled splits for classify; texts (a plain-text corpus too) for mlm and lm."""
    return load_splits(cfg) if cfg.task == "classify" else load_corpus(cfg)


def encode_split(cfg: TrainConfig, splits: Splits, name: str, tokenizer: Any) -> tuple[list[list[int]], Any]:
    """Token ids and labels of a split; language-model tasks pack their texts into blocks unless
    ``line_by_line``."""
    split = getattr(splits, name)
    if cfg.task == "classify":
        return encode(tokenizer, split.texts, cfg.max_length), split.labels
    return blocks(tokenizer, split.texts, cfg.max_length, cfg.line_by_line, name), None


def examples(cfg: TrainConfig, splits: Splits, tokenizer: Any) -> dict[str, tuple[list[list[int]], Any]]:
    """Train and validation examples, and a fixed train subset as large as validation (scored like
    it: the train vs validation curves)."""
    data = {name: encode_split(cfg, splits, name, tokenizer) for name in ("train", "validation")}
    encoded, labels = data["train"]
    probe = np.random.default_rng(cfg.seed).permutation(len(encoded))[: len(data["validation"][0])]
    data["probe"] = ([encoded[i] for i in probe], None if labels is None else [labels[i] for i in probe])
    if cfg.task != "classify":
        tokens = sum(map(len, encoded))
        print(f"{tokens} training tokens in {len(encoded)} examples of <= {cfg.max_length}", file=sys.stderr)
    return data


def accumulation(cfg: TrainConfig, ranks: int) -> int:
    """Micro-batches per optimizer step on each rank: global_batch_size = batch_size x that x ranks
    when a global batch is given, else grad_accum."""
    if not cfg.global_batch_size:
        return cfg.grad_accum
    accum, rest = divmod(cfg.global_batch_size, cfg.batch_size * ranks)
    if rest or not accum:
        raise ConfigError(
            f"global_batch_size {cfg.global_batch_size} is not a multiple of batch_size {cfg.batch_size} "
            f"x {ranks} rank(s); change one of them"
        )
    if cfg.grad_accum not in (1, accum):
        raise ConfigError(
            f"grad_accum {cfg.grad_accum} contradicts global_batch_size {cfg.global_batch_size} = "
            f"batch_size {cfg.batch_size} x {accum} x {ranks} rank(s); give only one of them"
        )
    return accum


def total_steps(cfg: TrainConfig, n_train: int, group: int) -> tuple[int, int]:
    """(optimizer steps of the run, steps per epoch) for ``group`` examples per step (the global
    batch): max_tokens, else max_steps, else epochs."""
    per_epoch = -(-n_train // group)
    if cfg.max_tokens:
        return -(-cfg.max_tokens // (group * cfg.max_length)), per_epoch
    return per_epoch * cfg.epochs if cfg.max_steps is None else cfg.max_steps, per_epoch


def import_adapter(cfg: TrainConfig, num_labels: int) -> tuple[TrainConfig, Adapter]:
    """Read ``cfg.adapter`` and check it against the base model; returns the training config with
    the adapter's settings (LoRA or DoRA, rank, alpha, dropout, wrapped modules) and the adapter, renamed to
    the model's module paths. Nothing is loaded yet: see ``load_into``."""
    adapter = read_adapter(cfg.adapter)
    if cfg.dora and not adapter.dora:
        raise ConfigError(
            f"{cfg.adapter} is a LoRA adapter, not DoRA: drop --dora (the adapter's kind decides)"
        )
    config = read_config(resolve_once(cfg))
    overrides = {"num_labels": cfg.num_labels or num_labels} if cfg.task == "classify" else {}
    model = build_model({**config, **overrides}, cfg.task)  # lazy: names and shapes only
    rename = add_or_strip_prefix([*adapter.lora, *adapter.heads], model)
    adapter.lora = {rename[p]: w for p, w in adapter.lora.items()}
    adapter.heads = {rename[k]: w for k, w in adapter.heads.items()}
    adapter.magnitudes = {rename[p]: m for p, m in adapter.magnitudes.items()}
    check_against(adapter, model, cfg.adapter)
    short = sorted({p.rsplit(".", 1)[-1] for p in adapter.lora})  # q_proj, value, ...
    targets = short if target_paths(model, short) == adapter.modules else adapter.modules
    settings = {"lora_rank": adapter.rank, "lora_alpha": adapter.alpha, "lora_dropout": adapter.dropout}
    return dataclasses.replace(cfg, lora=True, dora=adapter.dora, lora_targets=targets, **settings), adapter
