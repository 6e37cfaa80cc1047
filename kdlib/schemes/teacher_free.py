"""Teacher-free KD with a hand-designed virtual teacher (Tf-KD_reg), against label smoothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdlib.data import UNLABELED, Batch
from kdlib.losses import check_alpha, check_temperature, tf_kd_reg_loss
from kdlib.schemes.result import SchemeResult, prepare
from kdlib.train import check_model_fits_data, fit


@dataclass
class VirtualTeacherTerm:
    """:func:`~kdlib.losses.tf_kd_reg_loss` on each batch's labels, as a :class:`~kdlib.train.LossTerm`.

    Unlabeled (transfer-set) samples have no virtual teacher and are skipped.
    """

    correct_prob: float = 0.9
    temperature: float = 20.0
    weight: float = 1.0
    name: str = "tf_kd_reg"

    def __call__(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        labeled = batch.y != UNLABELED
        if not bool(labeled.all()):
            if not bool(labeled.any()):
                return logits.new_zeros((), dtype=torch.float32)
            logits, y = logits[labeled], batch.y[labeled]
        else:
            y = batch.y
        return tf_kd_reg_loss(logits, y, correct_prob=self.correct_prob, temperature=self.temperature)


def teacher_free_reg(
    student: torch.nn.Module,
    data: Any,
    *,
    correct_prob: float = 0.9,
    temperature: float = 20.0,
    alpha: float = 0.5,
    **fit_kwargs: Any,
) -> SchemeResult:
    r"""Tf-KD\ :sub:`reg`: train ``student`` with :math:`(1-\alpha)\,\mathrm{CE} + \alpha\,T^2\,\mathrm{KL}(p^d_T \| q_T)`.

    The virtual teacher :math:`p^d` puts ``correct_prob`` on the label and spreads the rest evenly
    (:func:`~kdlib.losses.virtual_teacher_log_probs`), a teacher with 100 % accuracy that costs nothing
    (Yuan et al., CVPR 2020). ``temperature=20`` follows the paper's high-temperature setting; ``alpha``
    and ``correct_prob`` are not tuned here. Compare with label smoothing, ``fit(..., label_smoothing=eps)``.

    Returns:
        A :class:`~kdlib.schemes.SchemeResult` with the single row ``"student"``.
    """
    t, a = check_temperature(temperature), check_alpha(alpha)
    if "ce_weight" in fit_kwargs or "loss_terms" in fit_kwargs:
        raise TypeError("teacher_free_reg sets ce_weight and loss_terms itself; use alpha=")
    data = prepare({"student": student}, data, fit_kwargs.pop("device", "auto"))
    # Check correct_prob against the class count once, before training, rather than at step 1.
    classes = check_model_fits_data(student, data)
    tf_kd_reg_loss(torch.zeros(1, classes), torch.zeros(1, dtype=torch.long), correct_prob=correct_prob, temperature=t)
    run = fit(student, data, ce_weight=1.0 - a, loss_terms=[VirtualTeacherTerm(correct_prob, t, a)], **fit_kwargs)
    result = SchemeResult("teacher-free (virtual teacher)", config=dict(correct_prob=correct_prob, temperature=t, alpha=a))
    result.add("student", "student", student, data, fit=run)
    return result
