"""Knowledge distillation (Hinton et al., 2015): a student trained from a frozen teacher's soft targets.

:func:`distill` is a :class:`~kdlib.distiller.Distiller` with one term, ``alpha * kd_loss(student, teacher, T)``,
and cross-entropy weighted ``1 - alpha``: one loop (:func:`kdlib.train.fit`), one teacher-handling code path.
The teacher is frozen for the whole run (:func:`~kdlib.teacher.frozen`); its logits are either cached once for
the training set (exact without augmentation) or computed live on each (augmented) batch, see
:mod:`kdlib.teacher`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdlib.data import Batch
from kdlib.distiller import Distiller
from kdlib.losses import check_alpha, check_temperature, kd_loss, kd_loss_from_log_probs
from kdlib.teacher import (  # noqa: F401  (frozen and the teacher's logits: re-exported, their historic home)
    TeacherCache,
    cached_teacher_logits,
    frozen,
    live_teacher_logits,
)
from kdlib.terms import KDLogitTerm
from kdlib.train import FitResult, LossTerm

__all__ = ["KDTerm", "distill"]

TeacherLogits = Callable[[Batch], torch.Tensor]


@dataclass
class KDTerm:
    """The Hinton KD term ``kd_loss(student_logits, teacher_logits(batch), T)`` as a plain :class:`~kdlib.train.LossTerm`.

    For hand-built loops and benchmarks that hold the teacher's outputs themselves. ``teacher_log_probs``
    optionally gives the teacher's log-probabilities at ``temperature`` directly (what a cached teacher can store,
    :func:`kdlib.losses.teacher_log_probs`); then ``teacher_logits`` may be ``None``.
    """

    teacher_logits: TeacherLogits | None
    temperature: float = 4.0
    weight: float = 1.0
    name: str = "kd"
    teacher_log_probs: TeacherLogits | None = None

    def __call__(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        if self.teacher_log_probs is not None:
            return kd_loss_from_log_probs(logits, self.teacher_log_probs(batch), self.temperature)
        return kd_loss(logits, self.teacher_logits(batch), self.temperature)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    cache_teacher: bool | TeacherCache | None = None,
    extra_terms: Sequence[LossTerm] = (),
    fidelity: bool = True,
    **fit_kwargs: Any,
) -> FitResult:
    r"""Train ``student`` to match a frozen ``teacher`` (Hinton et al., 2015).

    Objective per batch: :math:`(1-\alpha)\,\mathrm{CE}(s, y) + \alpha\,T^2\,\mathrm{KL}(p^T_t \| p^T_s)`
    (see :func:`kdlib.losses.kd_loss`), plus any ``extra_terms``.

    Args:
        student: the model to train (in place).
        teacher: a trained model; frozen during the run and restored to its previous mode afterwards.
        data: anything :func:`~kdlib.train.fit` takes: a kdlib Dataset, a torch Dataset or DataLoader (the
            teacher sees exactly the batch the student sees, augmented by the loader's workers), a
            :class:`~kdlib.sources.TorchData`.
        temperature: :math:`T > 0`.
        alpha: weight of the KD term in [0, 1] (``alpha=0`` is plain training; 1 ignores the labels).
        cache_teacher: ``None`` caches the teacher's logits when the data is a kdlib Dataset without
            augmentation and runs it live otherwise; ``True`` forces the in-memory cache (an error with
            augmentation); a :class:`~kdlib.teacher.TeacherCache` keeps them on disk or as top-k; ``False``
            forces live.
        extra_terms: further loss terms (feature or relation distillation).
        fidelity: record the student's agreement with the teacher and :math:`\mathrm{KL}(p_t\|p_s)` on training
            and test inputs at every evaluation (:func:`kdlib.fidelity.fidelity_monitor`; history keys
            ``fidelity/...``).
        **fit_kwargs: passed to :func:`kdlib.train.fit` (epochs/steps, optimizer, lr, seed, device, amp,
            eval_data, ...).

    Returns:
        The student's :class:`~kdlib.train.FitResult`; ``config`` records ``temperature``, ``alpha`` and
        whether the teacher was cached.
    """
    t = check_temperature(temperature)
    a = check_alpha(alpha)
    if "ce_weight" in fit_kwargs or "loss_terms" in fit_kwargs:
        raise TypeError("distill sets ce_weight and loss_terms itself; use alpha= and extra_terms=")
    kd = KDLogitTerm(t, weight=a, name="kd")
    distiller = Distiller(student, teacher, [kd], ce_weight=1.0 - a, cache_teacher=cache_teacher, fidelity=fidelity,
                          extra_terms=extra_terms, cache_limit_mb=float("inf"))
    result = distiller.fit(data, **fit_kwargs)
    result.config.update(temperature=t, alpha=a)
    return result
