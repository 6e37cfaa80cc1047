"""Knowledge distillation: training a student from a frozen teacher with the one training loop.

:func:`distill` is :func:`kdlib.train.fit` with ``ce_weight = 1 - alpha`` and one extra loss term,
``alpha * kd_loss(student, teacher, T)``. The teacher is frozen for the whole run: eval mode (no dropout,
BatchNorm running statistics fixed), ``requires_grad=False`` and no autograd graph. Its logits are either

* **cached**: computed once for the whole training split and indexed by each batch's sample indices.
  Exact when the data has no augmentation (the teacher would see the same inputs every epoch anyway), and
  it removes the teacher's forward pass from every step; or
* **live**: computed for every batch on the same (augmented) inputs the student sees, which augmentation
  requires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from kdlib.data import Batch, Dataset
from kdlib.device import module_device, resolve
from kdlib.losses import check_alpha, check_temperature, kd_loss, kd_loss_from_log_probs, teacher_log_probs
from kdlib.fidelity import fidelity_monitor
from kdlib.train import FitResult, LossTerm, Monitor, check_model_fits_data, fit, predict

TeacherLogits = Callable[[Batch], torch.Tensor]


@dataclass
class KDTerm:
    """The Hinton KD term ``kd_loss(student_logits, teacher_logits(batch), T)`` as a :class:`~kdlib.train.LossTerm`.

    ``teacher_log_probs`` optionally gives the teacher's log-probabilities at ``temperature`` directly
    (what a cached teacher stores, :func:`kdlib.losses.teacher_log_probs`); then ``teacher_logits`` may be
    ``None``.
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


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False`` for the block; restore both afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def cached_teacher_logits(teacher: nn.Module, data: Dataset, *, batch_size: int = 1024) -> torch.Tensor:
    """Teacher logits ``(len(data.train), C)`` for the whole un-augmented training split, on the data's device.

    A batch's teacher logits are then ``cached[batch.index]``. Raises ``ValueError`` if the dataset augments
    its inputs: cached logits would belong to different inputs than the student sees.
    """
    if data.augment is not None:
        raise ValueError(
            f"{data.name} augments its training inputs, so cached teacher logits would not match them; "
            "use a live teacher (cache_teacher=False)"
        )
    return predict(teacher, data.train, batch_size=batch_size).to(data.device)


def live_teacher_logits(teacher: nn.Module) -> TeacherLogits:
    """Teacher logits computed on each batch's (augmented) inputs, with no autograd graph."""
    device = module_device(teacher)

    def logits(batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            return teacher(batch.x.to(device)).to(batch.x.device)

    return logits


def with_fidelity(monitors: Sequence[Monitor], teacher: nn.Module, data: Dataset, fidelity: bool) -> list[Monitor]:
    """``monitors`` plus, when ``fidelity``, a :func:`~kdlib.fidelity.fidelity_monitor` of ``teacher`` on ``data``."""
    return [*monitors, fidelity_monitor(teacher, data)] if fidelity else list(monitors)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    cache_teacher: bool | None = None,
    extra_terms: Sequence[LossTerm] = (),
    fidelity: bool = True,
    **fit_kwargs,
) -> FitResult:
    r"""Train ``student`` to match a frozen ``teacher`` (Hinton et al., 2015).

    Objective per batch: :math:`(1-\alpha)\,\mathrm{CE}(s, y) + \alpha\,T^2\,\mathrm{KL}(p^T_t \| p^T_s)`
    (see :func:`kdlib.losses.kd_loss`), plus any ``extra_terms``.

    Args:
        student: the model to train (in place).
        teacher: a trained model; frozen during the run and restored to its previous mode afterwards.
        data: the training/test data; the teacher is moved to the student's device.
        temperature: :math:`T > 0`.
        alpha: weight of the KD term in [0, 1] (``alpha=0`` is plain training; 1 ignores the labels).
        cache_teacher: ``None`` caches the teacher's logits when the data has no augmentation and runs it
            live otherwise; ``True`` forces the cache (an error with augmentation); ``False`` forces live.
        extra_terms: further loss terms (feature or relation distillation).
        fidelity: record the student's agreement with the teacher and :math:`\mathrm{KL}(p_t\|p_s)` on training
            and test inputs at every evaluation (:func:`kdlib.fidelity.fidelity_monitor`; history keys
            ``fidelity/...``).
        **fit_kwargs: passed to :func:`kdlib.train.fit` (epochs/steps, optimizer, lr, seed, device, amp, ...).

    Returns:
        The student's :class:`~kdlib.train.FitResult`; ``config`` records ``temperature``, ``alpha`` and
        whether the teacher was cached.
    """
    t = check_temperature(temperature)
    a = check_alpha(alpha)
    if "ce_weight" in fit_kwargs or "loss_terms" in fit_kwargs:
        raise TypeError("distill sets ce_weight and loss_terms itself; use alpha= and extra_terms=")
    device = fit_kwargs.get("device")
    dev = module_device(student) if device is None else resolve(device)
    student.to(dev)
    teacher.to(dev)
    data = data.to(dev)
    check_model_fits_data(teacher, data, role="teacher")
    check_model_fits_data(student, data, role="student")

    use_cache = data.augment is None if cache_teacher is None else bool(cache_teacher)
    with frozen(teacher):
        if use_cache:
            # Cache log-probabilities at T rather than logits: each step then skips the teacher's log-softmax.
            cached = teacher_log_probs(cached_teacher_logits(teacher, data), t)
            term = KDTerm(None, temperature=t, weight=a, teacher_log_probs=lambda batch: cached[batch.index])
        else:
            term = KDTerm(live_teacher_logits(teacher), temperature=t, weight=a)
        monitors = with_fidelity(fit_kwargs.pop("monitors", ()), teacher, data, fidelity)
        result = fit(student, data, ce_weight=1.0 - a, loss_terms=[term, *extra_terms], monitors=monitors, **fit_kwargs)
    result.config.update(temperature=t, alpha=a, cached_teacher=use_cache)
    return result
