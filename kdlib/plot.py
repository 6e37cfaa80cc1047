"""Figures for the chapters. Functions read results (dicts, lists, arrays) and return matplotlib objects;
they import no trainer, so plotting never re-runs an experiment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.0, 4.0)) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def history(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    metric: str = "test_accuracy",
    x: str = "epoch",
    ax: Axes | None = None,
) -> Axes:
    """Line plot of ``metric`` against ``x`` for each named history (``FitResult.history`` lists)."""
    ax = _axes(ax)
    for label, rows in histories.items():
        ax.plot([r[x] for r in rows], [r[metric] for r in rows], marker="o", markersize=3, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def softmax_temperatures(
    probabilities: Mapping[float, np.ndarray],
    *,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Grouped bars of one sample's class probabilities at several temperatures (``{T: probs}``)."""
    ax = _axes(ax, (8.0, 3.5))
    temps = list(probabilities)
    n_classes = len(next(iter(probabilities.values())))
    width = 0.8 / len(temps)
    positions = np.arange(n_classes)
    for i, t in enumerate(temps):
        ax.bar(positions + (i - (len(temps) - 1) / 2) * width, probabilities[t], width, label=f"T = {t:g}")
    ax.set_xticks(positions, class_names if class_names is not None else [str(i) for i in positions],
                  rotation=30 if class_names is not None else 0, ha="right" if class_names is not None else "center")
    ax.set_ylabel("probability")
    ax.legend()
    return ax


def heatmap(
    values: np.ndarray,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    row_title: str = "",
    col_title: str = "",
    colorbar: str = "",
    fmt: str = "{:.1f}",
    cmap: str = "viridis",
    ax: Axes | None = None,
) -> Axes:
    """Annotated heatmap of a 2-D array (a T × α sweep, a class-similarity matrix)."""
    values = np.asarray(values, dtype=float)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"values have shape {values.shape} but labels give {(len(row_labels), len(col_labels))}")
    ax = _axes(ax, (1.0 + 0.7 * len(col_labels), 1.0 + 0.5 * len(row_labels)))
    image = ax.imshow(values, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    middle = np.nanmean(values)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=9,
                    color="white" if v < middle else "black")
    ax.figure.colorbar(image, ax=ax, label=colorbar)
    return ax


def seed_comparison(
    results: Mapping[str, Sequence[float]],
    *,
    ylabel: str = "test accuracy (%)",
    ax: Axes | None = None,
) -> Axes:
    """Every seed as a dot plus mean ± std as an error bar, one column per method."""
    ax = _axes(ax, (1.5 + 1.3 * len(results), 4.0))
    rng = np.random.default_rng(0)  # horizontal jitter only, so overlapping seeds stay visible
    for i, (label, values) in enumerate(results.items()):
        v = np.asarray(values, dtype=float)
        ax.scatter(i + rng.uniform(-0.08, 0.08, len(v)), v, alpha=0.6, s=18)
        std = v.std(ddof=1) if len(v) > 1 else 0.0
        ax.errorbar(i + 0.25, v.mean(), yerr=std, fmt="o", color="black", capsize=4)
    ax.set_xticks(range(len(results)), list(results))
    ax.set_xlim(-0.5, len(results) - 0.3)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return ax


def cost_comparison(
    records: Sequence[Mapping[str, float]],
    *,
    metrics: Sequence[tuple[str, str]] = (
        ("params", "parameters"),
        ("flops", "FLOPs / sample"),
        ("latency_ms", "latency (ms)"),
        ("accuracy", "accuracy"),
    ),
    label_key: str = "name",
) -> Figure:
    """One bar chart per metric for a few models (``ProfileRecord.as_dict()`` rows), log scale for counts."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), layout="constrained")
    labels = [str(r[label_key]) for r in records]
    for ax, (key, title) in zip(np.atleast_1d(axes), metrics):
        values = [float(r[key]) for r in records]
        bars = ax.bar(labels, values, color=[f"C{i}" for i in range(len(records))])
        ax.set_title(title)
        if key in ("params", "flops", "size_bytes") and min(values) > 0:
            ax.set_yscale("log")
        ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=9)
        ax.tick_params(axis="x", rotation=20)
    return fig


def _short(value: float) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def fidelity(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    x: str = "step",
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Teacher–student fidelity over training: top-1 agreement (left) and KL(teacher ‖ student) (right).

    ``histories`` maps a label to a ``FitResult.history`` recorded with a :class:`kdlib.fidelity.Fidelity`
    monitor (every distillation run has one). Solid lines are training inputs, dashed lines test inputs; a
    gap between them is the part of the teacher's function the student fitted without generalizing it.
    """
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4), layout="constrained")
    else:
        fig = axes[0].figure
    for color, (label, rows) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, histories.items()):
        for split, style in (("train", "-"), ("test", "--")):
            key = f"fidelity/{split}_agreement"
            if not rows or key not in rows[0]:
                raise KeyError(f"history {label!r} has no {key!r}; record it with kdlib.fidelity.Fidelity")
            steps = [r[x] for r in rows]
            axes[0].plot(steps, [100 * r[key] for r in rows], style, color=color, label=f"{label}, {split}")
            axes[1].plot(steps, [r[f"fidelity/{split}_kl"] for r in rows], style, color=color)
    axes[0].set_ylabel("agreement with the teacher (%)")
    axes[1].set_ylabel("KL(teacher ‖ student) (nats)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=9)
    return fig


def effects(table: Any, *, ax: Axes | None = None, xlabel: str = "difference to the baseline (points)") -> Axes:
    """The paired differences of a :func:`kdlib.protocol.compare` table, one row per arm, with their 95 % intervals.

    Green and red mark the arms whose Holm-corrected verdict is ``"better"`` or ``"worse"``; grey the others.
    The baseline row (no difference) is left out.
    """
    rows = table[table["verdict"] != "—"] if "verdict" in table else table.iloc[1:]
    ax = _axes(ax, (6.5, 0.8 + 0.38 * len(rows)))
    ypos = np.arange(len(rows))[::-1]
    colors = [{"better": "tab:green", "worse": "tab:red"}.get(v, "0.45") for v in rows["verdict"]]
    ax.errorbar(rows["diff"], ypos, xerr=[rows["diff"] - rows["low"], rows["high"] - rows["diff"]], fmt="none",
                ecolor="0.6", capsize=2)
    ax.scatter(rows["diff"], ypos, c=colors, zorder=3)
    ax.axvline(0, color="0.3", linewidth=1)
    ax.set_yticks(ypos, [str(i) for i in rows.index])
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return ax


def pareto(
    points: Sequence[Mapping[str, Any]],
    front: Sequence[Mapping[str, Any]],
    *,
    cost: str,
    value: str = "test_accuracy",
    marks: Mapping[str, Mapping[str, Any]] | None = None,
    xlabel: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Accuracy (``value``, in [0, 1], shown in %) against a cost on a log axis: every point, the Pareto front as a
    line through its points, and ``marks`` (e.g. the teacher and the uncompressed student) as labelled stars.

    A point's ``<value>_std`` key, when present, is drawn as an error bar.
    """
    ax = _axes(ax)
    xs = [p[cost] for p in points]
    ys = [100 * p[value] for p in points]
    errors = [100 * p.get(f"{value}_std", 0.0) for p in points]
    ax.errorbar(xs, ys, yerr=errors, fmt="o", color="0.6", markersize=4, elinewidth=0.8, label="all settings")
    ordered = sorted(front, key=lambda p: p[cost])
    ax.plot([p[cost] for p in ordered], [100 * p[value] for p in ordered], "o-", color="C0", markersize=5,
            label="Pareto front")
    for i, (label, point) in enumerate((marks or {}).items()):
        ax.plot(point[cost], 100 * point[value], "*", markersize=13, color=f"C{i + 1}", label=label)
    ax.set_xscale("log")
    # Plain numbers at 1, 2 and 5 times each power of ten: a cost range of one or two decades otherwise gets
    # overlapping "2×10^0"-style minor labels.
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel or cost.replace("_", " "))
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9, loc="lower right")
    return ax
