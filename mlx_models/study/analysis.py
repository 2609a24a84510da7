"""A study cell's analysis: every checkpoint its run saved, in training order, one file each.

    python -m mlx_models.study.analysis RUN_DIR OUT_DIR --probe-file FILE [options]

The study runs this as a child process once a cell has trained (a 7B never shares memory with
the study). For each checkpoint (iter-N by step, then best and last) it writes OUT_DIR/<name>.json:
- the probe texts explained towards their gold label, so every model and checkpoint explains
  the same class (attributions of every method, faithfulness next to random rankings,
  predictions), as explain's attributions.jsonl records;
- the class probabilities of up to --members training examples and as many held-out (test)
  examples: what membership inference, calibration and the data map are computed from.
A file written is never redone: a killed analysis resumes at the next checkpoint. Checkpoints
saved at the same step (best or last and an iter-N) are analysed once. At the end it writes
OUT_DIR/index.html, the attribution page with a column per checkpoint. The probe texts are shared
by every model of a dataset: the first cell analysed writes FILE (a stratified pick of its test
split), the others read it.
"""

import argparse
import json
import sys
from pathlib import Path

from ..cli import ArgumentParser, int_between, run_cli
from ..errors import ConfigError
from ..explain import report as explain_report
from ..explain.cli import Run, open_run
from ..explain.runner import (
    METHODS,
    Column,
    Example,
    Options,
    TfidfScorer,
    explain_examples,
    scorer_for,
)
from ..explain.tfidf import non_predictive
from ..io import atomic_write_json, atomic_write_text, read_json
from ..train.data import SPLIT_SEED, load_splits, pick_stratified
from ..train.trained import load_trained


def probe_examples(path: Path, test, dataset: str, n: int) -> list[Example]:
    """The dataset's probe texts: read from ``path``, else picked from ``test`` (the test split;
    stratified, fixed) and written there."""
    if not path.is_file():
        if n > len(test):
            raise ConfigError(
                f"the probe asks for {n} texts but {dataset}'s test split has {len(test)}; "
                f"lower analysis.probe in the study entry"
            )
        keep = stratified(test.labels, n)
        lines = [json.dumps({"text": test.texts[i], "label": int(test.labels[i])}) for i in keep]
        atomic_write_text(path, "\n".join(lines) + "\n")
    probe = read_probe(path)
    if len(probe) != n:
        raise ConfigError(f"{path} holds {len(probe)} probe texts, the study asks for {n}; remove it")
    return probe


def read_probe(path: Path) -> list[Example]:
    return [Example(r["text"], r["label"]) for r in map(json.loads, path.read_text("utf-8").splitlines())]


def stratified(labels: list[int], n: int) -> list[int]:
    """A fixed pick of ``n`` indices, stratified by label (all of them when n covers the split)."""
    return (
        list(range(len(labels)))
        if n >= len(labels)
        else pick_stratified(labels, len(labels), n, SPLIT_SEED)[1]
    )


def membership_sets(splits, n: int) -> dict[str, tuple[list[str], list[int]]]:
    """Up to ``n`` of the run's training examples (members) and as many test examples (held out),
    each a stratified, fixed pick."""
    n = min(n, len(splits.train), len(splits.test))
    out = {}
    for name, split in (("members", splits.train), ("heldout", splits.test)):
        keep = stratified(split.labels, n)
        out[name] = ([split.texts[i] for i in keep], [int(split.labels[i]) for i in keep])
    return out


def analyse_checkpoint(
    scorer, probe: list[Example], sets: dict, methods: list[str], options: Options
) -> dict:
    """One checkpoint: the probe explained, and the class probabilities of the membership sets."""
    explained = explain_examples(scorer, probe, methods, "gold", options)
    column = Column("", "", 0, methods, explained)
    records = [
        explain_report.record(i, e, column, o) for i, (e, o) in enumerate(zip(probe, explained, strict=True))
    ]
    for r in records:
        for key in ("run", "checkpoint", "step", "text", "tokens", "token_words", "token_scores"):
            r.pop(key)  # the text is in the probe file; tokens are the model's business
    if isinstance(scorer, TfidfScorer):  # the words it finds non-predictive, for every model's share
        for r, e in zip(records, probe, strict=True):
            r["non_predictive"] = non_predictive(scorer.pipeline, e.words).tolist()
    out = {"methods": methods, "probe": records}
    for name, (texts, labels) in sets.items():
        proba = scorer.proba_texts(texts)
        out[name] = {"labels": labels, "proba": [[float(f"{p:.7g}") for p in row] for row in proba]}
    return out


def analyse_run(run: Run, out: Path, probe: list[Example], sets: dict, methods: list[str], options: Options):
    """Every checkpoint of ``run`` not analysed yet; returns {name: result} for all of them."""
    done, trained = {}, None
    for name, path, step in run.checkpoints:
        target = out / f"{name}.json"
        if not target.is_file() or read_json(target, ConfigError)["step"] != step:  # new, or a stale file
            same = next((f for f, s in done.items() if s["step"] == step), None)
            if same is not None:  # the same weights as a checkpoint analysed already
                result = done[same] | {"checkpoint": name, "same_as": same}
            else:
                print(f"analysing {run.path.name}/{name} (step {step})", file=sys.stderr)
                trained = load_trained(path, reuse=trained)
                scorer = scorer_for(trained, options)
                result = {"checkpoint": name, "step": step} | analyse_checkpoint(
                    scorer, probe, sets, methods, options
                )
            atomic_write_json(target, result)
        done[name] = read_json(target, ConfigError, f"remove {target} and run the study again")
    return done


def columns_of(run_name: str, results: dict[str, dict]) -> list[Column]:
    """Analysis files (checkpoint name -> its result) as explain's report columns."""
    return [
        Column(
            run_name, name, r["step"], r["methods"], [explain_report.explained_from(p) for p in r["probe"]]
        )
        for name, r in results.items()
    ]


def write_page(out: Path, run_name: str, probe: list[Example], results: dict, class_names: list[str]) -> None:
    """OUT_DIR/index.html: the probe texts coloured by attribution, a column per checkpoint."""
    page = explain_report.html_page(probe, columns_of(run_name, results), class_names, len(probe))
    atomic_write_text(out / "index.html", page)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m mlx_models.study.analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the cell's run directory")
    p.add_argument("out", help="where the analysis files go")
    p.add_argument("--probe-file", required=True, help="the dataset's probe texts (written if missing)")
    p.add_argument("--probe", type=int_between(1, 10**6), default=100, help="probe texts")
    p.add_argument("--members", type=int_between(1, 10**7), default=500, help="training examples scored")
    p.add_argument("--methods", default="ig", help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--steps", type=int_between(2, 10_000), default=20, help="IG quadrature points")
    p.add_argument("--random-draws", type=int_between(1, 1000), default=3, help="random rankings per text")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = open_run(Path(args.run), "all")
    methods = run.scorer.methods([m.strip() for m in args.methods.split(",")], run.first)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(run.cfg)
    probe = probe_examples(Path(args.probe_file), splits.test, run.cfg.dataset, args.probe)
    sets = membership_sets(splits, args.members)
    options = Options(steps=args.steps, random_draws=args.random_draws)
    results = analyse_run(run, out, probe, sets, methods, options)
    names = splits.label_names or [str(i) for i in range(run.first.num_labels)]
    write_page(out, run.path.name, probe, results, names)
    print(f"analysed {len(results)} checkpoints of {run.path.name} -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
