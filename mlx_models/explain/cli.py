"""Token attributions for trained runs, compared across models, tokenizers and checkpoints.

    python -m mlx_models.explain RUN [RUN ...] --out DIR [--checkpoint best|last|iter-N|all]
        [--split test --n 200 | --texts FILE] [--method ig,grad-input,occlusion,shap]
        [--target pred|gold] [--tfidf TFIDF_RUN]

RUN is a run directory written by train.py (BERT, RoBERTa, Llama: full, LoRA or QLoRA; or the
TF-IDF baseline, whose gradient methods are its exact linear contributions). DIR receives,
atomically: attributions.jsonl (one line per text and checkpoint), index.html (words coloured by
attribution, a column per model or checkpoint), summary.md and summary.json (faithfulness per
method next to random rankings, drift across checkpoints, top words per class).
"""

import argparse
import contextlib
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..cli import ArgumentParser, int_between
from ..errors import ConfigError, DataError, MLXModelsError
from ..io import atomic_write_json, atomic_write_text, check_out, output_dir, read_json, read_utf8
from ..train import run_dir as rd
from ..train.config import TrainConfig
from ..train.data import FORMATS, SPLIT_SEED, load_splits, pick_stratified, read_file
from ..train.trained import Checkpoint, inputs_of, load_trained, locate
from . import report as report
from .gradients import RULES
from .runner import (
    METHODS,
    Column,
    Example,
    Options,
    TfidfScorer,
    explain_examples,
    scorer_for,
    scorer_type,
)

ITER = re.compile(r"iter-(\d+)")


@dataclass
class Run:
    path: Path
    cfg: TrainConfig
    first: Checkpoint  # the first checkpoint asked for: what kind of model the run trained
    checkpoints: list[tuple[str, Path, int]]  # (name, directory, step)

    @property
    def scorer(self) -> type:
        return scorer_type(self.first)


def open_run(path: Path, which: str) -> Run:
    """A run directory and the checkpoints ``which`` names (best, last, iter-N or all)."""
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a run directory written by train.py (no config.json)")
    if "model_type" in read_json(path / "config.json", ConfigError):  # a model's config, not a run's
        raise ConfigError(
            f"{path} is a model directory, not a run: explain takes run directories written by train.py "
            "(train a classifier on it first)"
        )
    cfg = TrainConfig.from_json(path / "config.json")
    if cfg.task != "classify":
        raise ConfigError(
            f"{path} trained a {cfg.task} model, which has no classifier to explain; "
            "explain a run trained with --task classify"
        )
    found = sorted(((p.name, p, rd.checkpoint_step(p)) for p in rd.checkpoints(path)), key=checkpoint_order)
    chosen = found if which == "all" else [c for c in found if c[0] == which]
    if not chosen:
        have = ", ".join(n for n, _, _ in found) or "none"
        raise ConfigError(
            f"{path} has no checkpoint {which!r} (checkpoints: {have}); pick one of them or all"
        )
    return Run(path, cfg, locate(chosen[0][1]), chosen)


def checkpoint_order(checkpoint: tuple[str, Path | None, int]) -> tuple:
    """iter-N by step, then best, then last: a run's checkpoints in training order."""
    name, _, step = checkpoint
    return name in ("best", "last"), name == "last", step


def read_texts(path: Path) -> list[Example]:
    """Texts to explain: a .txt file (one per line) or .json/.jsonl/.csv/.parquet with a "text"
    column and an optional integer "label" column."""
    if not path.is_file():
        raise DataError(f"--texts {path} does not exist; pass a .txt file with one text per line")
    if path.suffix == ".txt":
        rows = [(line, None) for line in read_utf8(path, DataError).splitlines() if line.strip()]
    elif path.suffix in FORMATS:
        ds = read_file(path)
        if len(ds) and "text" not in ds.column_names:
            raise DataError(f"{path} has no 'text' column (columns: {', '.join(ds.column_names)})")
        labels = ds["label"] if "label" in ds.column_names else [None] * len(ds)
        rows = list(zip(ds["text"] if len(ds) else [], labels, strict=True))
    else:
        raise DataError(f"--texts {path}: unknown format {path.suffix!r}; use .txt, {', '.join(FORMATS)}")
    if not rows:
        raise DataError(f"--texts {path} holds no texts; write one text per line")
    try:
        return [Example(str(t), None if y is None else int(y)) for t, y in rows]
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: labels must be integers ({e}); fix or drop the label column") from e


def load_examples(args, run: Run) -> tuple[list[Example], list[str] | None, str]:
    """(examples, class names if known, where they came from)."""
    if args.texts:
        return read_texts(Path(args.texts)), None, str(args.texts)
    splits = load_splits(dataclasses.replace(run.cfg, max_samples=None))
    split = getattr(splits, args.split)
    if args.n < len(split):  # a fixed, stratified pick: the same texts for every run and call
        split = split.take(pick_stratified(split.labels, len(split), args.n, SPLIT_SEED)[1])
    examples = [Example(t, y) for t, y in zip(split.texts, split.labels, strict=True)]
    return examples, splits.label_names, f"{splits.source}, {args.split} split"


def check_examples(examples: list[Example], num_labels: int, target: str) -> None:
    empty = [i for i, e in enumerate(examples) if not e.spans]
    if empty:
        raise DataError(f"text {empty[0]} has no words; remove empty texts")
    bad = [e.label for e in examples if e.label is not None and not 0 <= e.label < num_labels]
    if bad:
        raise DataError(f"labels {sorted(set(bad))[:5]} out of range for {num_labels} classes")
    if target == "gold" and any(e.label is None for e in examples):
        raise ConfigError("--target gold needs a label for every text; use --target pred")


def check_run(run: Run, args) -> None:
    """What can be refused before any model runs."""
    run.scorer.methods(args.methods, run.first)
    run.scorer.check(run.first, args.baseline)


def explain_runs(runs: list[Run], examples: list[Example], args, options: Options) -> list[Column]:
    columns = []
    for run in runs:
        methods, done, trained = run.scorer.methods(args.methods, run.first), {}, None
        for name, path, step in run.checkpoints:
            if step not in done:  # best/last/iter-N saved at the same step hold the same weights
                print(f"explaining {run.path.name}/{name}: {', '.join(methods)}", file=sys.stderr)
                trained = load_trained(path, reuse=trained)  # a run's model is built once
                model = scorer_for(trained, options, args.max_length)
                done[step] = explain_examples(model, examples, methods, args.target, options)
            columns.append(Column(run.path.name, name, step, methods, done[step]))
    return columns


def non_predictive_flags(args, runs: list[Run], examples: list[Example]):
    """Per text, the words a TF-IDF model (--tfidf, else a TF-IDF run among RUN) finds
    non-predictive; None without a TF-IDF model."""
    from .tfidf import non_predictive

    tfidf_runs = (r.path for r in runs if r.scorer is TfidfScorer)
    path = Path(args.tfidf) if args.tfidf else next(tfidf_runs, None)
    if path is None:
        return None
    where = open_run(path, "best").first
    if scorer_type(where) is not TfidfScorer:
        raise ConfigError(f"--tfidf {path} is a {where.cfg.model} run; pass a run of train.py --model tfidf")
    pipeline = load_trained(where.path).pipeline
    return [non_predictive(pipeline, e.words) for e in examples]


def summarize(
    examples, columns: list[Column], class_names: list[str], flags, header: str
) -> tuple[str, dict]:
    """summary.md (also printed) and summary.json: faithfulness, drift, top words."""
    table, rows = report.faithfulness_table(columns)
    md = [header, "## Faithfulness (ERASER AOPC, k = 1, 5, 10, 20, 50 % of the words)", "", table, ""]
    data = {"faithfulness": rows, "drift": {}, "top_words": {}}
    for run in dict.fromkeys(c.run for c in columns):
        cols = [c for c in columns if c.run == run]
        if len(cols) < 2:
            continue
        for m in cols[0].methods:
            table, rows = report.drift_table(examples, cols, m, flags)
            md += [f"## Drift across checkpoints: {run}, {m}", "", table, ""]
            data["drift"][f"{run}/{m}"] = rows
    md += [f"## Words with the largest mean attribution per class (seen ≥ {report.MIN_COUNT} times)", ""]
    for c in columns:
        for m in c.methods:
            top = report.top_words(examples, c, m, class_names)
            data["top_words"][f"{c.label}/{m}"] = top
            md += [f"**{c.label}, {m}**", ""]
            md += [
                f"- {cls}: " + ", ".join(f"{w} ({v:.3g}, {n})" for w, v, n in words)
                for cls, words in top.items()
            ]
            md.append("")
    return "\n".join(md), data


def write_outputs(out: Path, args, examples, columns, class_names, summary: tuple[str, dict]):
    with output_dir(out, args.force, inputs(args)) as tmp:
        with (tmp / "attributions.jsonl").open("w") as f:
            for c in columns:
                for i, (e, o) in enumerate(zip(examples, c.explained, strict=True)):
                    f.write(json.dumps(report.record(i, e, c, o)) + "\n")
        atomic_write_text(tmp / "index.html", report.html_page(examples, columns, class_names, args.html_n))
        atomic_write_text(tmp / "summary.md", summary[0] + "\n")
        atomic_write_json(tmp / "summary.json", summary[1])


def inputs(args) -> list[str | Path]:
    """What the command reads (the runs, their base models, --texts, --tfidf): an --out must not
    be or hold any of it."""
    bases = []
    for run in args.runs:
        with contextlib.suppress(MLXModelsError):  # not a run of a model (TF-IDF, or not a run)
            bases += inputs_of(locate(run))
    return [*args.runs, *bases, *(p for p in (args.texts, args.tfidf) if p)]


def _methods(text: str) -> list[str]:
    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; choose from {', '.join(METHODS)}")
    return methods


def _checkpoint(text: str) -> str:
    if text not in ("best", "last", "all") and not ITER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not best, last, iter-N or all")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m mlx_models.explain",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by train.py")
    p.add_argument("--out", required=True, help="output directory (new, or an earlier output with --force)")
    p.add_argument("--force", action="store_true", help="replace an earlier output of this tool at --out")
    p.add_argument(
        "--checkpoint", type=_checkpoint, default="best", help="best, last, iter-N or all (default best)"
    )
    p.add_argument("--split", choices=("test", "validation", "train"), default="test", help="the run's split")
    p.add_argument(
        "--n",
        type=int_between(1, 10**7),
        default=200,
        help="texts from the split (stratified, fixed; default 200)",
    )
    p.add_argument(
        "--texts", help="explain these texts instead: .txt (one per line), .jsonl/.json/.csv/.parquet"
    )
    p.add_argument(
        "--method", dest="methods", type=_methods, default=["ig"], help=f"comma list of {', '.join(METHODS)}"
    )
    p.add_argument(
        "--target", choices=("pred", "gold"), default="pred", help="the class explained (default pred)"
    )
    p.add_argument("--tfidf", help="TF-IDF run whose non-predictive words the drift table counts")
    p.add_argument(
        "--steps",
        type=int_between(2, 10_000, "IG needs"),
        default=50,
        help="IG quadrature points (default 50)",
    )
    p.add_argument("--ig-rule", choices=RULES, default=RULES[0], help="IG quadrature rule")
    p.add_argument(
        "--baseline", choices=("pad", "mask"), default="pad", help="IG baseline token (default pad)"
    )
    p.add_argument(
        "--max-length", type=int_between(2, 10**6), help="token limit (default: the run's max_length)"
    )
    p.add_argument("--batch-size", type=int_between(1, 2**16), default=16, help="texts per forward pass")
    p.add_argument("--ig-rows", type=int_between(1, 2**20), default=64, help="IG: texts x points per pass")
    p.add_argument("--shap-evals", type=int_between(1, 10**6), default=500, help="SHAP: model calls per text")
    p.add_argument(
        "--random-draws", type=int_between(1, 1000), default=3, help="random rankings per text (faithfulness)"
    )
    p.add_argument(
        "--html-n", type=int_between(1, 10**6), default=50, help="texts shown in index.html (default 50)"
    )
    p.add_argument("--seed", type=int_between(0, 2**32 - 1), default=0, help="seed of the random rankings")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    check_out(out, args.force, inputs(args))
    runs = [open_run(Path(r), args.checkpoint) for r in args.runs]
    for run in runs:
        check_run(run, args)
    labels = {r.first.num_labels for r in runs}
    if len(labels) > 1:
        raise ConfigError(f"the runs classify into different numbers of classes ({sorted(labels)})")
    examples, names, source = load_examples(args, runs[0])
    n_classes = labels.pop()
    check_examples(examples, n_classes, args.target)
    class_names = names or [str(i) for i in range(n_classes)]
    flags = non_predictive_flags(args, runs, examples)
    options = Options(
        steps=args.steps,
        rule=args.ig_rule,
        baseline=args.baseline,
        batch_size=args.batch_size,
        rows=args.ig_rows,
        shap_evals=args.shap_evals,
        random_draws=args.random_draws,
        seed=args.seed,
    )
    columns = explain_runs(runs, examples, args, options)
    header = (
        f"# Token attributions\n\n{len(examples)} texts ({source}); target: {args.target}; IG: {args.steps} "
        f"steps, {args.ig_rule}, {args.baseline} baseline; random: {args.random_draws} rankings per text.\n"
    )
    summary = summarize(examples, columns, class_names, flags, header)
    write_outputs(out, args, examples, columns, class_names, summary)
    print(summary[0])
    print(f"wrote {out}", file=sys.stderr)
    return 0
