"""What `python -m mlx_models.explain` writes: attributions.jsonl records, the faithfulness and
drift tables, the words with the largest mean attribution per class, and the HTML page."""

import html
from collections import defaultdict

import numpy as np

from .drift import mass_share, rank_agreement
from .runner import GRADIENT_METHODS, Column, Example, Explained

TOP_WORDS, MIN_COUNT = 10, 3  # summary: words seen at least MIN_COUNT times in a class


def _floats(a) -> list[float | None]:
    return [None if np.isnan(v) else float(f"{v:.7g}") for v in np.asarray(a, dtype=np.float64)]


def record(i: int, e: Example, c: Column, o: Explained) -> dict:
    """One line of attributions.jsonl: one example through one model or checkpoint."""
    gap = None
    if o.completeness:
        delta = o.completeness["f_input"] - o.completeness["f_baseline"]
        gap = o.completeness | {"relative_gap": o.completeness["gap"] / abs(delta) if delta else None}
    probs = _floats(o.proba)
    return {
        "run": c.run,
        "checkpoint": c.checkpoint,
        "step": c.step,
        "example": i,
        "text": e.text,
        "label": e.label,
        "words": e.words,
        "tokens": o.tokens.tokens,
        "token_words": o.tokens.token_word.tolist(),
        "prediction": int(o.proba.argmax()),
        "probability": max(probs),
        "probabilities": probs,
        "target": o.target,
        "target_probability": probs[o.target],
        "scores": {m: _floats(s) for m, s in o.scores.items()},
        "token_scores": {m: _floats(s) for m, s in o.token_scores.items()},
        "completeness": gap,
        "faithfulness": {
            m: {"comprehensiveness": f[0], "sufficiency": f[1]} for m, f in o.faithfulness.items()
        },
    }


def explained_from(r: dict) -> Explained:
    """A ``record`` back as what the tables and the page read (scores, probabilities, target,
    faithfulness; not the tokens)."""
    scores = {m: np.array([np.nan if v is None else v for v in s]) for m, s in r["scores"].items()}
    faithfulness = {m: (f["comprehensiveness"], f["sufficiency"]) for m, f in r["faithfulness"].items()}
    return Explained(None, np.array(r["probabilities"]), r["target"], None, scores, faithfulness=faithfulness)


def _fmt(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def faithfulness_table(columns: list[Column]) -> tuple[str, list[dict]]:
    """Mean AOPC per column and method, the random ranking beside it, and IG's completeness gap."""
    lines = [
        "| model / checkpoint | method | comprehensiveness ↑ | sufficiency ↓ | random comp. | random suff. "
        "| IG gap ÷ Δf (median) | texts |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for c in columns:
        rand = np.mean([o.faithfulness["random"] for o in c.explained], axis=0)
        rel = [
            o.completeness["gap"] / abs(o.completeness["f_input"] - o.completeness["f_baseline"])
            for o in c.explained
            if o.completeness and o.completeness["f_input"] != o.completeness["f_baseline"]
        ]
        for m in c.methods:
            comp, suff = np.mean([o.faithfulness[m] for o in c.explained], axis=0)
            row = {
                "column": c.label,
                "method": m,
                "comprehensiveness": float(comp),
                "sufficiency": float(suff),
                "random_comprehensiveness": float(rand[0]),
                "random_sufficiency": float(rand[1]),
                "ig_median_relative_gap": float(np.median(rel)) if m == "ig" and rel else None,
                "n": len(c.explained),
            }
            rows.append(row)
            lines.append(
                f"| {c.label} | {m} | {comp:.3f} | {suff:.3f} | {rand[0]:.3f} | {rand[1]:.3f} "
                f"| {_fmt(row['ig_median_relative_gap'], '.1e')} | {len(c.explained)} |"
            )
    return "\n".join(lines), rows


def _accuracy(examples: list[Example], c: Column) -> float | None:
    if any(e.label is None for e in examples):
        return None
    return float(np.mean([o.proba.argmax() == e.label for e, o in zip(examples, c.explained, strict=True)]))


def drift_table(
    examples: list[Example], columns: list[Column], method: str, flags: list[np.ndarray] | None
) -> tuple[str, list[dict]]:
    """Checkpoints of one run in training order (iter-N, then best and last): rank correlation of
    ``method``'s word scores with the previous iter-N and with last, the share of |attribution|
    on words TF-IDF finds non-predictive, accuracy on these texts and comprehensiveness."""
    iters = sorted((c for c in columns if c.checkpoint.startswith("iter-")), key=lambda c: c.step)
    ordered = iters + sorted(
        (c for c in columns if c.checkpoint in ("best", "last")), key=lambda c: c.checkpoint
    )
    last = next((c for c in columns if c.checkpoint == "last"), ordered[-1])
    scores = {c.label: [o.scores[method] for o in c.explained] for c in ordered}
    lines = [
        f"| checkpoint | step | accuracy | ρ / τ vs previous | ρ / τ vs {last.checkpoint} "
        f"| non-predictive mass (words) | comprehensiveness ({method}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for i, c in enumerate(ordered):
        prev = ordered[i - 1] if 0 < i < len(iters) else None
        vs_prev = rank_agreement(scores[prev.label], scores[c.label]) if prev else None
        vs_last = rank_agreement(scores[c.label], scores[last.label]) if c is not last else None
        share = mass_share(scores[c.label], flags) if flags is not None else None
        comp = float(np.mean([o.faithfulness[method][0] for o in c.explained]))
        row = {
            "checkpoint": c.checkpoint,
            "step": c.step,
            "accuracy": _accuracy(examples, c),
            "vs_previous": vs_prev,
            "vs_last": vs_last,
            "non_predictive": share,
            "comprehensiveness": comp,
        }
        rows.append(row)
        pair = lambda r: "–" if not r or r["n"] == 0 else f"{r['spearman']:.3f} / {r['kendall']:.3f}"  # noqa: E731
        npm = "–" if not share else f"{_fmt(share['mass_share'])} ({_fmt(share['word_share'])})"
        lines.append(
            f"| {c.checkpoint} | {c.step} | {_fmt(row['accuracy'])} | {pair(vs_prev)} | {pair(vs_last)} "
            f"| {npm} | {comp:.3f} |"
        )
    return "\n".join(lines), rows


def top_words(
    examples: list[Example], c: Column, method: str, class_names: list[str]
) -> dict[str, list[tuple[str, float, int]]]:
    """Per explained class: the words (lower-cased) with the largest mean attribution towards it."""
    found = defaultdict(lambda: defaultdict(list))
    for e, o in zip(examples, c.explained, strict=True):
        for word, s in zip(e.words, o.scores[method], strict=True):
            if not np.isnan(s):
                found[o.target][word.lower()].append(s)
    out = {}
    for cls in sorted(found):
        means = [(w, float(np.mean(v)), len(v)) for w, v in found[cls].items() if len(v) >= MIN_COUNT]
        out[class_names[cls]] = sorted(means, key=lambda t: -t[1])[:TOP_WORDS]
    return out


def _cell(e: Example, o: Explained, method: str, class_names: list[str]) -> str:
    """One text with every word coloured by its score (blue: towards the class, red: against);
    each run of unseen words (past the model's max_length) in one grey span."""
    s = o.scores[method]
    scale = np.nanmax(np.abs(s)) if np.any(~np.isnan(s)) else 0.0
    parts, pos, unseen = [], 0, None  # unseen: where the open run of unseen words starts
    for (start, end), v in zip(e.spans, s, strict=True):
        if not np.isnan(v) and unseen is not None:
            parts.append(f'<span class="unseen">{html.escape(e.text[unseen:pos])}</span>')
            unseen = None
        if unseen is None:
            parts.append(html.escape(e.text[pos:start]))
        if np.isnan(v):
            unseen = start if unseen is None else unseen
        else:
            parts.append(_word(e.text[start:end], v, scale))
        pos = end
    if unseen is not None:
        parts.append(f'<span class="unseen">{html.escape(e.text[unseen:pos])}</span>')
    parts.append(html.escape(e.text[pos:]))
    pred = class_names[int(o.proba.argmax())]
    head = f"predicts {pred} ({o.proba.max():.2f}); explains {class_names[o.target]}"
    return f'<td><div class="head">{html.escape(head)}</div>{"".join(parts)}</td>'


def _word(word: str, v: float, scale: float) -> str:
    alpha = abs(v) / scale if scale > 0 else 0.0
    rgb = "33,102,172" if v >= 0 else "178,24,43"
    return f'<span style="background:rgba({rgb},{alpha:.2f})" title="{v:.4g}">{html.escape(word)}</span>'


STYLE = """body{font:14px/1.5 sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:6px;vertical-align:top;max-width:32em}th{background:#f4f4f4}
.head{font-size:11px;color:#555;margin-bottom:4px}.unseen{color:#aaa}"""


def _shown(c: Column, method: str) -> str | None:
    """The method a column shows in ``method``'s table: the TF-IDF baseline answers the gradient
    methods with its exact contributions."""
    if method in c.methods:
        return method
    return "linear" if method in GRADIENT_METHODS and "linear" in c.methods else None


def html_page(examples: list[Example], columns: list[Column], class_names: list[str], n: int) -> str:
    """One table per method: a row per text, a column per model or checkpoint."""
    methods = list(dict.fromkeys(m for c in columns for m in c.methods))
    if "linear" in methods and any(m in GRADIENT_METHODS for m in methods):
        methods.remove("linear")  # the TF-IDF columns are shown beside ig / grad-input
    out = [
        f"<!doctype html><meta charset=utf-8><title>token attributions</title><style>{STYLE}</style>",
        "<h1>Token attributions</h1><p>Word background: <span style='background:rgba(33,102,172,.6)'>"
        "towards</span> or <span style='background:rgba(178,24,43,.6)'>against</span> the explained "
        "class, scaled per cell; grey words were cut off by the model's max_length. "
        f"First {min(n, len(examples))} of {len(examples)} texts.</p>",
    ]
    for m in methods:
        cols = [(c, _shown(c, m)) for c in columns if _shown(c, m)]
        heads = "".join(f"<th>{html.escape(c.label)}{'' if s == m else f' ({s})'}</th>" for c, s in cols)
        out.append(f"<h2>{html.escape(m)}</h2><table><tr><th>#</th>{heads}</tr>")
        for i, e in enumerate(examples[:n]):
            gold = "" if e.label is None else f"<br>gold: {html.escape(class_names[e.label])}"
            cells = "".join(_cell(e, c.explained[i], s, class_names) for c, s in cols)
            out.append(f"<tr><td>{i}{gold}</td>{cells}</tr>")
        out.append("</table>")
    return "\n".join(out) + "\n"
