"""The peer of `python train.py` in `end_to_end.py`: transformers' `Trainer` (with peft's LoRA when
the spec says so), in a process that never imports mlx_models.

    python benchmarks/e2e_trainer.py SPEC.json

SPEC (written by end_to_end.py) holds the HF model directory, the data file (the very texts and
labels train.py's loader picks: train, validation, the train probe, test) and train.py's resolved
recipe. The script tokenizes (datasets.map, as the HF tutorials do), fine-tunes with one evaluation
and one checkpoint per epoch, loads the best checkpoint (validation loss), scores the test split and
prints one JSON line: test accuracy and loss, and the time.time() of each phase's end (``marks``).
"""

import json
import os
import sys
import time

MARKS: dict[str, float] = {}


def mark(name: str) -> None:
    MARKS.setdefault(name, time.time())


def tokenized(spec: dict, tokenizer, data: dict) -> dict:
    """One `datasets.Dataset` per split, truncated to max_length, padded per batch by the collator."""
    import datasets

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=spec["max_length"])

    out = {}
    for name, split in data.items():
        ds = datasets.Dataset.from_dict({"text": split["texts"], "label": split["labels"]})
        out[name] = ds.map(tokenize, batched=True, remove_columns=["text"])
    return out


def model_for(spec: dict, tokenizer):
    """AutoModelForSequenceClassification in float32, wrapped in peft's LoRA when asked (the
    classification head trains in full, as train.py's)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"], num_labels=spec["num_labels"], dtype=torch.float32
    )
    if model.config.pad_token_id is None:  # Llama: the head pools the last token that is not a pad
        model.config.pad_token_id = tokenizer.pad_token_id
    if lora := spec["lora"]:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            task_type="SEQ_CLS", r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=lora["targets"],
        )  # fmt: skip
        model = get_peft_model(model, config)
    return model


def arguments(spec: dict):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=spec["out"],
        eval_strategy="epoch",  # train.py: one evaluation per epoch ...
        save_strategy="epoch",  # ... and a checkpoint
        load_best_model_at_end=True,  # the test split is scored with the best checkpoint
        metric_for_best_model="validation_loss",
        greater_is_better=False,
        per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["eval_batch_size"],
        learning_rate=spec["learning_rate"],
        weight_decay=spec["weight_decay"],
        warmup_steps=spec["warmup_steps"],
        lr_scheduler_type="linear",
        num_train_epochs=spec["epochs"],
        max_grad_norm=spec["max_grad_norm"],
        seed=spec["seed"],
        logging_strategy="epoch",
        report_to="none",
        use_cpu=True,
        dataloader_pin_memory=False,
    )


def marks_callback():
    """Marks the first and last optimizer steps, the two evaluations (validation, then the train
    probe) and the checkpoint."""
    from transformers import TrainerCallback

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            mark("first_step")
            if state.global_step == state.max_steps:
                mark("trained")

        evaluations = 0

        def on_evaluate(self, args, state, control, **kwargs):  # once per evaluation dataset
            self.evaluations += 1
            mark("validated" if self.evaluations == 1 else "evaluated")

        def on_save(self, args, state, control, **kwargs):
            mark("saved")

    return Marks()


def accuracy(pred) -> dict:
    import numpy as np

    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


def main(argv: list[str]) -> int:
    import torch
    import transformers
    from transformers import AutoTokenizer, Trainer

    torch.set_num_threads(os.cpu_count() or 1)  # every core, as MLX's OpenBLAS takes
    mark("imported")
    spec = json.loads(open(argv[0]).read())
    data = json.loads(open(spec["data"]).read())
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    splits = tokenized(spec, tokenizer, data)
    mark("tokenized")
    model = model_for(spec, tokenizer)
    mark("model")
    trainer = Trainer(
        model=model,
        args=arguments(spec),
        train_dataset=splits["train"],
        eval_dataset={"validation": splits["validation"], "train": splits["probe"]},
        processing_class=tokenizer,  # DataCollatorWithPadding: padded per batch, as train.py's
        compute_metrics=accuracy,
        callbacks=[marks_callback()],
    )
    mark("set_up")
    trainer.train()
    mark("best_loaded")
    test = trainer.evaluate(splits["test"], metric_key_prefix="test")
    mark("tested")
    record = {
        "accuracy": test["test_accuracy"],
        "loss": test["test_loss"],
        "steps": trainer.state.global_step,
        "threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "marks": MARKS,
    }
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
