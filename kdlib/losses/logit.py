"""Logit-based distillation losses: functions of the student's and the teacher's ``(N, C)`` logits.

Shapes: logits are ``(N, C)`` float tensors; targets are ``(N,)`` int64 class indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_alpha, check_logits, check_temperature

__all__ = ["cross_entropy", "hinton_loss", "kd_loss", "kd_loss_from_log_probs", "soft_targets", "teacher_log_probs"]


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Softmax at temperature :math:`T`: :math:`p_i = \exp(z_i/T) / \sum_j \exp(z_j/T)`.

    Higher :math:`T` flattens the distribution and reveals the relative probabilities of wrong classes,
    the "dark knowledge" of Hinton et al. (2015). Computed in float32 at least, along the last dimension.
    """
    t = check_temperature(temperature)
    return torch.softmax(logits.float() / t, dim=-1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
) -> torch.Tensor:
    r"""Hinton et al. (2015) knowledge-distillation loss.

    .. math::

        \mathcal{L}_{KD} = T^2 \, \frac{1}{N} \sum_{n=1}^{N}
            \mathrm{KL}\big(\mathrm{softmax}(t_n / T) \,\|\, \mathrm{softmax}(s_n / T)\big)

    where :math:`s_n` are the student's and :math:`t_n` the teacher's logits for sample :math:`n`.
    The teacher's distribution is the target; the KL is summed over classes and averaged over the batch
    ("batchmean"). The factor :math:`T^2` keeps the gradient magnitude independent of :math:`T`: the
    gradient w.r.t. a student logit is

    .. math::

        \frac{\partial \mathcal{L}_{KD}}{\partial s_{n,i}} = \frac{T}{N}\,(q_{n,i} - p_{n,i}),

    where :math:`q` and :math:`p` are the student's and teacher's probabilities at temperature :math:`T`.
    For large :math:`T` and zero-mean logits, :math:`q_i - p_i \approx (s_i - t_i)/(C\,T)`, so the gradient
    tends to :math:`(s_i - t_i)/(N C)`: logit matching, with no dependence on :math:`T` (Hinton et al. §2.1).

    Args:
        student_logits: ``(N, C)`` raw student outputs; gradients flow into these.
        teacher_logits: ``(N, C)`` raw teacher outputs; treated as constants (detached).
        temperature: :math:`T > 0`.

    Returns:
        A scalar tensor (float32 or wider), 0 when the two distributions are equal and > 0 otherwise.
    """
    check_logits(student_logits, teacher_logits)
    t = check_temperature(temperature)
    return kd_loss_from_log_probs(student_logits, teacher_log_probs(teacher_logits, t), t)


def teacher_log_probs(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's log-probabilities at temperature T, detached, in at least float32.

    A cached teacher stores these once (they do not change during training), so each step skips a
    log-softmax; see :func:`kd_loss_from_log_probs`.
    """
    t = check_temperature(temperature)
    dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
    return F.log_softmax(teacher_logits.detach().to(dtype) / t, dim=1)


def kd_loss_from_log_probs(
    student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """:func:`kd_loss` with the teacher given as log-probabilities at temperature T (from :func:`teacher_log_probs`).

    Same value and gradient as ``kd_loss(student_logits, teacher_logits, T)``; shapes are checked the same way.
    """
    check_logits(student_logits, teacher_log_probs)
    t = float(temperature)
    # Work in at least float32: log_softmax of fp16/bf16 logits at T=1 loses the small probabilities.
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_q = F.log_softmax(student_logits.to(dtype) / t, dim=1)
    # kl_div(input=log q, target=log p, log_target=True) = sum p (log p - log q); log_target keeps it
    # finite when the teacher assigns an underflowing probability to a class.
    return F.kl_div(log_q, teacher_log_probs, reduction="batchmean", log_target=True) * (t * t)


def hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    r"""The full objective of Hinton et al. (2015): :math:`(1-\alpha)\,\mathrm{CE}(s, y) + \alpha\,\mathcal{L}_{KD}`.

    Args:
        student_logits: ``(N, C)`` student outputs.
        teacher_logits: ``(N, C)`` teacher outputs (detached).
        targets: ``(N,)`` int64 hard labels in ``[0, C)``.
        temperature: :math:`T > 0` of the KD term; the CE term always uses :math:`T = 1`.
        alpha: weight of the KD term in :math:`[0, 1]`; ``alpha=0`` is plain cross-entropy.
    """
    a = check_alpha(alpha)
    kd = kd_loss(student_logits, teacher_logits, temperature)
    ce = cross_entropy(student_logits, targets)
    return (1.0 - a) * ce + a * kd


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy with shape and dtype checks (``(N, C)`` logits, ``(N,)`` int64 targets).

    With ``ignore_index`` the mean runs over the other samples only, and a batch with none of them gives 0
    (with a graph), not PyTorch's NaN.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must have shape ({logits.shape[0]},) to match the logits, got {tuple(targets.shape)}"
        )
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must be int64 class indices, got {targets.dtype}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if ignore_index is None:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    per_sample = F.cross_entropy(
        logits, targets, label_smoothing=label_smoothing, ignore_index=ignore_index, reduction="none"
    )
    return per_sample.sum() / (targets != ignore_index).sum().clamp(min=1)
