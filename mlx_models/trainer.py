"""The MLX training loop: full finetuning or LoRA/QLoRA for classify, mlm and lm.

One compiled step (model, optimizer and random state captured), gradient accumulation,
clipping, warm-up + decay, evaluation on validation and a fixed train subset (the
overfitting picture), atomic checkpoints (iter-<step>/, best/, last/) and exact resume.
"""

import dataclasses
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from tqdm import tqdm

from . import checkpoint
from .config import TrainConfig, save_train_config
from .data import Splits, batch_order, collate, encode, load_splits, pad_id_for
from .errors import ConfigError, MLXModelsError
from .io import atomic_dir, atomic_write_json
from .loading import load_model, load_tokenizer, resolve
from .lora import apply_lora, fuse_lora
from .metrics import append_metrics, classification_metrics, plot_curves, read_metrics

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
PAD_MULTIPLE = 16  # few distinct batch shapes -> few mx.compile traces


class OutOfMemory(MLXModelsError):
    pass


# Tests set this to simulate an allocation failure: fault_hook(step, micro_batch_size).
fault_hook = None


def is_oom(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "allocat" in text


# --- losses: loss_fn(model, ids, mask, targets) -> (mean loss, number of examples/tokens) ---


def classify_loss(model, ids, mask, labels):
    logits = model(ids, attention_mask=mask).astype(mx.float32)
    return nn.losses.cross_entropy(logits, labels, reduction="mean"), mx.array(labels.size)


def mlm_loss(model, ids, mask, targets):
    logits = model(ids, attention_mask=mask).astype(mx.float32)
    keep = targets >= 0  # -100 marks tokens that were not masked
    ce = nn.losses.cross_entropy(logits, mx.maximum(targets, 0)) * keep
    n = keep.sum()
    return ce.sum() / mx.maximum(n, 1), n


def lm_loss(model, ids, mask, targets):
    logits = model(ids[:, :-1], attention_mask=mask[:, :-1]).astype(mx.float32)
    keep = mask[:, 1:] != 0
    ce = nn.losses.cross_entropy(logits, ids[:, 1:]) * keep
    n = keep.sum()
    return ce.sum() / mx.maximum(n, 1), n


LOSSES = {"classify": classify_loss, "mlm": mlm_loss, "lm": lm_loss}


def mask_tokens(ids: np.ndarray, mask: np.ndarray, tokenizer, rng: np.random.Generator):
    """BERT masking: 15% of real, non-special tokens; 80% [MASK], 10% random, 10% unchanged."""
    special = np.isin(ids, tokenizer.all_special_ids) | (mask == 0)
    chosen = (rng.random(ids.shape) < 0.15) & ~special
    targets = np.where(chosen, ids, -100).astype(np.int32)
    ids = ids.copy()
    r = rng.random(ids.shape)
    ids[chosen & (r < 0.8)] = tokenizer.mask_token_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    ids[rand] = rng.integers(0, len(tokenizer), size=int(rand.sum()))
    return ids, targets


# --- model ------------------------------------------------------------------------------------


def build(cfg: TrainConfig, num_labels: int):
    """(model, tokenizer, model directory) ready for training as ``cfg`` says."""
    directory = resolve(cfg.model, quantize_bits=cfg.quantize)
    overrides = {"num_labels": num_labels} if cfg.task == "classify" else {}
    if cfg.dropout is not None:
        overrides.update(dict.fromkeys(DROPOUT_KEYS, cfg.dropout))
    mx.random.seed(cfg.seed)
    model = load_model(directory, cfg.task, config_overrides=overrides)
    tokenizer = load_tokenizer(directory)
    if cfg.task == "mlm" and tokenizer.mask_token_id is None:
        raise ConfigError(f"{cfg.model} has no mask token, so it cannot train masked-LM; use --task lm")
    if cfg.lora:
        dropout = cfg.lora_dropout if cfg.dropout is None else cfg.dropout
        apply_lora(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, dropout)
    elif "quantization" in json.loads((directory / "config.json").read_text()):
        raise ConfigError(f"{directory} is quantized: train it with --lora (QLoRA)")
    if cfg.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(getattr(model, model.base_model_prefix, model).layers[0])
    return model, tokenizer, directory


def architecture(config: dict, task: str) -> str:
    """The transformers class name of our head for ``task`` (what config.json records)."""
    from .models import ARCHITECTURE_TASKS

    prefix = {"bert": "Bert", "roberta": "Roberta", "llama": "Llama"}[config["model_type"]]
    return next(a for a, t in ARCHITECTURE_TASKS.items() if a.startswith(prefix) and t == task)


def trained_weights(model: nn.Module, lora: bool) -> dict[str, mx.array]:
    """What a checkpoint holds: adapters + head for LoRA, every weight otherwise."""
    return dict(tree_flatten(model.trainable_parameters() if lora else model.parameters()))


# --- checkpoints ----------------------------------------------------------------------------


def save_checkpoint(path: Path, model, optimizer, state: dict, cfg: TrainConfig, tokenizer, base: Path):
    with atomic_dir(path, force=True) as tmp:
        name = "adapters.safetensors" if cfg.lora else "model.safetensors"
        mx.save_safetensors(str(tmp / name), trained_weights(model, cfg.lora), metadata={"format": "mlx"})
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        mx.save_safetensors(str(tmp / "rng.safetensors"), {"key": mx.random.state[0]})
        atomic_write_json(tmp / "trainer_state.json", state)
        save_train_config(cfg, tmp / "train_config.json")
        config = json.loads((base / "config.json").read_text())
        config.update(num_labels=getattr(model.args, "num_labels", 2), base_model=str(base))
        config["architectures"] = [architecture(config, cfg.task)]
        config.pop("id2label", None), config.pop("label2id", None)
        if cfg.lora:
            config["lora"] = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(str(tmp))


def restore_weights(model: nn.Module, path: Path) -> None:
    name = "adapters.safetensors" if (path / "adapters.safetensors").exists() else "model.safetensors"
    model.load_weights(list(mx.load(str(path / name)).items()), strict=False)


# --- evaluation -----------------------------------------------------------------------------


def evaluate(model, loss_fn, encoded, labels, cfg, pad_id, tokenizer) -> dict:
    model.eval()
    total, count, preds, golds = 0.0, 0, [], []
    lengths = [len(s) for s in encoded]
    rng = np.random.default_rng(cfg.seed + 1)  # fixed masks: evaluations compare
    for idx in batch_order(lengths, cfg.batch_size, cfg.seed, 0, shuffle=False):
        ids, mask = collate([encoded[i] for i in idx], pad_id, cfg.padding_side, PAD_MULTIPLE)
        if cfg.task == "classify":
            targets = np.array([labels[i] for i in idx], np.int32)
            logits = model(mx.array(ids), attention_mask=mx.array(mask))
            loss = nn.losses.cross_entropy(logits.astype(mx.float32), mx.array(targets), reduction="sum")
            preds += np.array(mx.argmax(logits, axis=-1)).tolist()
            golds += targets.tolist()
            total, count = total + loss.item(), count + len(idx)
        else:
            targets = mask_tokens(ids, mask, tokenizer, rng) if cfg.task == "mlm" else (ids, ids)
            loss, n = loss_fn(model, mx.array(targets[0]), mx.array(mask), mx.array(targets[1]))
            total, count = total + loss.item() * n.item(), count + n.item()
    model.train()
    out = {"loss": total / max(count, 1), "n": len(encoded)}
    if cfg.task == "classify":
        out |= classification_metrics(golds, preds, model.args.num_labels)
    else:
        out["perplexity"] = float(np.exp(min(out["loss"], 50)))
    return out


# --- the run --------------------------------------------------------------------------------


def schedule(cfg: TrainConfig, total_steps: int):
    warmup = int(cfg.warmup_ratio * total_steps)
    decay_steps = max(total_steps - warmup, 1)
    decay = {
        "linear": optim.linear_schedule(cfg.learning_rate, 0.0, decay_steps),
        "cosine": optim.cosine_decay(cfg.learning_rate, decay_steps),
        "constant": lambda _: cfg.learning_rate,
    }[cfg.lr_schedule]
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, cfg.learning_rate, warmup), decay], [warmup])


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optim.Optimizer:
    """AdamW as torch defines it and HF's Trainer sets it up: no weight decay on biases and norm
    weights (the 1-D parameters). bias_correction: MLX's default is off; without it the first
    updates are ~3x larger and finetuning a pretrained encoder collapses to chance."""
    adamw = partial(optim.AdamW, learning_rate=schedule(cfg, total_steps), bias_correction=True)
    no_decay = lambda _, p: p.ndim < 2  # noqa: E731
    return optim.MultiOptimizer([adamw(weight_decay=0.0), adamw(weight_decay=cfg.weight_decay)], [no_decay])


def run(cfg: TrainConfig) -> dict:
    if cfg.eval_only:
        return evaluate_run(cfg)
    run_dir = Path(cfg.out)
    splits = load_splits(cfg)  # bad data fails here, before anything is written
    model, tokenizer, base = build(cfg, splits.num_labels)
    pad_id = pad_id_for(tokenizer)
    enc = {s: encode(tokenizer, getattr(splits, s).texts, cfg.max_length) for s in ("train", "validation")}
    labels = {s: getattr(splits, s).labels for s in ("train", "validation")}
    # A fixed train subset as large as validation, scored like it: train vs validation curves.
    probe = np.random.default_rng(cfg.seed).permutation(len(enc["train"]))[: len(enc["validation"])]
    probe_enc = [enc["train"][i] for i in probe]
    probe_labels = None if labels["train"] is None else [labels["train"][i] for i in probe]

    group = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = -(-len(enc["train"]) // group)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    eval_every = cfg.eval_every or steps_per_epoch
    optimizer = make_optimizer(cfg, total_steps)
    optimizer.init(model.trainable_parameters())
    state = {"step": 0, "epoch": 0, "batch": 0, "best_loss": None, "bad_evals": 0}
    state |= {"micro_batch": cfg.batch_size, "grad_accum": cfg.grad_accum}

    if cfg.resume:
        last = run_dir / "last"
        if not last.exists() and (aside := sorted(run_dir.glob(".last.old-*"))):
            os.replace(aside[-1], last)  # killed between the two renames of a checkpoint swap
        if not (last / "trainer_state.json").exists():
            raise ConfigError(f"{last} has no checkpoint to resume from; start a new run instead")
        restore_weights(model, last)
        optimizer.state = tree_unflatten(list(mx.load(str(last / "optimizer.safetensors")).items()))
        # mx.random.state is read-only in MLX >= 0.31; key(s) is [s >> 32, s & 0xFFFFFFFF].
        hi, lo = (int(x) for x in np.array(mx.load(str(last / "rng.safetensors"))["key"]))
        mx.random.seed((hi << 32) | lo)
        state = json.loads((last / "trainer_state.json").read_text())
        kept = [r for r in read_metrics(run_dir) if r["step"] <= state["step"] and r["split"] != "test"]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        print(f"resuming {run_dir} at step {state['step']}", file=sys.stderr)
    else:
        run_dir.mkdir(parents=True)
        save_train_config(cfg, run_dir / "config.json")
    if cfg.memory_limit:
        mx.set_memory_limit(int(cfg.memory_limit * 1024**3))
    print(
        f"training {cfg.model} ({'LoRA' if cfg.lora else 'full'}{', 4-bit base' if cfg.quantize else ''}) "
        f"on {len(enc['train'])} examples from {splits.source}: {total_steps} steps -> {run_dir}",
        file=sys.stderr,
    )

    loss_fn = LOSSES[cfg.task]
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    captured = [model.state, optimizer.state, mx.random.state]

    def step_fn(ids, mask, targets, prev_grad, update: bool, accum: int):
        (loss, n), grad = loss_and_grad(model, ids, mask, targets)
        if prev_grad is not None:
            grad = tree_map(lambda a, b: a + b, grad, prev_grad)
        if update:
            if accum > 1:
                grad = tree_map(lambda g: g / accum, grad)
            if cfg.max_grad_norm:
                grad, _ = optim.clip_grad_norm(grad, cfg.max_grad_norm)
            optimizer.update(model, grad)
            grad = None
        return loss, n, grad

    step = partial(mx.compile, inputs=captured, outputs=captured)(step_fn) if cfg.compile else step_fn
    mask_rng = lambda e, b: np.random.default_rng((cfg.seed, e, b))  # noqa: E731  (resume-safe)

    def micro_batches(idx: list[int], epoch: int, b: int):
        rng = mask_rng(epoch, b)
        for i in range(0, len(idx), state["micro_batch"]):
            part = idx[i : i + state["micro_batch"]]
            ids, mask = collate([enc["train"][j] for j in part], pad_id, cfg.padding_side, PAD_MULTIPLE)
            if cfg.task == "classify":
                targets = np.array([labels["train"][j] for j in part], np.int32)
            elif cfg.task == "mlm":
                ids, targets = mask_tokens(ids, mask, tokenizer, rng)
            else:
                targets = ids
            yield mx.array(ids), mx.array(mask), mx.array(targets)

    def optimizer_step(idx: list[int], epoch: int, b: int) -> tuple[float, int]:
        """One optimizer step over ``idx``; on out-of-memory halve the micro-batch and retry."""
        while True:
            try:
                batches = list(micro_batches(idx, epoch, b))
                grad, losses, tokens = None, 0.0, 0
                for k, (ids, mask, targets) in enumerate(batches):
                    if fault_hook:
                        fault_hook(state["step"], state["micro_batch"])
                    loss, n, grad = step(ids, mask, targets, grad, k == len(batches) - 1, len(batches))
                    mx.eval(loss, n, grad, captured)
                    losses, tokens = losses + loss.item(), tokens + int(mask.sum().item())
                return losses / len(batches), tokens
            except Exception as e:
                if not is_oom(e):
                    raise
                if state["micro_batch"] == 1:
                    raise OutOfMemory(
                        "out of memory at micro-batch 1; lower --max-length, add --grad-checkpoint, "
                        "use --lora (with --quantize 4) or raise --memory-limit"
                    ) from e
                state["micro_batch"] //= 2
                state["grad_accum"] = -(-group // state["micro_batch"])
                print(
                    f"out of memory at step {state['step'] + 1}: micro-batch -> {state['micro_batch']}, "
                    f"accumulation -> {state['grad_accum']} (same effective batch {group}); retrying",
                    file=sys.stderr,
                )
                mx.clear_cache()

    def log_eval(epoch_float: float, running_loss: float) -> bool:
        """Evaluate, record, keep best/; returns True when early stopping says stop."""
        val = evaluate(model, loss_fn, enc["validation"], labels["validation"], cfg, pad_id, tokenizer)
        tr = evaluate(model, loss_fn, probe_enc, probe_labels, cfg, pad_id, tokenizer)
        mem = {"active_gb": mx.get_active_memory() / 1e9, "peak_gb": mx.get_peak_memory() / 1e9}
        common = {"step": state["step"], "epoch": round(epoch_float, 4)}
        append_metrics(run_dir, {"split": "train", **common, **tr, "running_loss": running_loss, **mem})
        append_metrics(run_dir, {"split": "validation", **common, **val})
        plot_curves(run_dir, title=f"{run_dir.name} ({splits.source})")
        tqdm.write(
            f"step {state['step']}: train loss {tr['loss']:.4f}, validation loss {val['loss']:.4f}"
            + (f", accuracy {val['accuracy']:.4f}" if "accuracy" in val else ""),
            file=sys.stderr,
        )
        if state["best_loss"] is None or val["loss"] < state["best_loss"]:
            state["best_loss"], state["bad_evals"] = val["loss"], 0
            save_checkpoint(run_dir / "best", model, optimizer, state, cfg, tokenizer, base)
            return False
        state["bad_evals"] += 1
        return cfg.early_stopping_patience is not None and state["bad_evals"] >= cfg.early_stopping_patience

    lengths = [len(s) for s in enc["train"]]

    def positions():
        """(batch indices, batch number, batches per epoch) from the saved data position on."""
        while True:
            order = batch_order(lengths, group, cfg.seed, state["epoch"])
            for b in range(state["batch"], len(order)):
                yield order[b], b, len(order)
            state["epoch"], state["batch"] = state["epoch"] + 1, 0

    model.train()
    mx.reset_peak_memory()
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", file=sys.stderr)
    running, tokens, tic = [], 0, time.perf_counter()
    try:
        for idx, b, n_batches in positions():
            if state["step"] >= total_steps:
                break
            loss, n = optimizer_step(idx, state["epoch"], b)
            state["step"], state["batch"] = state["step"] + 1, b + 1
            running.append(loss)
            tokens += n
            bar.update(1)
            memory = f"{mx.get_active_memory() / 1e9:.2f}/{mx.get_peak_memory() / 1e9:.2f}"
            speed = f"{tokens / (time.perf_counter() - tic):.0f}"
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=speed, mem_gb=memory)
            done = state["step"] >= total_steps
            stop = False
            if state["step"] % eval_every == 0 or done:
                stop = log_eval(state["epoch"] + state["batch"] / n_batches, float(np.mean(running)))
                running = []
            periodic = bool(cfg.save_every) and state["step"] % cfg.save_every == 0
            if periodic:
                save_checkpoint(
                    run_dir / f"iter-{state['step']}", model, optimizer, state, cfg, tokenizer, base
                )
            if periodic or done or stop:
                save_checkpoint(run_dir / "last", model, optimizer, state, cfg, tokenizer, base)
            if stop or done:
                break
    finally:
        bar.close()
    return test_and_report(cfg, run_dir, model, splits, tokenizer, pad_id)


def test_and_report(cfg, run_dir: Path, model, splits: Splits, tokenizer, pad_id: int) -> dict:
    """Score the best checkpoint on the test split: one JSON line, and a metrics.jsonl record."""
    best = run_dir / ("best" if (run_dir / "best").exists() else "last")
    restore_weights(model, best)
    enc = encode(tokenizer, splits.test.texts, cfg.max_length)
    result = evaluate(model, LOSSES[cfg.task], enc, splits.test.labels, cfg, pad_id, tokenizer)
    record = {
        "split": "test",
        "checkpoint": best.name,
        "step": json.loads((best / "trainer_state.json").read_text())["step"],
    }
    record |= result | {"peak_gb": mx.get_peak_memory() / 1e9}
    append_metrics(run_dir, record)
    plot_curves(run_dir, title=f"{run_dir.name} ({splits.source})")
    print(json.dumps(record, sort_keys=True))
    return record


def evaluate_run(cfg: TrainConfig) -> dict:
    """``train.py --eval-only RUN``: reload the best checkpoint and score the test split."""
    run_dir = Path(cfg.out)
    splits = load_splits(dataclasses.replace(cfg, eval_only=None))
    model, tokenizer, _ = build(cfg, splits.num_labels)
    pad_id = pad_id_for(tokenizer)
    return test_and_report(cfg, run_dir, model, splits, tokenizer, pad_id)


def fuse(run_dir: str | Path, out: str | Path, checkpoint_name: str = "best") -> Path:
    """Fold a LoRA run's adapters into its base: a plain checkpoint directory for ``load``."""
    from .config import TrainConfig as _TC

    ckpt = Path(run_dir) / checkpoint_name
    cfg = _TC.from_json(ckpt / "train_config.json")
    if not cfg.lora:
        raise ConfigError(f"{run_dir} is a full finetuning run: {ckpt} is already a plain checkpoint")
    config = json.loads((ckpt / "config.json").read_text())
    model, tokenizer, base = build(dataclasses.replace(cfg, grad_checkpoint=False), config["num_labels"])
    restore_weights(model, ckpt)
    fuse_lora(model)
    config = json.loads((base / "config.json").read_text())  # layers without LoRA stay quantized
    config.update(num_labels=model.args.num_labels, architectures=[architecture(config, cfg.task)])
    weights = dict(tree_flatten(model.parameters()))
    with atomic_dir(out) as tmp:
        checkpoint.save_weights(tmp, weights)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(str(tmp))
    return Path(out)
