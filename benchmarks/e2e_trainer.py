"""The peer of `python train.py` in `end_to_end.py`: what a user would otherwise run, transformers'
`Trainer` (and peft's LoRA), in a clean process that never imports mlx_models.

    python benchmarks/e2e_trainer.py SPEC.json

SPEC holds the model directory, the data file (the very texts and labels of train.py's loader:
train, validation, the train probe, test), the recipe (batch sizes, learning rate, warm-up steps,
weight decay, epochs, seed, max length, gradient clipping) and the LoRA settings or null. The
script tokenizes, fine-tunes with evaluation and a checkpoint once per epoch (best by validation
loss, loaded at the end), scores the test split, and prints one JSON line: test accuracy and loss,
and wall-clock marks (time.time()) of its phases for the breakdown.
"""

import json
import sys
import time
from collections.abc import Callable


def marker() -> tuple[dict, Callable[[str], None]]:
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks.setdefault(name, time.time())

    return marks, mark


def tokenized(spec: dict, tokenizer, data: dict):
    """One `datasets.Dataset` per split, tokenized as the HF tutorials do (``map``, batched)."""
    import datasets

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=spec["max_length"])

    out = {}
    for name, split in data.items():
        ds = datasets.Dataset.from_dict({"text": split["texts"], "label": split["labels"]})
        out[name] = ds.map(tokenize, batched=True, remove_columns=["text"])
    return out


def model_for(spec: dict, tokenizer):
    """AutoModelForSequenceClassification, wrapped in peft's LoRA when the spec says so."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"], num_labels=spec["num_labels"], dtype=torch.float32
    )
    if model.config.pad_token_id is None:  # Llama: pool the last real token, pads are eos
        model.config.pad_token_id = tokenizer.pad_token_id
    lora = spec.get("lora")
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            task_type="SEQ_CLS",  # the classification head trains in full, as ours
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["targets"],
        )
        model = get_peft_model(model, config)
    return model


def arguments(spec: dict):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=spec["out"],
        eval_strategy="epoch",  # train.py's default: one evaluation per epoch ...
        save_strategy="epoch",  # ... and best/ written when validation loss improved
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


def marks_callback(mark: Callable[[str], None]):
    """A TrainerCallback that marks the first and last steps, the evaluation and the checkpoint."""
    from transformers import TrainerCallback

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            mark("first_step")
            if state.global_step == state.max_steps:
                mark("trained")

        def on_evaluate(self, args, state, control, **kwargs):
            mark(f"evaluated_{state.global_step}")

        def on_save(self, args, state, control, **kwargs):
            mark(f"saved_{state.global_step}")

    return Marks()


def accuracy(pred) -> dict:
    import numpy as np

    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


def main(argv: list[str]) -> int:
    marks, mark = marker()
    mark("start")
    import transformers
    from transformers import AutoTokenizer, Trainer

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
        processing_class=tokenizer,  # DataCollatorWithPadding: dynamic padding, as ours
        compute_metrics=accuracy,
        callbacks=[marks_callback(mark)],
    )
    mark("train_begin")
    trainer.train()
    mark("train_end")
    test = trainer.evaluate(splits["test"], metric_key_prefix="test")
    mark("tested")
    record = {
        "accuracy": test["test_accuracy"],
        "loss": test["test_loss"],
        "steps": trainer.state.global_step,
        "best": trainer.state.best_model_checkpoint,
        "transformers": transformers.__version__,
        "marks": marks,
    }
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
