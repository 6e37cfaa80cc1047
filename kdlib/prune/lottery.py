"""Lottery tickets: iterative magnitude pruning with rewinding.

Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks" (ICLR 2019):
train, prune the smallest weights, reset the survivors to their *initial* values and retrain. Frankle et al.,
"Linear Mode Connectivity and the Lottery Ticket Hypothesis" (ICML 2020) rewind instead to the weights of an
early iteration ``k`` (``rewind_step``), which finds tickets in deeper networks.

:func:`save_rewind_point` and :func:`rewind` are written here (not in :mod:`torch.nn.utils.prune`, which has
no notion of rewinding): the saved copy is keyed by the *dense* names (``fc.weight``), so a point saved before
pruning restores into a masked model, whose ``fc.weight_orig`` receives it while ``fc.weight_mask`` is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from kdlib.data import Dataset
from kdlib.prune.schedules import _pruner, overall_sparsity, round_sparsities
from kdlib.prune.unstructured import is_pruned
from kdlib.train import fit

_ORIG = "_orig"
_MASK = "_mask"


def _dense_name(key: str) -> str:
    return key[: -len(_ORIG)] if key.endswith(_ORIG) else key


def save_rewind_point(model: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of the model's parameters and buffers (masks excluded), keyed by their dense names.

    Taken at initialization (Frankle & Carbin, 2019) or after ``k`` training steps (Frankle et al., 2020).
    For a masked model the saved weight of ``fc`` is ``fc.weight_orig`` (the values under the mask too).
    """
    return {
        _dense_name(k): v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.endswith(_MASK)
    }


def rewind(model: nn.Module, saved: dict[str, torch.Tensor]) -> nn.Module:
    """Restore ``saved`` (from :func:`save_rewind_point`) into a pruned model, keeping its masks (in place).

    Afterwards ``weight_orig`` equals the saved weight bit for bit and ``weight = saved * mask``; every other
    parameter and buffer (biases, BatchNorm statistics) equals its saved value. Raises ``ValueError`` if the
    model has no masks (never pruned, or :func:`~kdlib.prune.make_permanent` removed them: a rewound model
    without masks would be the dense model again) or if ``saved`` misses a tensor or has a wrong shape.
    """
    if not is_pruned(model):
        raise ValueError(
            "the model has no pruning masks to keep (never pruned, or make_permanent removed them); "
            "rewind applies to a masked model"
        )
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(_MASK)}
    missing = [k for k in state if _dense_name(k) not in saved]
    if missing:
        raise ValueError(f"the rewind point has no values for {missing}")
    with torch.no_grad():
        for key, tensor in state.items():
            value = saved[_dense_name(key)]
            if value.shape != tensor.shape:
                raise ValueError(f"rewind point {key!r} has shape {tuple(value.shape)}, model {tuple(tensor.shape)}")
            tensor.copy_(value)
    for module in model.modules():  # recompute weight = weight_orig * weight_mask now, not at the next forward
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))
    return model


def lottery_ticket(
    make_model: Callable[[], nn.Module],
    data: Dataset,
    sparsity: float,
    rounds: int,
    rewind_step: int = 0,
    *,
    scope: str = "global",
    **fit_kwargs: Any,
) -> list[dict[str, float]]:
    r"""Iterative magnitude pruning with rewinding (IMP; Frankle & Carbin, 2019; Frankle et al., 2020).

    1. ``model = make_model()``; train ``rewind_step`` steps (0: none) and save the rewind point :math:`\theta_k`.
    2. Round 0 trains the dense model; each of ``rounds`` rounds then prunes to the next target of
       :func:`~kdlib.prune.schedules.round_sparsities` (the same fraction of the surviving weights per round,
       ending at ``sparsity``), rewinds the survivors to :math:`\theta_k` and retrains.

    Training is :func:`kdlib.train.fit` with ``fit_kwargs`` (``epochs=`` or ``steps=`` required); the warm-up
    to ``rewind_step`` is a separate ``fit(steps=rewind_step)`` call with the same other keywords. Returns
    one row per round: ``round`` (0 = dense), ``sparsity`` (overall, measured) and ``accuracy`` (final test
    accuracy of that round's training).
    """
    if "epochs" not in fit_kwargs and "steps" not in fit_kwargs:
        raise TypeError("give the training length of each round: epochs= or steps=")
    if not isinstance(rewind_step, int) or rewind_step < 0:
        raise ValueError(f"rewind_step must be a non-negative integer, got {rewind_step!r}")
    prune_fn = _pruner(scope)
    targets = round_sparsities(sparsity, rounds)
    model = make_model()
    if rewind_step > 0:
        warm = {k: v for k, v in fit_kwargs.items() if k not in ("epochs", "steps")}
        fit(model, data, steps=rewind_step, **warm)
    saved = save_rewind_point(model)
    rows = []
    for r in range(rounds + 1):
        if r > 0:
            prune_fn(model, targets[r - 1])
            rewind(model, saved)
        result = fit(model, data, **fit_kwargs)
        rows.append(dict(round=r, sparsity=overall_sparsity(model), accuracy=result.final_accuracy))
    return rows
