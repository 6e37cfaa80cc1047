"""Relation-based distillation losses: the student mimics how the teacher relates the samples of a batch.

Each sample's features, of any shape, are flattened to one embedding vector, so the inputs become
``(N, D_s)`` and ``(N, D_t)`` matrices. The losses compare ``N x N`` (or ``N x N x N``) relations between the
samples, never the embeddings themselves, so the student's and the teacher's widths ``D_s`` and ``D_t`` may
differ and no adapter is needed; but a batch needs at least 2 samples (3 for RKD's angles). The teacher's
features are treated as constants (detached). Everything is computed in float32 or wider.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_features
from kdlib.losses.feature import _compute_dtype, _unit_rows

__all__ = [
    "pairwise_distances",
    "pkt_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "similarity_matrix",
    "sp_loss",
]


def _embeddings(features: torch.Tensor, name: str = "features") -> torch.Tensor:
    """Check one ``(N, ...)`` feature tensor and flatten it to ``(N, D)`` in float32 or wider."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {features.dtype}")
    if features.dim() < 2:
        raise ValueError(f"{name} need at least 2 dimensions (batch first), got {tuple(features.shape)}")
    return features.flatten(1).to(_compute_dtype(features))


def _pair(
    student_features: torch.Tensor, teacher_features: torch.Tensor, min_batch: int, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked, flattened ``(N, D_s)`` student and detached ``(N, D_t)`` teacher embeddings."""
    check_features(student_features, teacher_features, min_dim=2)
    n = student_features.shape[0]
    if n < min_batch:
        raise ValueError(
            f"{method} compares samples within a batch and needs at least {min_batch} samples, got a batch of {n}; "
            "use a larger batch"
        )
    dtype = _compute_dtype(student_features, teacher_features)
    return student_features.flatten(1).to(dtype), teacher_features.detach().flatten(1).to(dtype)


# ------------------------------------------------------------------------------------ similarity-preserving


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    r"""The row-normalised Gram matrix of similarity-preserving KD (Tung and Mori, 2019).

    .. math::

        \tilde G = f f^\top, \qquad G_{i,:} = \tilde G_{i,:} / \lVert \tilde G_{i,:} \rVert_2

    where :math:`f` is the ``(N, D)`` matrix of flattened features. Entry :math:`G_{ij}` says how similarly
    the layer responds to samples :math:`i` and :math:`j`; a row of zeros (a sample with zero features)
    stays zero.

    Args:
        features: ``(N, ...)`` features of any shape, flattened per sample.

    Returns:
        ``(N, N)`` float32-or-wider tensor.
    """
    f = _embeddings(features)
    return _unit_rows(f @ f.T)


def sp_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    r"""Similarity-preserving KD loss of Tung and Mori (2019) for one pair of layers.

    .. math::

        \mathcal{L}_{SP} = \frac{1}{N^2} \big\lVert G^S - G^T \big\rVert_F^2

    with :math:`G` the row-normalised ``(N, N)`` Gram matrices of :func:`similarity_matrix`.

    Paper: Tung and Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (the paper sums this
    over chosen pairs of layers, weighted by :math:`\gamma`). Same normalisation as RepDistiller's
    ``Similarity`` loss ("verified by original author"). Default weight: RepDistiller uses
    :math:`\gamma = 3000` (``-b 3000``) on the output of the second-to-last group of layers, next to
    cross-entropy with weight 1.

    Invariances: unchanged by a global scale of either input and by an orthogonal map (rotation) of either
    embedding, since both leave :math:`G` unchanged; not by translations.

    Args:
        student_features: ``(N, ...)`` student features; gradients flow into these.
        teacher_features: ``(N, ...)`` teacher features, same N, any width; detached.

    Returns:
        A scalar tensor (float32 or wider), >= 0 and 0 when the two similarity matrices are equal.

    Raises:
        ValueError: if the batch sizes differ or N < 2.
        TypeError: if an input is not a floating-point tensor.
    """
    s, t = _pair(student_features, teacher_features, 2, "similarity-preserving KD")
    n = s.shape[0]
    g_s = _unit_rows(s @ s.T)
    g_t = _unit_rows(t @ t.T)
    return (g_s - g_t).pow(2).sum() / (n * n)


# ---------------------------------------------------------------------------------------------------- RKD


def pairwise_distances(features: torch.Tensor) -> torch.Tensor:
    r"""Euclidean distances :math:`\lVert f_i - f_j \rVert_2` between all samples, an ``(N, N)`` matrix.

    Computed from the differences, not from the Gram matrix (:math:`\lVert a\rVert^2 + \lVert b\rVert^2 -
    2 a^\top b` loses precision for nearby points far from the origin). The diagonal, and the distance of
    identical samples, is exactly 0 with a zero (not NaN) gradient.

    Args:
        features: ``(N, ...)`` features of any shape, flattened per sample.

    Returns:
        ``(N, N)`` float32-or-wider symmetric tensor with a zero diagonal.
    """
    f = _embeddings(features)
    return torch.cdist(f, f, compute_mode="donot_use_mm_for_euclid_dist")


def _normalised_distances(f: torch.Tensor) -> torch.Tensor:
    """Pairwise distances divided by their mean over the N(N-1) ordered pairs of distinct samples."""
    d = pairwise_distances(f)
    n = d.shape[0]
    mean = d.sum() / (n * (n - 1))
    # All samples identical: every distance is 0; keep them 0 rather than 0/0.
    return d / mean.clamp_min(torch.finfo(d.dtype).tiny)


def _triplet_cosines(f: torch.Tensor) -> torch.Tensor:
    """``c[j, i, k] = <e_ij, e_kj>`` with ``e_ij = (f_i - f_j) / ||f_i - f_j||``: the angle at vertex j.

    Entries with ``i == j`` or ``k == j`` (and identical samples) are 0.
    """
    e = _unit_rows(f.unsqueeze(0) - f.unsqueeze(1))  # e[j, i] = unit(f_i - f_j)
    return e @ e.transpose(1, 2)


def rkd_distance_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    r"""Distance-wise relational KD loss (RKD-D) of Park et al. (2019).

    .. math::

        \psi_D(f_i, f_j) = \frac{\lVert f_i - f_j \rVert_2}{\mu}, \quad
        \mu = \frac{1}{N(N-1)} \sum_{i \ne j} \lVert f_i - f_j \rVert_2,

        \mathcal{L}_{RKD\text{-}D} = \frac{1}{N^2} \sum_{i=1}^{N} \sum_{j=1}^{N}
            \ell_\delta\big(\psi_D(s_i, s_j) - \psi_D(t_i, t_j)\big)

    with the Huber loss :math:`\ell_\delta(x) = x^2/2` for :math:`|x| < 1` and :math:`|x| - 1/2` otherwise
    (``F.smooth_l1_loss`` with ``beta=1``).

    Paper: Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019. The paper sums over
    distinct pairs; the authors' code (and RepDistiller) averages over all :math:`N^2` entries of the
    distance matrix, diagonal included, which this function follows: it equals :math:`(N-1)/N` times the
    mean over distinct ordered pairs. The authors' code divides by the mean of the entries > 0, which,
    since it clamps squared distances at :math:`10^{-12}`, are all the off-diagonal ones: the same
    :math:`\mu` as here.

    Invariances: 0 when the embeddings are equal; unchanged by a global scale (the normalisation by
    :math:`\mu`), a translation or an orthogonal map of either embedding.

    Args:
        student_features: ``(N, ...)`` student features; gradients flow into these.
        teacher_features: ``(N, ...)`` teacher features, same N, any width; detached.

    Returns:
        A scalar tensor (float32 or wider), >= 0.

    Raises:
        ValueError: if the batch sizes differ or N < 2.
        TypeError: if an input is not a floating-point tensor.
    """
    s, t = _pair(student_features, teacher_features, 2, "RKD's distance loss")
    return F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t))


def rkd_angle_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    r"""Angle-wise relational KD loss (RKD-A) of Park et al. (2019).

    .. math::

        \psi_A(f_i, f_j, f_k) = \langle e_{ij}, e_{kj} \rangle, \quad
        e_{ij} = \frac{f_i - f_j}{\lVert f_i - f_j \rVert_2},

        \mathcal{L}_{RKD\text{-}A} = \frac{1}{N^3} \sum_{i,j,k}
            \ell_\delta\big(\psi_A(s_i, s_j, s_k) - \psi_A(t_i, t_j, t_k)\big)

    the cosine of the angle at vertex :math:`j` of every triplet, compared with the Huber loss
    :math:`\ell_\delta` (``F.smooth_l1_loss``, ``beta=1``). Degenerate triplets (:math:`i = j` or
    :math:`k = j`, or coinciding samples) count as cosine 0.

    Paper: Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019. Like the authors' code and
    RepDistiller, the mean runs over all :math:`N^3` ordered triplets, degenerate ones included.
    Memory: an ``(N, N, D)`` tensor of differences and an ``(N, N, N)`` tensor of cosines.

    Invariances: 0 when the embeddings are equal; unchanged by a global scale, a translation or an
    orthogonal map of either embedding.

    Args:
        student_features: ``(N, ...)`` student features; gradients flow into these.
        teacher_features: ``(N, ...)`` teacher features, same N, any width; detached.

    Returns:
        A scalar tensor (float32 or wider), >= 0.

    Raises:
        ValueError: if the batch sizes differ or N < 3 (an angle needs three samples).
        TypeError: if an input is not a floating-point tensor.
    """
    s, t = _pair(student_features, teacher_features, 3, "RKD's angle loss")
    return F.smooth_l1_loss(_triplet_cosines(s), _triplet_cosines(t))


def rkd_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    r"""Relational KD (Park et al., 2019): :math:`\lambda_D \mathcal{L}_{RKD\text{-}D} + \lambda_A
    \mathcal{L}_{RKD\text{-}A}`, see :func:`rkd_distance_loss` and :func:`rkd_angle_loss`.

    Defaults :math:`\lambda_D = 25`, :math:`\lambda_A = 50`: the authors' CIFAR classification script
    (``run_distill_classification.py`` in lenscloth/RKD) and RepDistiller's ``RKDLoss`` (used there with an
    outer weight :math:`\beta = 1` on the penultimate embedding). For metric learning the paper uses
    :math:`\lambda_D = 1`, :math:`\lambda_A = 2`. A weight of 0 skips that term (not both).

    Args:
        student_features: ``(N, ...)`` student features; gradients flow into these.
        teacher_features: ``(N, ...)`` teacher features, same N, any width; detached.
        distance_weight: :math:`\lambda_D \ge 0`.
        angle_weight: :math:`\lambda_A \ge 0`.

    Returns:
        A scalar tensor (float32 or wider), >= 0.
    """
    weights = {"distance_weight": distance_weight, "angle_weight": angle_weight}
    for name, w in weights.items():
        if not (math.isfinite(float(w)) and float(w) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
    if not (distance_weight or angle_weight):
        raise ValueError("distance_weight and angle_weight are both 0: at least one RKD term must be used")
    s, t = _pair(student_features, teacher_features, 3 if angle_weight else 2, "RKD")
    loss = s.new_zeros(())
    if distance_weight:
        loss = loss + float(distance_weight) * F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t))
    if angle_weight:
        loss = loss + float(angle_weight) * F.smooth_l1_loss(_triplet_cosines(s), _triplet_cosines(t))
    return loss


# ---------------------------------------------------------------------------------------------------- PKT


def _cosine_kernel_probabilities(f: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows of the cosine kernel ``(K + 1) / 2`` normalised to sum to 1 (PKT's conditional probabilities)."""
    unit = f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Probabilistic knowledge transfer (PKT) loss of Passalis and Tefas (2018).

    .. math::

        K_{ij} = \frac{1}{2}\Big(\frac{f_i^\top f_j}{(\lVert f_i \rVert + \epsilon)(\lVert f_j \rVert + \epsilon)}
            + 1\Big), \quad
        p_{j|i} = \frac{K_{ij}}{\sum_{k} K_{ik}},

        \mathcal{L}_{PKT} = \frac{1}{N^2} \sum_{i=1}^{N} \sum_{j=1}^{N}
            p^T_{j|i} \log \frac{p^T_{j|i} + \epsilon}{p^S_{j|i} + \epsilon}

    the KL divergence from the teacher's to the student's conditional probabilities, with the cosine
    kernel on each model's embeddings.

    Paper: Passalis and Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
    ECCV 2018. This follows the authors' code (``cosine_similarity_loss`` in passalis/probabilistic_kt, copied
    by RepDistiller's ``PKT``), which produced the published numbers: the sums over :math:`k` include
    :math:`k = i` (the paper's definition excludes it), :math:`\epsilon = 10^{-7}` guards the norms and the
    logarithm, and the result is the mean over all :math:`N^2` entries, i.e. the batch mean of the per-row
    KL divided by :math:`N`. Default weight: RepDistiller uses :math:`\beta = 30000` (``-b 30000``) on the
    penultimate embedding, next to cross-entropy with weight 1.

    Invariances: 0 when the embeddings are equal; unchanged (up to :math:`\epsilon`) by a positive scale of
    any sample's embedding and by an orthogonal map of either embedding.

    Args:
        student_features: ``(N, ...)`` student features; gradients flow into these.
        teacher_features: ``(N, ...)`` teacher features, same N, any width; detached.
        eps: :math:`\epsilon > 0`, default :math:`10^{-7}` as in the authors' code.

    Returns:
        A scalar tensor (float32 or wider), >= 0 up to rounding of order :math:`\epsilon`.

    Raises:
        ValueError: if the batch sizes differ, N < 2 or ``eps <= 0``.
        TypeError: if an input is not a floating-point tensor.
    """
    if not (math.isfinite(float(eps)) and float(eps) > 0):
        raise ValueError(f"eps must be a small finite number > 0, got {eps!r}")
    s, t = _pair(student_features, teacher_features, 2, "PKT")
    p_s = _cosine_kernel_probabilities(s, eps)
    p_t = _cosine_kernel_probabilities(t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()
