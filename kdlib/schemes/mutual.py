"""Deep mutual learning: peers trained together from scratch, each distilling from the others online."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kdlib.data import UNLABELED, Batch
from kdlib.losses import check_temperature, cross_entropy, kd_loss
from kdlib.schemes.ensemble import Ensemble
from kdlib.schemes.result import SchemeResult, named_models, prepare
from kdlib.train import fit


class MutualLearningTerm(nn.Module):
    r"""The deep-mutual-learning objective of a cohort, as one loss term of peer 0's training loop.

    For peers :math:`k = 0..K-1` with probabilities :math:`p_k` on the same batch, DML minimizes
    (Zhang et al., "Deep Mutual Learning", CVPR 2018)

    .. math::  \mathcal{L}_k = \mathrm{CE}(p_k, y) + \frac{1}{K-1} \sum_{l \ne k} T^2\,\mathrm{KL}(p_l \,\|\, p_k)

    where each :math:`p_l` is a constant in :math:`\mathcal{L}_k`. The trainer computes peer 0's
    cross-entropy itself; this term returns everything else, :math:`\mathcal{L}_0 - \mathrm{CE}_0 +
    \sum_{k \ge 1} \mathcal{L}_k`. Because every peer's loss depends only on its own parameters, one
    backward pass of the sum gives each peer exactly the gradient of its own :math:`\mathcal{L}_k`: the
    peers are updated simultaneously (the paper alternates updates within a step; the simultaneous form is
    the common implementation and equal in expectation at a small learning rate). The other peers are
    submodules of this term, so the trainer optimizes them with peer 0.
    """

    def __init__(self, others: Sequence[nn.Module], temperature: float = 1.0, weight: float = 1.0, name: str = "dml") -> None:
        super().__init__()
        if len(others) == 0:
            raise ValueError("mutual learning needs at least two peers")
        self.others = nn.ModuleList(others)
        self.temperature = check_temperature(temperature)
        self.weight = weight
        self.name = name

    def forward(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        all_logits = [logits, *(peer(batch.x) for peer in self.others)]
        ignore = UNLABELED if bool((batch.y == UNLABELED).any()) else None
        k = len(all_logits)
        total = logits.new_zeros((), dtype=torch.float32)
        for i, z in enumerate(all_logits):
            if i > 0:
                total = total + cross_entropy(z, batch.y, 0.0, ignore)
            mimic = sum(kd_loss(z, all_logits[j], self.temperature) for j in range(k) if j != i)
            total = total + mimic / (k - 1)
        return total


def mutual_learning(
    peers: Mapping[str, nn.Module] | Sequence[nn.Module],
    data: Any,
    *,
    temperature: float = 1.0,
    ensemble: bool = True,
    **fit_kwargs: Any,
) -> SchemeResult:
    """Train a cohort of ``peers`` (any architectures, same classes) with deep mutual learning.

    All peers see the same (augmented) batches; one optimizer with the same settings covers all of them.
    The training history in the rows' ``fit`` is peer 0's (the trainer evaluates the model it trains); every
    peer's final test accuracy is in its row. ``temperature=1`` is the paper's setting.

    Returns:
        A :class:`~kdlib.schemes.SchemeResult` with one ``"peer"`` row each (named ``"peer 0"``, ... for a
        list) and, with ``ensemble=True``, ``"ensemble"``, their probability average.
    """
    named = named_models(peers, "peer")
    if len(named) < 2:
        raise ValueError(f"mutual learning needs at least two peers, got {len(named)}")
    if "loss_terms" in fit_kwargs:
        raise TypeError("mutual_learning sets loss_terms itself")
    data = prepare(named, data, fit_kwargs.pop("device", "auto"))
    first, *others = named.values()
    term = MutualLearningTerm(others, temperature)
    run = fit(first, data, loss_terms=[term], **fit_kwargs)
    result = SchemeResult("mutual learning", config=dict(temperature=term.temperature, peers=len(named)))
    names = list(named)
    for i, (name, peer) in enumerate(named.items()):
        result.add(name, "peer", peer, data, teacher=", ".join(n for n in names if n != name), fit=run if i == 0 else None)
    if ensemble:
        result.add("ensemble", "ensemble", Ensemble(list(named.values())), data)
    return result
