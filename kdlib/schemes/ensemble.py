"""Several teachers at once: an ensemble module, and multi-teacher distillation with average, fixed or
per-sample confidence weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdlib.data import UNLABELED, Batch
from kdlib.losses import (
    check_alpha,
    check_temperature,
    confidence_weights,
    ensemble_log_probs,
    multi_teacher_kd_loss,
)
from kdlib.losses.targets import _check_weights
from kdlib.schemes.result import SchemeResult, named_models, prepare
from kdlib.teacher import cached_teacher_logits, frozen
from kdlib.train import fit

WEIGHTINGS = ("mean", "confidence")


class Ensemble(nn.Module):
    r"""A classifier that averages its members' predicted probabilities: :math:`\log \sum_k w_k\,\mathrm{softmax}(z_k)`.

    Its output is a log-probability vector, which works as logits anywhere (``argmax``, cross-entropy,
    :func:`~kdlib.train.evaluate`). It carries no gradient into the members: an ensemble is evaluated or
    used as a teacher, not trained. As a teacher at temperature ``T``, ``softmax(output / T)`` sharpens or
    flattens the *averaged* distribution; :func:`multi_teacher_distill` instead averages the members'
    distributions at ``T``, as Hinton et al. do.

    Args:
        models: the members; all must predict the same classes.
        weights: ``None`` (uniform) or one weight per member, >= 0, summing to 1.
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        if len(self.members) == 0:
            raise ValueError("an ensemble needs at least one model")
        if weights is not None:
            weights = _check_weights(torch.as_tensor(weights, dtype=torch.float32), len(self.members), 1)[:, 0, 0]
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [m(x) for m in self.members]
        classes = {z.shape[-1] for z in logits}
        if len(classes) != 1:
            raise ValueError(f"ensemble members disagree on the number of classes: {sorted(classes)}")
        return ensemble_log_probs(torch.stack(logits), 1.0, self.weights)


@dataclass
class MultiTeacherTerm:
    """The multi-teacher KD term :func:`~kdlib.losses.multi_teacher_kd_loss` as a :class:`~kdlib.train.LossTerm`.

    ``teacher_logits(batch)`` returns the teachers' stacked logits ``(K, B, C)``. ``weighting`` is
    ``"mean"``, ``"confidence"`` (:func:`~kdlib.losses.confidence_weights` from each sample's label;
    unlabeled transfer-set samples get uniform weights) or a fixed ``(K,)`` tensor.
    """

    teacher_logits: Callable[[Batch], torch.Tensor]
    weighting: str | torch.Tensor = "mean"
    temperature: float = 4.0
    weight: float = 1.0
    name: str = "multi_kd"

    def __call__(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        z = self.teacher_logits(batch)
        return multi_teacher_kd_loss(logits, z, self.temperature, self.sample_weights(z, batch.y))

    def sample_weights(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if isinstance(self.weighting, torch.Tensor):
            return self.weighting
        if self.weighting == "mean":
            return None
        labeled = y != UNLABELED
        w = torch.full(z.shape[:2], 1.0 / z.shape[0], device=z.device)
        if labeled.any():
            w[:, labeled] = confidence_weights(z[:, labeled], y[labeled]).to(w.dtype)
        return w


def _check_weighting(weighting: Any, k: int) -> str | torch.Tensor:
    if isinstance(weighting, str):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS} or {k} fixed weights, got {weighting!r}")
        return weighting
    return _check_weights(torch.as_tensor(weighting, dtype=torch.float32), k, 1)[:, 0, 0]


def multi_teacher_distill(
    student: nn.Module,
    teachers: Mapping[str, nn.Module] | Sequence[nn.Module],
    data: Any,
    *,
    weighting: str | Sequence[float] | torch.Tensor = "mean",
    temperature: float = 4.0,
    alpha: float = 0.9,
    cache_teacher: bool | None = None,
    **fit_kwargs: Any,
) -> SchemeResult:
    r"""Distill ``student`` from several trained, frozen teachers at once.

    Objective: :math:`(1-\alpha)\,\mathrm{CE} + \alpha\,T^2\,\mathrm{KL}(\bar p_T \,\|\, q_T)` with
    :math:`\bar p_T = \sum_k w_k\,\mathrm{softmax}(z_k/T)`, the weights being

    * ``"mean"``: :math:`1/K` (Hinton et al. 2015; You et al., KDD 2017);
    * fixed: one weight per teacher, >= 0, summing to 1 (e.g. by validation accuracy);
    * ``"confidence"``: per sample, from each teacher's cross-entropy on the label (CA-MKD, Zhang et al.,
      ICASSP 2022), so a teacher that is wrong on a sample counts less there.

    Teachers are cached like :func:`~kdlib.distill.distill`'s (all of their logits for the training split,
    ``K x N x C`` floats) when the data is a kdlib Dataset without augmentation, and run live otherwise
    (``cache_teacher=True`` caches a torch dataset after checking that its samples come out the same twice).

    Returns:
        A :class:`~kdlib.schemes.SchemeResult`: one row per teacher (evaluated, not trained), ``"ensemble"``
        (the teachers' probability average with the fixed weights, or uniform) and ``"student"``.
    """
    named = named_models(teachers, "teacher")
    if "student" in named or "ensemble" in named:
        raise ValueError("teacher names 'student' and 'ensemble' are reserved for the result's rows")
    t, a = check_temperature(temperature), check_alpha(alpha)
    scheme_weighting = _check_weighting(weighting, len(named))
    if "ce_weight" in fit_kwargs or "loss_terms" in fit_kwargs:
        raise TypeError("multi_teacher_distill sets ce_weight and loss_terms itself; use alpha=")
    data = prepare({**named, "student": student}, data, fit_kwargs.pop("device", "auto"))
    members = list(named.values())
    use_cache = data.augments is False if cache_teacher is None else bool(cache_teacher)
    with ExitStack() as stack:
        for teacher in members:
            stack.enter_context(frozen(teacher))
        if use_cache:  # cached_teacher_logits refuses data with augmentation, as distill's cache does
            cached = torch.stack([cached_teacher_logits(m, data) for m in members])
            logits_fn = lambda batch: cached[:, batch.index]  # noqa: E731
        else:
            def logits_fn(batch: Batch) -> torch.Tensor:
                with torch.no_grad():
                    return torch.stack([m(batch.x) for m in members])
        term = MultiTeacherTerm(logits_fn, scheme_weighting, t, a)
        run = fit(student, data, ce_weight=1.0 - a, loss_terms=[term], **fit_kwargs)
    result = SchemeResult("multi-teacher", config=dict(
        temperature=t, alpha=a, cached_teacher=use_cache,
        weighting=scheme_weighting if isinstance(scheme_weighting, str) else scheme_weighting.tolist(),
    ))
    for name, teacher in named.items():
        result.add(name, "teacher", teacher, data)
    fixed = scheme_weighting if isinstance(scheme_weighting, torch.Tensor) else None
    result.add("ensemble", "ensemble", Ensemble(members, fixed), data)
    result.add("student", "student", student, data, teacher="ensemble", fit=run)
    return result

