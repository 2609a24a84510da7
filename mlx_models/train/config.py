"""Training configuration: `TrainConfig`, config.yaml, and the train.py command line.

Precedence, lowest first: `TrainConfig` defaults < config.yaml (the model's `train:` block, then
the profile) < the command line (only the values the user gave). With no model on the command
line, `default_run:` names the model and the profile. Unknown keys are errors everywhere; every
value is converted to its field's type, so `1e-5` in YAML is a float.
"""

import argparse
import dataclasses
import datetime
import difflib
import functools
import math
import os
import sys
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_json, read_json
from ..registry import config_file, dataset_registry, read_config_yaml
from . import reporting

TASKS = ("classify", "mlm", "lm")  # the trained heads (models.TASKS less "base")
LR_SCHEDULES = ("linear", "cosine", "constant")
RUN_STAMP = "MLX_MODELS_RUN_STAMP"
# The learning rate when no layer sets one: transformers' Trainer examples for full finetuning,
# PEFT's and mlx-lm's LoRA range (SmolLM2 LoRA on IMDB: 0.61 test accuracy at 2e-5, 0.71 at 1e-4).
# DoRA: the LoRA rate (Liu et al. 2024 and peft's examples use LoRA's).
METHOD_LEARNING_RATE = {"full": 2e-5, "lora": 1e-4, "dora": 1e-4}
INT_MAX = 2**31 - 1  # the largest count an option takes unless its field says otherwise
CLI_ONLY = {"out", "resume", "eval_only"}  # one invocation's, never shared defaults
NOT_IN_PROFILE = CLI_ONLY | {"model", "profile"}
# What a continued run may change; everything else comes from RUN_DIR/config.json.
RESUME_OVERRIDES = (
    "epochs",
    "max_steps",
    "eval_every",
    "save_every",
    "save_minutes",
    "memory_limit",
    "dist_timeout",
    "report_to",
    "report_to_optional",
)
EVAL_ONLY_OVERRIDES = (
    "dataset",
    "data_dir",
    "batch_size",
    "eval_batch_size",
    "max_samples",
    "memory_limit",
    "report_to",
    "report_to_optional",
)


def _f(default: Any, help: str, **bounds: Any) -> Any:
    """A field with its --help text and its valid values: min/max (inclusive), above/below
    (exclusive), choices. Floats must also be finite; None is always allowed for `X | None`."""
    return field(default=default, metadata={"help": help, "bounds": bounds})


@dataclass
class TrainConfig:
    model: str = _f("minilm-l6", "model alias from config.yaml, a local model directory or a .gguf file")
    dataset: str = _f("imdb", "dataset name from config.yaml datasets:, or any name with --data-dir")
    task: str = _f("classify", "classify (sequence classification), mlm or lm (causal)", choices=TASKS)
    data_dir: str | None = _f(None, "directory with train/validation/test .json/.jsonl/.csv/.parquet files")
    lora: bool = _f(False, "train LoRA adapters (plus the task head) instead of all weights")
    dora: bool = _f(
        False,
        "DoRA: LoRA plus a trained magnitude per output feature (peft use_dora, mlx-lm fine_tune_type "
        "dora); implies --lora and takes its lora_* settings, on a 4-bit base too",
    )
    lora_rank: int = _f(8, "LoRA rank r", min=1, max=4096)
    lora_alpha: float = _f(16.0, "LoRA scale numerator: the update is scaled by alpha / rank", above=0)
    lora_dropout: float = _f(0.05, "dropout on the LoRA input", min=0, below=1)
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "comma-separated Llama projection names to adapt; mapped to the BERT/RoBERTa ones"},
    )
    adapter: str | None = _f(
        None,
        "start from a LoRA or DoRA adapter directory (PEFT or mlx-lm) for this base model; implies --lora, "
        "and its kind (--dora), rank, alpha, dropout and target modules replace the lora_* settings",
    )
    quantize: int | None = _f(None, "quantize the frozen base to 4 or 8 bits (QLoRA)", choices=(4, 8))
    num_labels: int | None = _f(
        None, "classes of the classifier; none: as many as the data has", min=2, max=100_000
    )
    from_scratch: bool = _f(False, "build the model from its config with HF's initialisation (pretraining)")
    model_config: str | None = _f(
        None, "--from-scratch: a config.json, or overrides like num_hidden_layers=4"
    )
    tokenizer: str | None = _f(
        None, "--from-scratch: a tokenizer dir; none: train a byte-level BPE on the data"
    )
    line_by_line: bool = _f(False, "mlm/lm: one example per text instead of packing texts into full blocks")
    whole_files: bool = _f(False, "a .txt corpus: one document per file instead of one per line")
    mlm_probability: float = _f(0.15, "share of the tokens masked for masked-LM", above=0, below=1)
    whole_word_masking: bool = _f(False, "mask the sub-tokens of a word together")
    profile: str | None = _f(None, "study profile from config.yaml profiles:, e.g. overfit")
    epochs: int = _f(3, "passes over the training data", min=1)
    max_steps: int | None = _f(
        None,
        "stop after this many optimizer steps (overrides epochs); 0 only evaluates (an --adapter)",
        min=0,
    )
    max_tokens: int | None = _f(
        None, "a token budget: max_steps = tokens / (global batch x max_length)", min=1
    )
    max_samples: int | None = _f(None, "use at most N train, N validation and N test examples", min=1)
    batch_size: int = _f(8, "examples per micro-batch", min=1)
    eval_batch_size: int | None = _f(None, "examples per evaluation batch; none: 4 x batch_size", min=1)
    grad_accum: int = _f(1, "micro-batches per optimizer step (batch = batch_size * grad_accum)", min=1)
    global_batch_size: int | None = _f(None, "examples per optimizer step; sets grad_accum", min=1)
    learning_rate: float | None = _f(
        None,
        "peak learning rate (AdamW); none: the method's (2e-5 in full, 1e-4 with --lora or --dora)",
        above=0,
        max=10,
    )
    weight_decay: float = _f(0.01, "AdamW weight decay", min=0)
    warmup_ratio: float = _f(0.06, "fraction of the steps warming the learning rate up", min=0, below=1)
    warmup_steps: int | None = _f(None, "warm-up in steps (instead of warmup_ratio)", min=0)
    min_learning_rate: float = _f(0.0, "learning rate at the end of the decay", min=0)
    lr_schedule: str = _f("linear", "learning-rate decay after warm-up", choices=LR_SCHEDULES)
    max_grad_norm: float | None = _f(1.0, "clip the global gradient norm; none disables", above=0)
    max_length: int = _f(512, "truncate every example to this many tokens", min=2)
    grad_checkpoint: bool = _f(False, "recompute layer activations in the backward pass to save memory")
    dropout: float | None = _f(None, "dropout of the whole model; none keeps the model's own", min=0, below=1)
    early_stopping_patience: int | None = _f(None, "stop after N evaluations without a better one", min=1)
    eval_every: int | None = _f(None, "evaluate every N optimizer steps; none: once per epoch", min=1)
    save_every: int | None = _f(None, "also keep a checkpoint iter-<step>/ every N steps", min=1)
    save_points: int | None = _f(
        None, "keep iter-0/ (the start) and N evenly spaced checkpoints iter-<step>/, each evaluated", min=1
    )
    save_minutes: float | None = _f(
        5.0, "also write last/ when this many minutes passed since it was", above=0
    )
    seed: int = _f(0, "seed of initialisation, shuffling, dropout, subsampling", min=0, max=2**32 - 1)
    out: str | None = _f(None, "run directory; default results/models/<model>-<dataset>-<YYYYmmdd-HHMMSS>")
    resume: str | None = _f(None, "continue the run in RUN_DIR from its last checkpoint")
    eval_only: str | None = _f(None, "only evaluate the best checkpoint of RUN_DIR")
    memory_limit: float | None = _f(None, "cap on accelerator memory in GB", above=0, max=1e6)
    padding_side: str = _f("right", "pad batches on the right or the left", choices=("right", "left"))
    compile: bool = _f(True, "compile the training step with mx.compile")
    dist_timeout: float = _f(
        600.0, "mlx.launch runs: seconds a rank waits for the others before it stops", above=0
    )
    report_to: list[str] | None = _f(
        None,
        "also log every metrics.jsonl record and the resolved config to tensorboard (RUN/tensorboard/), "
        "wandb (project $WANDB_PROJECT or mlx_models; WANDB_MODE=offline needs no network), both "
        "(tensorboard,wandb) or all (those installed); rank 0 logs",
    )
    report_to_optional: bool = _f(
        False,
        "a --report-to logger that cannot start or write (W&B unreachable) is dropped with a warning "
        "instead of stopping the run",
    )

    @property
    def method(self) -> str:
        """full, lora or dora (a 4-bit base is QLoRA: lora or dora on it)."""
        return "dora" if self.dora else "lora" if self.lora else "full"

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            try:
                setattr(self, f.name, convert(getattr(self, f.name), field_types()[f.name]))
            except ValueError as e:
                problems.append(f"{f.name}: {e}")
                continue
            problems += bound_problems(f.name, getattr(self, f.name), **f.metadata.get("bounds", {}))
        if isinstance(self.report_to, list):  # transformers' names: lower case
            self.report_to = [name.lower() for name in self.report_to] or None
            problems += reporting.value_problems(self.report_to)
        # An imported adapter, and DoRA, are LoRA runs.
        self.lora = self.lora or self.dora or self.adapter is not None
        if self.learning_rate is None:  # the method's rate: adapters learn far less at a full one's
            self.learning_rate = METHOD_LEARNING_RATE[self.method]
        problems += self._batch_problems()
        checks = [
            (not self.lora_targets, "lora_targets must name at least one projection"),
            (
                self.from_scratch and self.lora,
                "--from-scratch trains every weight: drop --lora/--dora/--adapter",
            ),
            (
                bool(self.model_config or self.tokenizer) and not self.from_scratch,
                "--model-config and --tokenizer only apply with --from-scratch",
            ),
            (self.min_learning_rate > self.learning_rate, "min_learning_rate must not exceed learning_rate"),
            (self.quantize and not self.lora, f"quantize={self.quantize} needs lora=true; pass --lora"),
            (self.resume and self.eval_only, "resume and eval_only cannot be combined"),
            (
                self.save_points is not None and self.save_every is not None,
                "save_points sets save_every from the run's length; give only one of them",
            ),
            (self.model == "tfidf" and self.task != "classify", "the tfidf baseline only does task=classify"),
            (
                self.model == "tfidf" and self.lora,
                "the tfidf baseline has no layers to adapt: drop --lora/--dora/--adapter",
            ),
        ]
        problems += [what for wrong, what in checks if wrong]
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    def _batch_problems(self) -> list[str]:
        """global_batch_size = batch_size x grad_accum x ranks (build.accumulation sets grad_accum)."""
        size, micro = self.global_batch_size, self.batch_size
        if size and micro >= 1 and size % micro:
            return [f"global_batch_size {size} is not a multiple of batch_size {micro}"]
        return []

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        raw = read_json(path, ConfigError, "it is written by train.py: start a new run")
        return cls(**check_keys(raw, str(path)))


def save_train_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    atomic_write_json(path, dataclasses.asdict(cfg))


# ---- values and keys ----------------------------------------------------------------------------


@functools.cache
def field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def bound_problems(name: str, value: Any, **bounds: Any) -> list[str]:
    """What is wrong with ``value`` against the field's bounds (see `_f`), if anything."""
    if value is None:
        return []
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{name} must be a finite number (got {value})"]
    if type(value) is int and "max" not in bounds and "choices" not in bounds and value > INT_MAX:
        return [f"{name} must be <= {INT_MAX} (got {value})"]  # a count NumPy and MLX can hold
    rules = {
        "min": (lambda v, b: v >= b, ">="),
        "max": (lambda v, b: v <= b, "<="),
        "above": (lambda v, b: v > b, ">"),
        "below": (lambda v, b: v < b, "<"),
        "choices": (lambda v, b: v in b, "one of"),
    }
    problems = []
    for rule, bound in bounds.items():
        ok, word = rules[rule]
        if not ok(value, bound):
            shown = ", ".join(map(str, bound)) if rule == "choices" else bound
            problems.append(f"{name} must be {word} {shown} (got {value!r})")
    return problems


def _int(text: str) -> int:
    try:
        number = float(text)  # "1e3" is a fine way to write 1000
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise ValueError(f"expected an integer, got {text!r}")
    return int(number) if "e" in text.lower() or "." in text else int(text)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return text.lower() in ("true", "yes", "on", "1")
    raise ValueError(f"expected true or false, got {text!r}")


PARSERS = {
    int: _int,
    float: _float,
    bool: _bool,
    str: str,
    list[str]: lambda text: [part.strip() for part in text.split(",") if part.strip()],
}


def convert(value: Any, tp: Any) -> Any:
    """A YAML, JSON or command-line value -> a field of type ``tp``; ValueError says what was expected."""
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else tp
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        if optional:
            return None
        raise ValueError("must not be none")
    if isinstance(value, bool) and base is not bool:
        raise ValueError(f"expected {base.__name__}, got {value!r}")
    if isinstance(value, list | tuple):
        value = ",".join(map(str, value))
    if isinstance(value, dict):
        raise ValueError(f"expected a single value, got a mapping {value!r}")
    return PARSERS[base](str(value).strip())


def check_keys(layer: dict, where: str, forbidden: Collection[str] = ()) -> dict:
    """Normalise keys (dashes -> underscores), reject unknown or misplaced ones, convert the values."""
    types_ = field_types()
    out, problems = {}, []
    for raw_key, value in layer.items():
        key = str(raw_key).strip().lstrip("-").replace("-", "_")
        if key not in types_:
            close = difflib.get_close_matches(key, types_, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see `python train.py --help`"
            problems.append(f"unknown training key {raw_key!r} in {where}; {hint}")
        elif key in forbidden:
            problems.append(f"{key!r} cannot be set in {where}; pass it on the command line")
        else:
            try:
                out[key] = convert(value, types_[key])
            except ValueError as e:
                problems.append(f"{where}: {key}: {e}")
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def resolve_model_alias(name: str, config_path: str | os.PathLike | None = None) -> dict:
    """The config.yaml entry of a model: {"name", "source", "quantize", "train", "params"}.

    A local directory or .gguf file is accepted as a model without an entry.
    """
    config_path = config_path or config_file()
    models = read_config_yaml(config_path)["models"]
    if name in models:
        entry = {"name": name, "quantize": None, "params": {}} | models[name]
        entry["train"] = check_keys(entry.get("train") or {}, f"models.{name}.train", NOT_IN_PROFILE)
        return entry
    path = Path(name).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return {"name": path.stem, "source": str(path), "quantize": None, "train": {}, "params": {}}
    raise ConfigError(
        f"unknown model {name!r}; known aliases: {', '.join(models)} "
        f"(or pass a local model directory or .gguf file)"
    )


# ---- command line -------------------------------------------------------------------------------

_EPILOG = f"""\
Any option can also be given as key=value (model=roberta-base learning_rate=1e-5); dashes and
underscores are both accepted in keys. Booleans: --lora / --no-lora or lora=true. Lists: comma
separated. Precedence, lowest first: built-in defaults < config.yaml (the model's train: block,
then the profile) < the command line. Without a model on the command line, config.yaml's
default_run: names the model and the profile. With --resume RUN_DIR the settings come from
RUN_DIR/config.json and only {", ".join(RESUME_OVERRIDES)} may be changed; with --eval-only
RUN_DIR only {", ".join(EVAL_ONLY_OVERRIDES)}. `--study NAME` trains every model x dataset of a
study in config.yaml's model_selection: (python -m mlx_models.study --help). `--ranks N`
runs N data-parallel processes on this machine, judged as one (exit 0 only if every rank did).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        allow_abbrev=False,  # --learning must not silently mean --learning-rate
        exit_on_error=False,  # bad arguments become a one-line ConfigError, not a usage dump
        description="Finetune or pretrain a model (or the tfidf baseline); results go to the run directory.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="set any option below by its name")
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = ",".join(default) if isinstance(default, list) else "none" if default is None else default
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS}
        if field_types()[f.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = f.name.upper()
        bounds = [
            f"{rule} {', '.join(map(str, b)) if rule == 'choices' else b}"
            for rule, b in f.metadata.get("bounds", {}).items()
        ]
        help_ = f"{f.metadata['help']} ({'; '.join([*bounds, f'built-in default: {shown}'])})"
        parser.add_argument("--" + f.name.replace("_", "-"), help=help_, **kwargs)
    return parser


# Lit-GPT's flag names (its RoBERTa pretraining and finetuning recipes) -> ours.
FLAG_ALIASES = {
    "model_name": "model", "output_dir": "out", "out_dir": "out", "num_epochs": "epochs",
    "train.global_batch_size": "global_batch_size", "train.micro_batch_size": "batch_size",
    "train.max_tokens": "max_tokens", "train.learning_rate": "learning_rate", "train.epochs": "epochs",
    "train.lr_warmup_steps": "warmup_steps", "train.save_interval": "save_every",
    "train.max_seq_length": "max_length", "eval.interval": "eval_every", "use_agnews": "dataset=ag_news",
}  # fmt: skip


def normalise_flags(argv: list[str]) -> list[str]:
    """``--data_dir`` is ``--data-dir``; Lit-GPT's names (``--train.micro_batch_size``) are ours."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            alias = FLAG_ALIASES.get(name, name)
            if "=" in alias:  # a flag that stands for a setting: --use_agnews
                out.append(alias)
                continue
            token = "--" + alias.replace("_", "-") + eq + value
        out.append(token)
    return out


def parse_command_line(argv: list[str]) -> dict:
    """The values the user gave, flags and key=value tokens alike, converted and checked."""
    try:
        args, unknown = build_parser().parse_known_intermixed_args(normalise_flags(argv))
    except argparse.ArgumentError as e:
        hint = "; write --flag / --no-flag or flag=true" if "/--no-" in (e.argument_name or "") else ""
        raise ConfigError(f"{e}{hint}") from e
    for token in unknown:
        if token.startswith("-"):
            check_keys({token.split("=")[0]: None}, "the command line")  # raises with suggestions
        raise ConfigError(f"unexpected command-line argument {token!r}")
    pairs = {}
    for token in args.overrides:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"argument {token!r} is not key=value; write e.g. model=roberta-base or --model X"
            )
        pairs[key] = value
    pairs = check_keys(pairs, "the command line")
    flags = check_keys({k: v for k, v in vars(args).items() if k != "overrides"}, "the command line")
    if both := sorted(set(pairs) & set(flags)):
        raise ConfigError(f"{', '.join(both)} given twice on the command line; keep one")
    return flags | pairs


def load_train_config(argv: list[str] | None, config_path: str | os.PathLike | None = None) -> TrainConfig:
    """Resolve the training config from defaults, config.yaml and argv (None = sys.argv[1:])."""
    config_path = config_path or config_file()
    cli = parse_command_line(list(argv) if argv is not None else sys.argv[1:])
    if cli.get("resume") and cli.get("eval_only"):
        raise ConfigError("--resume and --eval-only cannot be combined; pass one of them")
    run_dir = cli.get("resume") or cli.get("eval_only")
    cfg = _from_run_dir(cli, run_dir) if run_dir else TrainConfig(**_merge_layers(cli, config_path))
    _check_model_and_data(cfg, config_path)
    cfg.report_to = reporting.resolve(cfg.report_to)  # a missing package fails here, before any writing
    if not run_dir and Path(cfg.out).exists():
        raise ConfigError(
            f"output directory {cfg.out} already exists; choose another --out, "
            f"or pass --resume {cfg.out} to continue that run"
        )
    return cfg


def _merge_layers(cli: dict, config_path: str | os.PathLike) -> dict:
    project = read_config_yaml(config_path)
    default_run = {} if "model" in cli else _default_run(project["default_run"], config_path)
    model = cli.get("model") or default_run.get("model") or TrainConfig.model
    profile_name = cli.get("profile", default_run.get("profile"))
    profile = {}
    if profile_name is not None:
        if profile_name not in project["profiles"]:
            raise ConfigError(
                f"unknown profile {profile_name!r}; "
                f"profiles in {config_path}: {', '.join(project['profiles'])}"
            )
        where = f"profiles.{profile_name}"
        profile = check_keys(project["profiles"][profile_name] or {}, where, NOT_IN_PROFILE)
    merged = resolve_model_alias(model, config_path)["train"] | profile | cli
    merged |= {"model": model, "profile": profile_name}
    if "data_dir" in cli and "dataset" not in cli:
        merged["dataset"] = "local"  # a run named after the dataset it actually used
    if merged.get("out") is None:
        merged["out"] = default_run_dir(model, merged.get("dataset", TrainConfig.dataset), config_path)
    return merged


def _default_run(section: dict, config_path: str | os.PathLike) -> dict:
    for key in section:
        if key not in ("model", "profile"):
            raise ConfigError(
                f"unknown training key {key!r} in {config_path} default_run:; it names a model and a "
                f"profile (put other settings in the profile)"
            )
    return {k: convert(v, str | None) for k, v in section.items()}


def _from_run_dir(cli: dict, run_dir: str) -> TrainConfig:
    mode, allowed = ("resume", RESUME_OVERRIDES) if "resume" in cli else ("eval_only", EVAL_ONLY_OVERRIDES)
    flag = "--" + mode.replace("_", "-")
    if extra := sorted(set(cli) - set(allowed) - {mode}):
        raise ConfigError(
            f"{flag} takes its settings from {run_dir}/config.json; "
            f"cannot change {', '.join(extra)} (allowed: {', '.join(allowed)})"
        )
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found; {flag} needs a run directory written by train.py")
    saved = dataclasses.asdict(TrainConfig.from_json(path)) | {"resume": None, "eval_only": None}
    return TrainConfig(**(saved | cli | {"out": str(run_dir)}))


def default_run_dir(model: str, dataset: str, config_path: str | os.PathLike | None = None) -> str:
    config_path = config_path or config_file()
    name = resolve_model_alias(model, config_path)["name"]
    # The launcher gives every rank of a data-parallel run one stamp, hence one run directory.
    stamp = os.environ.get(RUN_STAMP) or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("results") / "models" / f"{name}-{dataset}-{stamp}")


def _check_model_and_data(cfg: TrainConfig, config_path: str | os.PathLike) -> None:
    resolve_model_alias(cfg.model, config_path)  # raises for an unknown alias
    if cfg.data_dir is not None:
        if not Path(cfg.data_dir).is_dir() and (cfg.task == "classify" or Path(cfg.data_dir).exists()):
            raise ConfigError(
                f"data_dir {cfg.data_dir} is not a directory; pass a directory with train.* files"
            )
        return
    registry = dataset_registry(config_path)
    if cfg.dataset not in registry:
        raise ConfigError(
            f"unknown dataset {cfg.dataset!r}; registered: {', '.join(registry)} "
            f"(or pass --data-dir DIR with train/validation/test files)"
        )
