"""Per-layer pruning sensitivity: prune one layer at a time and see what accuracy it costs.

The analysis of Han et al. (2015, Fig. 6) and Li et al., "Pruning Filters for Efficient ConvNets" (2017):
layers whose accuracy barely moves can take more sparsity. :func:`pick_sparsities` turns the rows into a
per-layer sparsity plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from kdlib.data import Dataset, Split
from kdlib.prune.unstructured import check_sparsity, copy_model, prunable_layers, prune_layerwise
from kdlib.train import evaluate

DEFAULT_SPARSITIES = (0.25, 0.5, 0.75, 0.9)


def sensitivity(
    model: nn.Module,
    data: Dataset | Split,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Accuracy when each layer alone is magnitude-pruned to each sparsity (the model itself is untouched).

    Each (layer, sparsity) prunes a deep copy with :func:`~kdlib.prune.prune_layerwise` and evaluates it
    with :func:`kdlib.train.evaluate` (a :class:`Dataset` means its test split). Returns rows ``layer``,
    ``sparsity``, ``accuracy``, ``baseline`` (accuracy of the unpruned model) and ``drop = baseline -
    accuracy``; ``pandas.DataFrame(rows)`` makes a table.
    """
    values = [check_sparsity(s) for s in sparsities]
    if not values:
        raise ValueError("give at least one sparsity")
    names = [name for name, _ in prunable_layers(model, layers)]
    baseline = evaluate(model, data)["accuracy"]
    rows = []
    for name in names:
        for s in values:
            pruned = prune_layerwise(copy_model(model), s, layers=[name])
            accuracy = evaluate(pruned, data)["accuracy"]
            rows.append(dict(layer=name, sparsity=s, accuracy=accuracy, baseline=baseline, drop=baseline - accuracy))
    return rows


def pick_sparsities(rows: Sequence[dict[str, Any]], max_drop: float = 0.01) -> dict[str, float]:
    """For each layer, the largest sparsity whose accuracy drop ``baseline - accuracy`` is at most ``max_drop``.

    A layer where no tested sparsity qualifies gets 0.0 (leave it dense). Reads rows of :func:`sensitivity`.
    The comparison allows 1e-9 of floating-point slack (0.9 - 0.7 is 0.20000000000000007).
    """
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    if not rows:
        raise ValueError("no sensitivity rows")
    plan: dict[str, float] = {}
    for row in rows:
        best = plan.setdefault(row["layer"], 0.0)
        if row["baseline"] - row["accuracy"] <= max_drop + 1e-9 and row["sparsity"] > best:
            plan[row["layer"]] = row["sparsity"]
    return plan


def plot_sensitivity(rows: Sequence[dict[str, Any]], *, ax: Any = None) -> Any:
    """Accuracy against sparsity, one line per layer, with the unpruned accuracy dashed; returns the Figure.

    Uses the object-oriented matplotlib API (no pyplot state), so it works with the Agg backend.
    """
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    for layer in layers:
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["sparsity"])
        ax.plot([r["sparsity"] for r in mine], [r["accuracy"] for r in mine], marker="o", markersize=3, label=layer)
    if rows:
        ax.axhline(rows[0]["baseline"], color="gray", linestyle="--", linewidth=1, label="unpruned")
    ax.set_xlabel("sparsity of the layer")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
