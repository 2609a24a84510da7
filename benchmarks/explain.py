"""Integrated Gradients, ours (MLX) vs captum (PyTorch), on the same inputs in the same run; and
occlusion and the faithfulness deletions against evaluation's tokens/s.

    python benchmarks/explain.py [--n 100] [--steps 50] [--max-length 128] [--quick] [--out FILE]

all-MiniLM-L6-v2 (the embedded checkpoint) with a seeded 2-label head; N IMDB test reviews (the
explain CLI's stratified pick), truncated to --max-length tokens; IG of the predicted class's
probability on the word embeddings, Gauss-Legendre, pad baseline with the special tokens kept;
batches of 16 texts sorted by length, at most 64 rows (texts x steps) per pass on both sides.
Ours is `MLXScorer.gradient`, the CLI's own path (it also runs f(x) and f(baseline): 2 forward
passes per batch more than captum). captum's LayerIntegratedGradients runs in a child process
(captum_peer.py) on the very same padded batches. The attributions are compared too.
Occlusion (every text less one word) and the ERASER deletions (top-k% removed or kept, for
random rankings) are timed on the same reviews as tokens scored per second, next to the
trainer's compiled evaluation (train.evaluation) of the reviews themselves.
Writes --out (default benchmarks/explain.md; --quick writes nothing unless --out is given).
"""

# ruff: noqa: I001, E402  (mlx_models loads OpenBLAS before any mlx.core import)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mlx_models  # noqa: F401  (OpenBLAS before MLX)

import argparse
import json
import subprocess
import tempfile
import time

from run import load, machine, publish

import mlx.core as mx
import numpy as np

from mlx_models import load_model, load_tokenizer
from mlx_models.train.config import TrainConfig
from mlx_models.train.data import SPLIT_SEED, load_splits, pick_stratified
from mlx_models.explain.runner import Example, MLXScorer, Options, explain_examples, score
from mlx_models.batching import PAD_MULTIPLE, token_budget_batches
from mlx_models.explain.words import keep_tokens
from mlx_models.train.evaluation import Evaluator, evaluate
from mlx_models.interop.loading import resolve


def reviews(n: int) -> list[Example]:
    test = load_splits(TrainConfig(max_samples=None)).test
    test = test.take(pick_stratified(test.labels, len(test), n, SPLIT_SEED)[1])
    return [Example(t, y) for t, y in zip(test.texts, test.labels, strict=True)]


def captum_inputs(work: Path, scorer: MLXScorer, toks, targets, directory: Path, steps: int) -> list:
    """The padded batches ours runs on, for the child process; returns each batch's indices."""
    arrays, order = {}, []
    for b, (idx, ids, mask) in enumerate(scorer.batches([t.ids for t in toks])):
        keep = np.isin(ids, scorer.tokenizer.all_special_ids) | (mask == 0)
        arrays |= {f"ids_{b}": ids, f"mask_{b}": mask, f"target_{b}": targets[idx]}
        arrays[f"base_{b}"] = np.where(keep, ids, scorer.baseline_id)
        order.append((idx, mask))
    head = scorer.model.classifier
    meta = {"model_dir": str(directory), "num_labels": 2, "batches": len(order), "steps": steps, "rows": 64}
    np.savez(
        work / "inputs.npz",
        meta=json.dumps(meta),
        classifier_weight=np.array(head.weight),
        classifier_bias=np.array(head.bias),
        **arrays,
    )
    return order


class Counted:
    """Tokens of the perturbed texts the scorer scores (``proba_kept``), their padded tokens (the
    batches ``proba_ids`` makes of them) and their seconds."""

    def __init__(self, scorer: MLXScorer):
        self.tokens, self.padded, self.seconds = 0, 0, 0.0
        self.scorer, self.proba_kept = scorer, scorer.proba_kept
        scorer.proba_kept = self

    def __call__(self, kept):
        tic = time.perf_counter()
        out = self.proba_kept(kept)
        self.seconds += time.perf_counter() - tic
        lengths = [len(keep_tokens(t.ids, t.token_word, k)) for _, t, masks in kept for k in masks]
        self.tokens += sum(lengths)
        budget = self.scorer.options.batch_size * self.scorer.max_length
        for batch in token_budget_batches(lengths, budget, PAD_MULTIPLE):
            self.padded += len(batch) * -(-max(lengths[i] for i in batch) // PAD_MULTIPLE) * PAD_MULTIPLE
        return out

    def row(self, name: str, speed: float) -> str:
        rate, padded = self.tokens / self.seconds, self.padded / self.seconds
        share = self.tokens / self.padded
        return f"| {name} | {rate:.0f} | {rate / speed:.2f}× | {share:.0%} | {padded:.0f} |"


def perturbation_rows(scorer: MLXScorer, examples: list[Example], toks) -> str:
    """Evaluation, occlusion and the deletions of 4 random rankings, as tokens scored per second
    (and the share of padding in the batches they go in)."""
    encoded, labels = [t.ids for t in toks], [e.label for e in examples]
    ev = evaluate(Evaluator(scorer.model, "classify"), encoded, labels, batch_size=16, pad_id=scorer.pad_id)
    options = Options(random_draws=4)
    warm = explain_examples(scorer, examples, [], "pred", options)  # compiles every shape, not timed
    score(scorer, "occlusion", examples, warm, options)
    counted = Counted(scorer)
    out = explain_examples(scorer, examples, [], "pred", options)  # the deletions of random rankings
    deletions = counted.row("deletions (top 1–50% removed or kept)", ev["tokens_per_s"])
    counted.tokens, counted.padded, counted.seconds = 0, 0, 0.0
    score(scorer, "occlusion", examples, out, options)
    occlusion = counted.row("occlusion: every review less one word", ev["tokens_per_s"])
    scorer.proba_kept = counted.proba_kept
    return (
        "| forward passes (explain: batches of 16 x max-length tokens) | tokens/s | vs evaluation "
        "| tokens / padded tokens | padded tokens/s |\n"
        "|---|---:|---:|---:|---:|\n"
        f"| evaluation (`train.evaluation.evaluate`, compiled) of the reviews | {ev['tokens_per_s']:.0f} "
        "| 1.00× | – | – |\n"
        f"{occlusion}\n{deletions}\n"
    )


def ig_flops(args, shapes: list[tuple[int, int]], steps: int, first_only: bool = True) -> float:
    """IG's arithmetic on an encoder, for padded batches of (texts, length L): per token and layer,
    the forward's linear layers 2 (4 d² + 2 d f) and attention 4 L d; the input gradient as much
    for the linears and twice it for attention (no weight gradients); ``steps`` forward and
    backward passes, and 2 forward passes more (f(x) and f(baseline)). ``first_only``: the last
    layer as our classifiers compute it (keys and values of every token, the rest for the first
    token alone); False: as transformers computes it, every token."""
    d, f, layers = args.hidden_size, args.intermediate_size, args.num_hidden_layers
    total = 0.0
    for texts, length in shapes:
        linear, attention = 2 * (4 * d * d + 2 * d * f), 4 * length * d
        forward, backward = [linear + attention] * layers, [linear + 2 * attention] * layers
        per_text = [length * (steps + 2) * sum(forward), length * steps * sum(backward)]
        if first_only:  # the last layer: keys and values for every token, the rest for one
            kv, one = 4 * d * d * length, 4 * d * d + 4 * d * f
            per_text[0] += (steps + 2) * (kv + one + attention - length * forward[-1])
            per_text[1] += steps * (kv + one + 2 * attention - length * backward[-1])
        total += texts * sum(per_text)
    return total


def sgemm_rate(m: int, k: int, n: int, repeats: int = 10) -> float:
    """FLOP/s of MLX's float32 matmul (the BLAS's sgemm) for (m, k) @ (k, n): this CPU's ceiling."""
    a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
    mx.eval(a, b)
    for _ in range(3):
        mx.eval(a @ b)
    tic = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ b)
    return 2 * m * k * n * repeats / (time.perf_counter() - tic)


def ceiling_rows(args, shapes: list[tuple[int, int]], steps: int, ours_s: float, captum_s: float) -> str:
    """Each side's arithmetic rate next to the sgemm's, at the shape of the model's MLP product in a
    64-row pass: what speed the arithmetic allows."""
    flops, full = ig_flops(args, shapes, steps), ig_flops(args, shapes, steps, first_only=False)
    rate = sgemm_rate(64 * max(length for _, length in shapes), args.hidden_size, args.intermediate_size)
    row = lambda name, s, n: f"| {name} | {s:.1f} | {n / s / 1e9:.0f} | {n / s / rate:.0%} |"  # noqa: E731
    return "\n".join(
        [
            f"IG's arithmetic (`ig_flops`): {flops / 1e12:.2f} TFLOP as ours computes it (the last layer "
            f"for the first token alone), {full / 1e12:.2f} TFLOP as transformers does (every token). "
            f"This CPU's sgemm (MLX float32 matmul, the MLP's shape) runs at {rate / 1e9:.0f} GFLOP/s.\n",
            "| | seconds | GFLOP/s | of the sgemm rate |",
            "|---|---:|---:|---:|",
            row("ours", ours_s, flops),
            row("captum", captum_s, full),
            row("ours at 2× captum's speed (the issue's target)", captum_s / 2, flops),
            "",
        ]
    )


def run(n: int, steps: int, max_length: int) -> str:
    directory = resolve("minilm-l6")
    mx.random.seed(0)
    model, tok = load_model(directory, "classify"), load_tokenizer(directory)
    scorer = MLXScorer(model, tok, max_length, "right", Options(steps=steps, batch_size=16, rows=64))
    examples = reviews(n)
    toks = scorer.prepare(examples)
    targets = scorer.proba_examples(examples, toks).argmax(1)
    scorer.gradient("ig", toks[:2], targets[:2])  # warm-up, not timed
    tic = time.perf_counter()
    ours = scorer.gradient("ig", toks, targets)
    ours_s = time.perf_counter() - tic
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        order = captum_inputs(work, scorer, toks, targets, directory, steps)
        peer = Path(__file__).with_name("captum_peer.py")
        proc = subprocess.run([sys.executable, str(peer), str(work)], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"captum peer failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        theirs = np.load(work / "captum.npz")
        worst = 0.0
        for b, (idx, mask) in enumerate(order):
            for row, i in enumerate(idx):
                ref = theirs[f"tokens_{b}"][row][mask[row].astype(bool)]
                worst = max(worst, float(np.abs(ours[i][0] - ref).max() / np.abs(ref).max()))
    captum_s = sum(result["times"])
    tokens = sum(len(t.ids) for t in toks)
    shapes = [mask.shape for _, mask in order]
    ceiling = ceiling_rows(model.args, shapes, steps, ours_s, captum_s)
    perturbation = perturbation_rows(scorer, examples, toks)
    return (
        f"{n} IMDB test reviews, {tokens} tokens in all (≤ {max_length} per review), {steps} Gauss-Legendre "
        f"steps, batches of 16 texts, 64 rows per pass; PyTorch with {result['threads']} threads.\n\n"
        "| | seconds | reviews/s | ratio (speed) |\n|---|---:|---:|---:|\n"
        f"| ours: MLX (`MLXScorer.gradient`, CPU, OpenBLAS) | {ours_s:.1f} | {n / ours_s:.2f} "
        f"| {captum_s / ours_s:.2f}× |\n"
        f"| captum `LayerIntegratedGradients`, transformers, PyTorch CPU | {captum_s:.1f} "
        f"| {n / captum_s:.2f} | 1.00× |\n\n"
        f"Agreement: max over reviews of max |ours − captum| / max |captum| per review = {worst:.1e}.\n\n"
        f"{ceiling}\n{perturbation}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="reviews (default 100)")
    p.add_argument("--steps", type=int, default=50, help="IG steps (default 50)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per review (default 128)")
    p.add_argument("--quick", action="store_true", help="8 reviews of 32 tokens, 8 steps: a smoke run")
    p.add_argument("--out", help="markdown file (default benchmarks/explain.md; none with --quick)")
    args = p.parse_args(argv)
    n, steps, length = (8, 8, 32) if args.quick else (args.n, args.steps, args.max_length)
    out = args.out or (None if args.quick else str(Path(__file__).with_name("explain.md")))
    command = "python benchmarks/explain.py " + " ".join(sys.argv[1:] if argv is None else argv)
    tic = time.perf_counter()
    head = f"# Integrated Gradients: ours vs captum\n\nCommand: `{command.strip()}`\n\n{machine()}\n"
    print(head, flush=True)
    body = run(n, steps, length)
    text = f"{head}\n{body}\nWall time: {time.perf_counter() - tic:.0f} s; load average at end: {load()}.\n"
    publish(text, body, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
