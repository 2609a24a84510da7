"""A study's figures: train and validation curves, drift and faithfulness against step over the
validation loss, membership inference and calibration against step, and a data map per cell.
matplotlib's Figure without pyplot: no global backend or GUI state."""

import io
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes
from ..train.metrics import read_metrics
from .plan import Plan


def save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write_bytes(path, buf.getvalue())


def comparison_figure(study_dir: Path, plan: Plan):
    """Per dataset, loss and accuracy against epoch: every model's train (dashed, open markers) and
    validation (solid) curves on shared axes; one legend for the figure."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or GUI state
    from matplotlib.lines import Line2D

    datasets = list(dict.fromkeys(c.dataset for c in plan.cells))
    colors = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(c.name for c in plan.cells))}
    fig = Figure(figsize=(12, 3.6 * len(datasets) + 0.6), layout="constrained")
    for row, dataset in zip(fig.subplots(len(datasets), 2, squeeze=False), datasets, strict=True):
        for cell in (c for c in plan.cells if c.dataset == dataset):
            records = read_metrics(study_dir / "runs" / cell.id)
            for ax, key in zip(row, ("loss", "accuracy"), strict=True):
                for split, style, face in (("train", "--", "none"), ("validation", "-", colors[cell.name])):
                    points = [(r["epoch"], r[key]) for r in records if r["split"] == split and key in r]
                    if points:
                        x, y = zip(*points, strict=True)
                        ax.plot(x, y, style, marker="o", color=colors[cell.name], markerfacecolor=face)
        for ax, key in zip(row, ("loss", "accuracy"), strict=True):
            ax.set(title=f"{dataset}: {key}", xlabel="epoch", ylabel=key)
            ax.grid(alpha=0.3)
            if not ax.has_data():
                ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)
    handles = [Line2D([], [], color=color, marker="o", label=name) for name, color in colors.items()]
    handles += [
        Line2D(
            [], [], color="gray", ls="--", marker="o", markerfacecolor="none", label="train (fixed subset)"
        ),
        Line2D([], [], color="gray", ls="-", marker="o", label="validation"),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle(f"study {plan.name}: train vs validation, every model on shared axes per dataset")
    return fig


def _per_cell(rows: list[dict]) -> dict[str, list[dict]]:
    """Each cell's rows of its first method, one per step (iter-N, and last when it adds a step)."""
    out, method = {}, {}
    for r in rows:
        seen = out.setdefault(r["cell"], [])
        if r["method"] != method.setdefault(r["cell"], r["method"]) or r["checkpoint"] == "best":
            continue
        if all(s["step"] != r["step"] for s in seen):
            seen.append(r)
    return {cell: sorted(rs, key=lambda r: r["step"]) for cell, rs in out.items()}


def _lines(ax, cells: dict[str, list[dict]], key: str, colors: dict, style: str = "-") -> None:
    for cell, rs in cells.items():
        points = [(r["step"], r[key]) for r in rs if r[key] is not None]
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, style, marker="o", color=colors[cell], label=cell if style == "-" else None)


def drift_figure(rows: list[dict], dataset: str):
    """Against step, per model: validation loss; Spearman's rho of the attributions with the last
    checkpoint's (solid) and with the previous one's (dotted); comprehensiveness (random: dotted)."""
    from matplotlib.figure import Figure

    cells = _per_cell([r for r in rows if r["dataset"] == dataset])
    colors = {cell: f"C{i % 10}" for i, cell in enumerate(cells)}
    fig = Figure(figsize=(9, 8), layout="constrained")
    loss, drift, comp = fig.subplots(3, 1, sharex=True)
    _lines(loss, cells, "val_loss", colors)
    _lines(drift, cells, "drift_last", colors)
    _lines(drift, cells, "drift_previous", colors, ":")
    _lines(comp, cells, "comprehensiveness", colors)
    _lines(comp, cells, "random_comprehensiveness", colors, ":")
    loss.set(title=f"{dataset}: validation loss", ylabel="loss")
    drift.set(title="attribution drift: rho with last (solid), with the previous checkpoint (dotted)")
    drift.set(ylabel="Spearman rho")
    comp.set(title="comprehensiveness (AOPC; random rankings dotted)", xlabel="step", ylabel="AOPC")
    for ax in (loss, drift, comp):
        ax.grid(alpha=0.3)
    loss.legend(fontsize=8)
    return fig


def membership_figure(rows: list[dict], dataset: str):
    """Against step, per model: the membership-inference AUC (0.5: chance) and the held-out ECE."""
    from matplotlib.figure import Figure

    cells = _per_cell([r for r in rows if r["dataset"] == dataset])
    colors = {cell: f"C{i % 10}" for i, cell in enumerate(cells)}
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    auc, ece = fig.subplots(2, 1, sharex=True)
    _lines(auc, cells, "membership_auc", colors)
    _lines(ece, cells, "ece", colors)
    auc.axhline(0.5, color="gray", lw=1, ls="--")
    auc.set(title=f"{dataset}: loss-threshold membership inference (train vs held out)", ylabel="AUC")
    ece.set(title="expected calibration error, held-out examples", xlabel="step", ylabel="ECE")
    for ax in (auc, ece):
        ax.grid(alpha=0.3)
    auc.legend(fontsize=8)
    return fig


def data_map_figure(points: dict, cell: str):
    """Dataset cartography: confidence against variability per training example, coloured by
    correctness, with the regions' bounds."""
    from matplotlib.figure import Figure

    from .memorization import AMBIGUOUS, EASY

    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    dots = ax.scatter(
        points["variability"], points["confidence"], c=points["correctness"], cmap="coolwarm_r",
        vmin=0, vmax=1, s=12, alpha=0.8,
    )  # fmt: skip
    ax.axvline(AMBIGUOUS, color="gray", lw=1, ls="--")
    ax.hlines(EASY, 0, AMBIGUOUS, color="gray", lw=1, ls="--")
    share = {r: np.mean(points["region"] == r) for r in ("easy", "ambiguous", "hard")}
    ax.set(
        title=f"{cell}: data map\n{', '.join(f'{r} {v:.0%}' for r, v in share.items())}",
        xlabel="variability (std of the gold probability)",
        ylabel="confidence (mean gold probability)",
        xlim=(0, max(0.5, float(np.max(points["variability"], initial=0)))),
        ylim=(0, 1),
    )
    fig.colorbar(dots, ax=ax, label="correctness")
    return fig
