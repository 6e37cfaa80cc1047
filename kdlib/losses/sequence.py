r"""Token-level distillation losses for sequence models: logits of shape ``(batch, length, vocabulary)``.

A language model predicts a distribution over the vocabulary at every position, so distilling it compares two
distributions per token, :math:`p = \mathrm{softmax}(t_{b,l}/T)` (the teacher) and
:math:`q = \mathrm{softmax}(s_{b,l}/T)` (the student), and averages over the positions that count: a ``mask``
``(batch, length)`` marks them (padding, and often the prompt, are left out). Every loss here returns

.. math::

    \mathcal{L} = \frac{1}{|\mathcal{M}|} \sum_{(b, l) \in \mathcal{M}} D\big(p_{b,l}, q_{b,l}\big),

0 (with a gradient) when no position counts. The divergences:

* :func:`token_forward_kl`, :math:`\mathrm{KL}(p \,\|\, q)`: word-level KD (Kim & Rush 2016), Hinton's loss per token.
  Mode covering: the student is penalised wherever the teacher has mass it lacks.
* :func:`token_reverse_kl`, :math:`\mathrm{KL}(q \,\|\, p)`: MiniLLM (Gu et al. 2024). Mode seeking: the student is
  penalised for mass where the teacher has little, and may ignore some of the teacher's modes.
* :func:`token_generalized_jsd`, :math:`\beta\,\mathrm{KL}(p\,\|\,m) + (1-\beta)\,\mathrm{KL}(q\,\|\,m)` with
  :math:`m = \beta p + (1-\beta) q`: GKD's generalized Jensen–Shannon divergence (Agarwal et al. 2024, Eq. 1);
  like its reference code, :math:`\beta = 0` means forward KL and :math:`\beta = 1` reverse KL (the mixture
  formula itself vanishes at both ends).
* :func:`token_skew_kl`, :math:`\mathrm{KL}(p \,\|\, \alpha p + (1-\alpha) q)` and its reverse
  :math:`\mathrm{KL}(q \,\|\, \alpha q + (1-\alpha) p)`: DistiLLM's skew KL (Ko et al. 2024), bounded where plain KL
  explodes on near-zero probabilities.

Unlike classifier KD (:func:`~kdlib.losses.kd_loss`) there is no :math:`T^2` factor: sequence distillation
usually runs at :math:`T = 1`, and the references do not scale. The teacher is always treated as a constant;
half-precision logits are computed in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_temperature

__all__ = ["token_forward_kl", "token_generalized_jsd", "token_mean", "token_reverse_kl", "token_skew_kl"]


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Checked log-probabilities ``(log q, log p)`` at ``temperature`` in float32 or wider, and the boolean mask."""
    if not isinstance(student_logits, torch.Tensor) or not isinstance(teacher_logits, torch.Tensor):
        raise TypeError("student_logits and teacher_logits must be tensors")
    if student_logits.dim() != 3:
        raise ValueError(f"sequence logits must have shape (batch, length, vocabulary), got {tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} must have "
            "the same shape (same batch, length and vocabulary)"
        )
    if mask is not None:
        if mask.shape != student_logits.shape[:2]:
            raise ValueError(f"mask must have shape (batch, length) = {tuple(student_logits.shape[:2])}, got "
                             f"{tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("mask must be boolean or hold only 0 and 1 (1 = the position counts)")
            mask = mask.bool()
    t = check_temperature(temperature)
    dtype = torch.promote_types(torch.promote_types(torch.float32, student_logits.dtype), teacher_logits.dtype)
    log_q = F.log_softmax(student_logits.to(dtype) / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().to(dtype) / t, dim=-1)
    return log_q, log_p, mask


def token_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``per_token`` ``(batch, length)`` over the positions ``mask`` keeps (all without a mask); 0 with a
    gradient when it keeps none."""
    if mask is None:
        return per_token.mean()
    kept = mask.to(per_token.dtype)
    return (per_token * kept).sum() / kept.sum().clamp_min(1.0)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum_v a_v (\\log a_v - \\log b_v)` over the last dim; finite where :math:`a_v` underflows to 0."""
    return F.kl_div(log_b, log_a, reduction="none", log_target=True).sum(-1)


def token_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
                     temperature: float = 1.0) -> torch.Tensor:
    r"""Token-level forward KL, :math:`\mathrm{KL}(p_{\text{teacher}} \,\|\, q_{\text{student}})`, averaged over the
    positions in ``mask``: word-level knowledge distillation (Kim & Rush 2016, "Sequence-Level Knowledge
    Distillation", Eq. 2), Hinton et al.'s loss applied at every position.

    Args:
        student_logits: ``(batch, length, vocabulary)``; gradients flow into these.
        teacher_logits: the same shape; treated as constants.
        mask: ``(batch, length)``, boolean or 0/1: the positions that count (``None``: all).
        temperature: :math:`T > 0` applied to both models' logits.
    """
    log_q, log_p, mask = _log_probs(student_logits, teacher_logits, temperature, mask)
    return token_mean(_kl(log_p, log_q), mask)


def token_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
                     temperature: float = 1.0) -> torch.Tensor:
    r"""Token-level reverse KL, :math:`\mathrm{KL}(q_{\text{student}} \,\|\, p_{\text{teacher}})`, averaged over the
    positions in ``mask`` (MiniLLM, Gu et al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models").

    Mode seeking: the student's own probabilities weight the log-ratio, so mass it places where the teacher has
    little costs most, while teacher modes it misses cost little. Arguments as in :func:`token_forward_kl`.
    """
    log_q, log_p, mask = _log_probs(student_logits, teacher_logits, temperature, mask)
    return token_mean(_kl(log_q, log_p), mask)


def token_generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                          *, beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    r"""GKD's generalized Jensen–Shannon divergence per token (Agarwal et al. 2024, "On-Policy Distillation of
    Language Models: Learning from Self-Generated Mistakes", Eq. 1), averaged over the positions in ``mask``:

    .. math::

        D_{\mathrm{JSD}(\beta)}(p \,\|\, q) = \beta\,\mathrm{KL}\big(p \,\|\, m\big) + (1-\beta)\,\mathrm{KL}\big(q
        \,\|\, m\big), \qquad m = \beta p + (1-\beta) q,

    with :math:`p` the teacher's and :math:`q` the student's distribution. :math:`\beta = 0.5` is the symmetric
    Jensen–Shannon divergence (at most :math:`\log 2`). As in the reference implementation (TRL's
    ``GKDTrainer``), ``beta=0`` is the forward KL :math:`\mathrm{KL}(p\,\|\,q)` and ``beta=1`` the reverse KL
    :math:`\mathrm{KL}(q\,\|\,p)`, the directions the divergence approaches (up to scale) as :math:`\beta` goes to 0
    and 1.

    Args:
        beta: the interpolation weight in [0, 1].
        Others: as in :func:`token_forward_kl`.
    """
    b = float(beta)
    if not 0.0 <= b <= 1.0:
        raise ValueError(f"beta must lie in [0, 1] (0: forward KL, 1: reverse KL), got {beta!r}")
    log_q, log_p, mask = _log_probs(student_logits, teacher_logits, temperature, mask)
    if b == 0.0:
        return token_mean(_kl(log_p, log_q), mask)
    if b == 1.0:
        return token_mean(_kl(log_q, log_p), mask)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(b), log_q + math.log(1.0 - b)]), dim=0)
    return token_mean(b * _kl(log_p, log_m) + (1.0 - b) * _kl(log_q, log_m), mask)


def token_skew_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
                  alpha: float = 0.1, reverse: bool = False, temperature: float = 1.0) -> torch.Tensor:
    r"""DistiLLM's skew KL per token (Ko et al. 2024, "DistiLLM: Towards Streamlined Distillation for Large Language
    Models", Eq. 3), averaged over the positions in ``mask``:

    .. math::

        \begin{aligned}
        \mathrm{SKL}^{(\alpha)} &= \mathrm{KL}\big(p \,\|\, \alpha p + (1-\alpha) q\big), \\
        \mathrm{SRKL}^{(\alpha)} &= \mathrm{KL}\big(q \,\|\, (1-\alpha) p + \alpha q\big) \quad (\texttt{reverse=True}).
        \end{aligned}

    Mixing a share :math:`\alpha` of the first distribution into the second keeps the log-ratio bounded by
    :math:`\log(1/\alpha)`; :math:`\alpha = 0` gives the forward (or reverse) KL.

    Args:
        alpha: the skew in [0, 1); DistiLLM uses 0.1.
        reverse: the skew reverse KL instead of the skew forward KL.
        Others: as in :func:`token_forward_kl`.
    """
    a = float(alpha)
    if not 0.0 <= a < 1.0:
        raise ValueError(f"alpha must lie in [0, 1) (0: plain KL), got {alpha!r}")
    log_q, log_p, mask = _log_probs(student_logits, teacher_logits, temperature, mask)
    first, second = (log_q, log_p) if reverse else (log_p, log_q)
    if a == 0.0:
        return token_mean(_kl(first, second), mask)
    log_mix = torch.logsumexp(torch.stack([first + math.log(a), second + math.log(1.0 - a)]), dim=0)
    return token_mean(_kl(first, log_mix), mask)
