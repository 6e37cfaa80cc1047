"""Feature-based distillation losses: functions of one student layer's and one teacher layer's activations.

Shapes: features are float tensors with the batch first, ``(N, C, H, W)`` for 2-D conv layers, ``(N, C, L)``
for 1-D conv layers, ``(N, D)`` for fully connected layers. The teacher's features are treated as constants
(detached); gradients flow into the student's features only. Everything is computed in float32 or wider,
whatever the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_features

__all__ = ["at_loss", "attention_map", "fitnet_loss"]


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The widest dtype among ``tensors`` and float32 (fp16/bf16 inputs are computed in float32)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x`` divided by the L2 norm of its last dimension; rows with norm <= eps become 0.

    Unlike ``F.normalize`` (which divides a zero row by ``eps`` and so passes back gradients of order
    ``1/eps``), a zero row gets a zero gradient here: its direction is undefined, so it teaches nothing.
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    nonzero = norm > eps
    return torch.where(nonzero, x / norm.clamp_min(eps), torch.zeros_like(x))


def fitnet_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    r"""FitNets hint loss of Romero et al. (2015): mean squared error between the (adapted) student's and
    the teacher's features.

    .. math::

        \mathcal{L}_{hint} = \frac{1}{N\,M} \sum_{n=1}^{N} \sum_{m=1}^{M}
            \big(r(s)_{n,m} - t_{n,m}\big)^2

    where :math:`t` is the teacher's "hint" layer, :math:`r(s)` the student's "guided" layer after a
    regressor :math:`r` (a small learned adapter that maps the student's shape to the teacher's; the
    library's distiller creates it) and :math:`M` the number of elements per sample.

    Paper: Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets: Hints for Thin Deep Nets",
    ICLR 2015. The paper writes the loss as :math:`\tfrac12 \lVert t - r(s) \rVert^2` per sample, a sum over
    elements; this function follows RepDistiller's ``HintLoss`` (``nn.MSELoss``, a mean over all
    :math:`N M` elements), which produced the published CIFAR-100 numbers. The two differ by the constant
    :math:`M/2` per sample, which only rescales the weight: RepDistiller weighs this mean with
    :math:`\beta = 100` (``-b 100`` in its scripts), next to cross-entropy with weight 1.

    Args:
        student_features: ``(N, ...)`` student features already mapped by the regressor; gradients flow
            into these. Any rank >= 2.
        teacher_features: teacher features of exactly the same shape; treated as constants (detached).

    Returns:
        A scalar tensor (float32 or wider), 0 when the features are equal and > 0 otherwise.

    Raises:
        ValueError: if the shapes differ (map the student first) or the batch is empty.
        TypeError: if an input is not a floating-point tensor.
    """
    check_features(student_features, teacher_features, same_shape=True, min_dim=2)
    dtype = _compute_dtype(student_features, teacher_features)
    return F.mse_loss(student_features.to(dtype), teacher_features.detach().to(dtype))


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    r"""Spatial attention map of Zagoruyko and Komodakis (2017), flattened and L2-normalised per sample.

    .. math::

        Q_n = \operatorname{vec}\Big(\frac{1}{C} \sum_{c=1}^{C} |A_{n,c}|^{p}\Big), \qquad
        F_n = \frac{Q_n}{\lVert Q_n \rVert_2}

    where :math:`A_{n,c}` is channel :math:`c` of sample :math:`n`'s activation, an ``(H, W)`` map for 2-D
    convs or a length-``L`` signal for 1-D convs. The mean over channels (rather than the paper's sum)
    is what the authors' code and RepDistiller use; the normalisation makes the two identical. A map that
    is zero everywhere (e.g. all ReLUs dead) stays zero.

    Paper: Zagoruyko and Komodakis, "Paying More Attention to Attention: Improving the Performance of
    Convolutional Neural Networks via Attention Transfer", ICLR 2017; :math:`p = 2` is the paper's and
    RepDistiller's default. RepDistiller raises to the power :math:`p` without the absolute value, which is
    the same for even :math:`p`; this function uses :math:`|A|^p` as in the paper.

    Args:
        features: ``(N, C, *spatial)`` activations, e.g. ``(N, C, H, W)`` or ``(N, C, L)``.
        p: the exponent :math:`p \ge 1`; larger :math:`p` puts more weight on the most active positions.

    Returns:
        ``(N, prod(spatial))`` float32-or-wider tensor with unit L2 norm per row (or zero rows).
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got {features.dtype}")
    if features.dim() < 3:
        raise ValueError(
            f"attention maps need features with channels and at least one spatial dimension, (N, C, H, W) or "
            f"(N, C, L), got {tuple(features.shape)}"
        )
    p = _check_power(p)
    a = features.to(_compute_dtype(features)).abs().pow(p).mean(dim=1)
    return _unit_rows(a.flatten(1))


def at_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    r"""Attention-transfer loss of Zagoruyko and Komodakis (2017) for one pair of layers.

    .. math::

        \mathcal{L}_{AT} = \frac{1}{N\,P} \sum_{n=1}^{N} \sum_{i=1}^{P}
            \big(F^S_{n,i} - F^T_{n,i}\big)^2

    where :math:`F^S, F^T` are the normalised attention maps of :func:`attention_map` and :math:`P` the
    number of spatial positions (``H*W`` or ``L``).

    Paper: Zagoruyko and Komodakis, "Paying More Attention to Attention: Improving the Performance of
    Convolutional Neural Networks via Attention Transfer", ICLR 2017. The paper's objective adds
    :math:`\tfrac{\beta}{2} \sum_j \lVert F^S_j - F^T_j \rVert_p` over layer pairs :math:`j` with
    :math:`\beta = 10^3` "divided by the number of elements in attention map and batch size for each
    layer"; the authors' code and RepDistiller implement this as the squared difference averaged over batch
    and positions (this function), summed over layer pairs and multiplied by :math:`\beta = 1000`
    (RepDistiller uses :math:`\beta` where the authors' code uses :math:`\beta/2`). So the weight to use with
    this function is RepDistiller's :math:`\beta = 1000` per layer pair, next to cross-entropy with weight 1.

    Channel counts may differ (the maps average over channels); the spatial sizes must match. RepDistiller
    silently average-pools the larger map; here that choice is left to the caller.

    Args:
        student_features: ``(N, C_s, *spatial)`` student activations; gradients flow into these.
        teacher_features: ``(N, C_t, *spatial)`` teacher activations, same N and spatial size; detached.
        p: exponent of :func:`attention_map`, default 2.

    Returns:
        A scalar tensor (float32 or wider), 0 when the two attention maps are equal, > 0 otherwise; at most
        :math:`4/P` since both maps have unit norm.

    Raises:
        ValueError: if the spatial sizes or batch sizes differ, the batch is empty, or ``p < 1``.
        TypeError: if an input is not a floating-point tensor.
    """
    check_features(student_features, teacher_features, min_dim=3)
    if student_features.shape[2:] != teacher_features.shape[2:]:
        raise ValueError(
            f"attention transfer compares maps position by position, but the student's spatial size "
            f"{tuple(student_features.shape[2:])} differs from the teacher's {tuple(teacher_features.shape[2:])}; "
            "pick layers with the same resolution, or pool/interpolate one of them first "
            "(F.adaptive_avg_pool2d / F.interpolate)"
        )
    dtype = _compute_dtype(student_features, teacher_features)
    a_s = attention_map(student_features.to(dtype), p)
    a_t = attention_map(teacher_features.detach().to(dtype), p)
    return (a_s - a_t).pow(2).mean()


def _check_power(p: float) -> float:
    value = float(p)
    # p < 1 would make the gradient of |a|^p infinite at a = 0, common after a ReLU.
    if not (value >= 1 and math.isfinite(value)):
        raise ValueError(f"the attention exponent p must be a finite number >= 1 (the paper uses 1, 2 or 4), got {p!r}")
    return value
