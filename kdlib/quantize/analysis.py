"""Per-layer sensitivity to weight quantization, and mixed precision chosen from it.

Layers differ in how much precision they need: the first layer sees raw inputs through few weights, the last
decides the logits. :func:`layer_sensitivity` quantizes one layer's weights at a time (everything else in
float) and measures the accuracy; :func:`pick_bits` keeps, per layer, the fewest bits whose drop stays within a
tolerance, which :func:`~kdlib.quantize.prepare` takes as ``layer_bits`` (cf. HAWQ, Dong et al. 2019, which
ranks layers by Hessian instead of by measured drop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from kdlib.data import Dataset, Split
from kdlib.quantize.affine import check_bits
from kdlib.quantize.fake import QuantConfig, prepare, quantizable_layers
from kdlib.train import evaluate


def layer_sensitivity(
    model: nn.Module,
    data: Split | Dataset,
    *,
    bits: Sequence[int] = (8, 6, 4, 3, 2),
    per_channel: bool = True,
    skip: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Accuracy with only one layer's weights quantized, for every quantizable layer and bit-width.

    Returns rows ``{"layer", "bits", "accuracy", "drop"}`` where ``drop`` is the float model's accuracy minus
    this one's, on ``data`` (a :class:`~kdlib.data.Dataset` means its test split; pass a held-out split to
    choose bits without touching the test set).
    """
    for b in bits:
        check_bits(b)
    baseline = evaluate(model, data)["accuracy"]
    layers = quantizable_layers(model, skip)
    rows = []
    for layer in layers:
        others = [n for n in layers if n != layer] + list(skip)
        for b in bits:
            quantized = prepare(model, QuantConfig(weight_bits=b, activation_bits=None, per_channel=per_channel), skip=others)
            accuracy = evaluate(quantized, data)["accuracy"]
            rows.append({"layer": layer, "bits": b, "accuracy": accuracy, "drop": baseline - accuracy})
    return rows


def pick_bits(rows: Sequence[dict[str, Any]], max_drop: float = 0.005) -> dict[str, int]:
    """Per layer, the fewest bits in ``rows`` whose accuracy drop is at most ``max_drop`` (else the most bits)."""
    if not rows:
        raise ValueError("no sensitivity rows: run layer_sensitivity first")
    chosen: dict[str, int] = {}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == layer]
        within = [r["bits"] for r in mine if r["drop"] <= max_drop]
        chosen[layer] = min(within) if within else max(r["bits"] for r in mine)
    return chosen
