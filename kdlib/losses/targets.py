"""KD against constructed targets: the teacher's hard labels, a hand-designed virtual teacher, and a weighted
ensemble of teachers.

Shapes: student logits ``(N, C)``; an ensemble's logits are stacked as ``(K, N, C)`` for ``K`` teachers;
targets are ``(N,)`` int64 class indices. Teachers are constants (detached). Computed in float32 or wider.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_logits, check_temperature
from kdlib.losses.logit import _check_targets, _compute_dtype, kd_loss_from_log_probs

__all__ = [
    "confidence_weights",
    "hard_label_loss",
    "ensemble_log_probs",
    "multi_teacher_kd_loss",
    "tf_kd_reg_loss",
    "virtual_teacher_log_probs",
]


def hard_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy of the student with the teacher's top-1 class: training on the teacher's *hard* labels.

    .. math::  \mathcal{L} = \frac{1}{N}\sum_n -\log \mathrm{softmax}(s_n)_{\hat y_n}, \qquad
        \hat y_n = \arg\max_c t_{n,c}

    The :math:`T \to 0` limit of :func:`~kdlib.losses.kd_loss` up to its scale, and the pseudo-labels of
    self-training (Lee, 2013): the control that separates what a teacher's *soft* targets add from what its
    decisions on extra or augmented inputs add (Hinton et al., 2015, §3 compare both). No gradient reaches the
    teacher.
    """
    check_logits(student_logits, teacher_logits)
    return F.cross_entropy(student_logits.to(_compute_dtype(student_logits)), teacher_logits.detach().argmax(1))


def virtual_teacher_log_probs(targets: torch.Tensor, num_classes: int, correct_prob: float = 0.9) -> torch.Tensor:
    r"""Log-probabilities ``(N, C)`` of Yuan et al.'s hand-designed *virtual teacher* (Tf-KD\ :sub:`reg`).

    .. math::  p^d(k) = a \text{ if } k = y, \qquad p^d(k) = \frac{1 - a}{C - 1} \text{ otherwise},

    a teacher that is always right with confidence ``a = correct_prob`` and spreads the rest uniformly
    (Yuan et al., "Revisiting Knowledge Distillation via Label Smoothing Regularization", CVPR 2020).
    It is the label-smoothing target with :math:`\varepsilon = (1-a)\,C/(C-1)`.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not 1.0 / num_classes <= correct_prob < 1.0:
        raise ValueError(
            f"correct_prob must lie in [1/C, 1) = [{1 / num_classes:.3g}, 1) so that the correct class is "
            f"the most likely one and every class keeps some mass, got {correct_prob!r}"
        )
    if isinstance(targets, torch.Tensor) and targets.dim() != 1:
        raise ValueError(f"targets must have shape (batch,), one class index per sample, got {tuple(targets.shape)}")
    n = targets.shape[0] if isinstance(targets, torch.Tensor) else 1
    _check_targets(targets, n, num_classes)
    rest = math.log((1.0 - correct_prob) / (num_classes - 1))
    out = torch.full((n, num_classes), rest, dtype=torch.float32, device=targets.device)
    return out.scatter_(1, targets[:, None], math.log(correct_prob))


def tf_kd_reg_loss(
    student_logits: torch.Tensor, targets: torch.Tensor, *, correct_prob: float = 0.9, temperature: float = 20.0
) -> torch.Tensor:
    r"""Teacher-free KD with a virtual teacher: :math:`T^2\,\mathrm{KL}(p^d_T \,\|\, q_T)`, batch mean.

    :math:`p^d_T = \mathrm{softmax}(\log p^d / T)` is the virtual teacher of
    :func:`virtual_teacher_log_probs` softened at temperature ``T`` and :math:`q_T = \mathrm{softmax}(s/T)`,
    as in Eq. 9 of Yuan et al. (CVPR 2020); it is :func:`~kdlib.losses.kd_loss` with the virtual teacher's
    log-probabilities as its logits. At ``T = 1`` the loss is label smoothing up to a constant.

    Note: the authors' reference code instead applies ``softmax(p^d / T)`` to the *probabilities* and leaves
    the student at ``T = 1``; we follow the paper's equation, which is the one a reader can derive.
    """
    t = check_temperature(temperature)
    # Check the student and the targets against each other first: the virtual teacher is built from the targets.
    check_logits(student_logits, student_logits)
    _check_targets(targets, student_logits.shape[0], student_logits.shape[1])
    teacher = virtual_teacher_log_probs(targets, student_logits.shape[1], correct_prob)
    return kd_loss_from_log_probs(student_logits, F.log_softmax(teacher / t, dim=-1), t)


def _check_stack(teacher_logits: torch.Tensor) -> None:
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() != 3:
        shape = tuple(teacher_logits.shape) if isinstance(teacher_logits, torch.Tensor) else type(teacher_logits)
        raise ValueError(
            f"teacher_logits must be stacked as (teachers, batch, classes), got {shape}; "
            "use torch.stack([t1_logits, t2_logits, ...])"
        )
    if not teacher_logits.is_floating_point():
        raise TypeError(f"teacher_logits must be a floating-point tensor, got {teacher_logits.dtype}")


def _check_weights(weights: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """``weights`` of shape ``(K,)`` or ``(K, N)``, >= 0, summing to 1 over teachers; returned as ``(K, N, 1)``."""
    w = torch.as_tensor(weights)
    if w.shape not in ((k,), (k, n)):
        raise ValueError(f"weights must have shape ({k},) or ({k}, {n}) for {k} teachers and {n} samples, got {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    total = w.sum(0)
    if not torch.allclose(total, torch.ones_like(total), atol=1e-4):
        raise ValueError(f"weights must sum to 1 over the teachers (got sums in [{total.min():.4g}, {total.max():.4g}]); divide by their sum")
    w = w.double() if w.dtype == torch.float64 else w.float()
    return (w[:, None] if w.dim() == 1 else w).expand(k, n)[..., None]


def ensemble_log_probs(
    teacher_logits: torch.Tensor, temperature: float = 1.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Log of the teachers' weighted mean soft targets, :math:`\log \sum_k w_k\,\mathrm{softmax}(z_k / T)`.

    Averaging *probabilities* at the distillation temperature is the ensemble of Hinton et al. (2015) and
    of most multi-teacher KD (You et al., KDD 2017). Computed with log-sum-exp, so confident teachers do
    not underflow.

    Args:
        teacher_logits: ``(K, N, C)``, the ``K`` teachers' logits stacked.
        temperature: :math:`T > 0`.
        weights: ``None`` (uniform, :math:`1/K`), per-teacher ``(K,)`` or per-sample ``(K, N)``; >= 0 and
            summing to 1 over teachers.

    Returns:
        ``(N, C)`` log-probabilities (detached). ``T * ensemble_log_probs(z, T)`` are logits whose
        softmax at ``T`` is the ensemble's distribution, so any logit loss can take them.
    """
    _check_stack(teacher_logits)
    t = check_temperature(temperature)
    k, n, _ = teacher_logits.shape
    z = teacher_logits.detach().to(_compute_dtype(teacher_logits))
    log_p = F.log_softmax(z / t, dim=-1)
    if weights is None:
        return torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(k), dtype=log_p.dtype))
    w = _check_weights(weights, k, n).to(device=log_p.device, dtype=log_p.dtype)
    # log(0) = -inf for a teacher with weight 0 is exact; logsumexp handles it as long as one weight is > 0.
    return torch.logsumexp(log_p + torch.log(w), dim=0)


def confidence_weights(teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Per-sample teacher weights ``(K, N)`` of confidence-aware multi-teacher KD (CA-MKD).

    .. math::  w_k(x) = \frac{1}{K - 1}\left(1 - \frac{\exp \mathcal{L}^k_{CE}(x)}{\sum_j \exp \mathcal{L}^j_{CE}(x)}\right),
               \qquad \mathcal{L}^k_{CE}(x) = -\log p_k(y \mid x)

    A teacher that puts less probability on the true label gets less weight on that sample; the weights
    sum to 1 over teachers (Zhang, Chen & Wang, "Confidence-Aware Multi-Teacher Knowledge Distillation",
    ICASSP 2022). With one teacher the weight is 1.
    """
    _check_stack(teacher_logits)
    k, n, c = teacher_logits.shape
    _check_targets(targets, n, c)
    if k == 1:
        return teacher_logits.new_ones((1, n), dtype=torch.float32)
    z = teacher_logits.detach().to(_compute_dtype(teacher_logits))
    ce = -F.log_softmax(z, dim=-1).gather(-1, targets.expand(k, n)[..., None]).squeeze(-1)
    return (1.0 - torch.softmax(ce, dim=0)) / (k - 1)


def multi_teacher_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""KD from an ensemble of teachers: :math:`T^2\,\mathrm{KL}(\bar p_T \,\|\, q_T)`, batch mean.

    :math:`\bar p_T = \sum_k w_k\,\mathrm{softmax}(z_k/T)` (:func:`ensemble_log_probs`). With one teacher
    and no weights it equals :func:`~kdlib.losses.kd_loss`. Gradient flows into the student only.

    Args:
        student_logits: ``(N, C)``.
        teacher_logits: ``(K, N, C)``.
        temperature: :math:`T > 0`.
        weights: ``None`` (uniform), ``(K,)`` or ``(K, N)`` (e.g. :func:`confidence_weights`).
    """
    _check_stack(teacher_logits)
    check_logits(student_logits, teacher_logits[0])
    t = check_temperature(temperature)
    return kd_loss_from_log_probs(student_logits, ensemble_log_probs(teacher_logits, t, weights), t)
