"""Logit-based distillation losses: functions of the student's and the teacher's ``(N, C)`` logits.

Shapes: logits are ``(N, C)`` float tensors; targets are ``(N,)`` int64 class indices. The teacher's logits
are treated as constants (detached); gradients flow into the student's logits only. Everything is computed
in float32 or wider, whatever the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_alpha, check_logits, check_temperature

__all__ = [
    "cross_entropy",
    "dist_loss",
    "dkd_loss",
    "dkd_parts",
    "hinton_loss",
    "kd_loss",
    "kd_loss_from_log_probs",
    "mse_logit_loss",
    "pearson_distance",
    "soft_targets",
    "standardize_logits",
    "teacher_log_probs",
]


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The widest dtype among ``tensors`` and float32 (fp16/bf16 inputs are computed in float32)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_weight(name: str, value: float) -> float:
    """Return a loss weight as a float after checking it is finite and >= 0."""
    w = float(value)
    if not (w >= 0.0 and math.isfinite(w)):
        raise ValueError(f"{name} weighs a loss term and must be a finite number >= 0, got {value!r}")
    return w


def _check_targets(targets: torch.Tensor, batch: int, classes: int) -> None:
    """``targets`` are int64 class indices of shape ``(batch,)`` with values in ``[0, classes)``."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of class indices, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must be int64 class indices, got {targets.dtype}; use targets.long()")
    if targets.dim() != 1 or targets.shape[0] != batch:
        raise ValueError(f"targets must have shape ({batch},) to match the logits, got {tuple(targets.shape)}")
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"targets must lie in [0, {classes}) for {classes} classes, got values in [{low}, {high}]"
        )


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Softmax at temperature :math:`T`: :math:`p_i = \exp(z_i/T) / \sum_j \exp(z_j/T)`.

    Higher :math:`T` flattens the distribution and reveals the relative probabilities of wrong classes,
    the "dark knowledge" of Hinton et al. (2015). Computed in float32 at least, along the last dimension.
    """
    t = check_temperature(temperature)
    return torch.softmax(logits.float() / t, dim=-1)


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Logit standardization of Sun et al. (2024): a per-sample z-score over the classes.

    .. math::

        \mathcal{Z}(z)_{n,i} = \frac{z_{n,i} - \bar z_n}{\sigma_n + \epsilon},

        \bar z_n = \frac1C \sum_{j=1}^{C} z_{n,j}, \qquad
        \sigma_n = \sqrt{\frac{1}{C-1} \sum_{j=1}^{C} (z_{n,j} - \bar z_n)^2}

    Paper: Sun, Ren, Li, Wang and Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024.
    The paper writes the standard deviation with :math:`1/C`; the reference code
    (``sunshangquan/logit-standardization-KD``, ``normalize`` in ``mdistiller/distillers/KD.py``) uses
    ``Tensor.std``, the unbiased :math:`1/(C-1)` estimate, with :math:`\epsilon = 10^{-7}` added to
    :math:`\sigma`. This function follows the code. The two differ by the constant factor
    :math:`\sqrt{C/(C-1)}`, which a change of temperature absorbs.

    After standardization every row has mean 0 and (unbiased) standard deviation 1, so a KD loss on
    standardized logits ignores the range and offset of each model's logits and matches only their
    shape: it is invariant to a per-sample shift and positive scaling of either model's logits (up to
    :math:`\epsilon`).

    A row whose logits are all equal has :math:`\sigma = 0` and becomes all zeros; its gradient is taken as
    the limit from non-constant rows, :math:`(I - \tfrac1C \mathbf{1}\mathbf{1}^\top)/\epsilon` (large but
    finite), where the reference code gives NaN.

    Args:
        logits: ``(..., C)`` float tensor with ``C >= 2``; standardized along the last dimension.
        eps: :math:`\epsilon > 0` added to the standard deviation.

    Returns:
        A tensor of the same shape in float32 or wider.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise ValueError(
            f"logit standardization needs at least 2 classes along the last dimension, got shape {tuple(logits.shape)}"
        )
    if not (float(eps) > 0 and math.isfinite(float(eps))):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    z = logits.to(_compute_dtype(logits))
    centred = z - z.mean(dim=-1, keepdim=True)
    var = centred.square().sum(dim=-1, keepdim=True) / (z.shape[-1] - 1)
    # sqrt has an infinite derivative at 0: take it only where var > 0, so a constant row gets a finite gradient.
    positive = var > 0
    std = torch.where(positive, torch.where(positive, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))
    return centred / (std + eps)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    *,
    standardize: bool = False,
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

    With ``standardize=True`` both models' logits first go through :func:`standardize_logits` (Sun et al.,
    CVPR 2024, "Logit Standardization in Knowledge Distillation"), :math:`s \to \mathcal{Z}(s)`,
    :math:`t \to \mathcal{Z}(t)`, still divided by :math:`T` and still scaled by :math:`T^2`, as in the
    reference code. The loss then no longer asks the student to match the teacher's logit range, only
    its logit relations: it is invariant to per-sample shift and positive scaling of either side. The
    reference runs for CIFAR-100 (resnet32x4 to resnet8x4, KD + LS 76.62%) use ``--base-temp 2
    --kd-weight 9``: :math:`T = 2`, KD weight 9 next to cross-entropy weight 0.1, the
    ``CFG.KD.LOSS.CE_WEIGHT`` of the reference config since its commit of 2024-03-10 (1 before; some pairs use
    :math:`T = 3`; the log file names record both). :data:`kdlib.methods.METHODS` ``["kd_ls"]`` follows the
    later config. Hinton's KD itself, :func:`hinton_loss`, weighs cross-entropy by :math:`1 - \alpha`.

    Args:
        student_logits: ``(N, C)`` raw student outputs; gradients flow into these.
        teacher_logits: ``(N, C)`` raw teacher outputs; treated as constants (detached).
        temperature: :math:`T > 0`.
        standardize: z-score both models' logits per sample first (needs ``C >= 2``).

    Returns:
        A scalar tensor (float32 or wider), 0 when the two distributions are equal and > 0 otherwise.
    """
    check_logits(student_logits, teacher_logits)
    t = check_temperature(temperature)
    log_p = teacher_log_probs(teacher_logits, t, standardize=standardize)
    return kd_loss_from_log_probs(student_logits, log_p, t, standardize=standardize)


def teacher_log_probs(
    teacher_logits: torch.Tensor, temperature: float, *, standardize: bool = False
) -> torch.Tensor:
    """The teacher's log-probabilities at temperature T, detached, in at least float32.

    A cached teacher stores these once (they do not change during training), so each step skips a
    log-softmax; see :func:`kd_loss_from_log_probs`. With ``standardize=True`` the logits go through
    :func:`standardize_logits` first (then pass ``standardize=True`` to :func:`kd_loss_from_log_probs` too).
    """
    t = check_temperature(temperature)
    z = teacher_logits.detach()
    z = standardize_logits(z) if standardize else z.to(_compute_dtype(z))
    return F.log_softmax(z / t, dim=1)


def kd_loss_from_log_probs(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    temperature: float,
    *,
    standardize: bool = False,
) -> torch.Tensor:
    """:func:`kd_loss` with the teacher given as log-probabilities at temperature T (from :func:`teacher_log_probs`).

    Same value and gradient as ``kd_loss(student_logits, teacher_logits, T)``; shapes are checked the same way.
    ``standardize=True`` standardizes the student's logits only: the teacher's side must already have been
    standardized, by ``teacher_log_probs(teacher_logits, T, standardize=True)``.
    """
    check_logits(student_logits, teacher_log_probs)
    t = float(temperature)
    if standardize:
        s = standardize_logits(student_logits)
    else:
        # Work in at least float32: log_softmax of fp16/bf16 logits at T=1 loses the small probabilities.
        s = student_logits.to(_compute_dtype(student_logits))
    log_q = F.log_softmax(s / t, dim=1)
    # kl_div(input=log q, target=log p, log_target=True) = sum p (log p - log q); log_target keeps it
    # finite when the teacher assigns an underflowing probability to a class.
    return F.kl_div(log_q, teacher_log_probs, reduction="batchmean", log_target=True) * (t * t)


def mse_logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    r"""Logit matching of Ba and Caruana (2014): squared error between the student's and teacher's logits.

    .. math::

        \mathcal{L}_{MSE} = \frac{1}{N\,C} \sum_{n=1}^{N} \sum_{i=1}^{C} (s_{n,i} - t_{n,i})^2

    Paper: Ba and Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014. The student regresses the
    teacher's logits (the inputs of its softmax) directly, with no temperature. The paper writes the
    objective as :math:`\frac{1}{2N} \sum_n \lVert s_n - t_n \rVert_2^2`; this function takes the mean over
    all :math:`N C` elements instead (``F.mse_loss``), like the ``mse`` baselines of later KD code. The two
    differ by the constant factor :math:`C/2` (the paper's value is :math:`C/2` times this one), which
    only rescales the loss weight or learning rate. It is the :math:`T \to \infty` limit of :func:`kd_loss`
    for zero-mean logits (Hinton et al. 2015, §2.1), up to that factor.

    Args:
        student_logits: ``(N, C)`` raw student outputs; gradients flow into these.
        teacher_logits: ``(N, C)`` raw teacher outputs; treated as constants (detached).

    Returns:
        A scalar tensor (float32 or wider), 0 exactly when the logits are equal. Unlike :func:`kd_loss`
        it is not invariant to a per-sample shift of the logits.
    """
    check_logits(student_logits, teacher_logits)
    dtype = _compute_dtype(student_logits, teacher_logits)
    return F.mse_loss(student_logits.to(dtype), teacher_logits.detach().to(dtype))


def _dkd_log_probs(logits: torch.Tensor, targets: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The two log-distributions of DKD for one model, computed in log space.

    Returns ``(log_b, log_hat)``: ``log_b`` is ``(N, 2)``, the log-probabilities of (target, not target);
    ``log_hat`` is ``(N, C-1)``, the log-softmax over the non-target classes alone.
    """
    n, c = logits.shape
    z = logits.to(_compute_dtype(logits)) / t
    log_p = F.log_softmax(z, dim=1)
    is_target = F.one_hot(targets, c).bool()
    log_p_target = log_p.gather(1, targets[:, None])
    # Boolean indexing keeps row-major order: each row loses exactly its target column.
    log_p_rest = log_p[~is_target].view(n, c - 1)
    log_b = torch.cat([log_p_target, torch.logsumexp(log_p_rest, dim=1, keepdim=True)], dim=1)
    log_hat = F.log_softmax(z[~is_target].view(n, c - 1), dim=1)
    return log_b, log_hat


def dkd_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 4.0,
    standardize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The two terms of Decoupled Knowledge Distillation, ``(TCKD, NCKD)``, each times :math:`T^2`, batch-mean.

    .. math::

        \mathrm{TCKD} = \frac{T^2}{N} \sum_n \mathrm{KL}\big(b^{\mathcal T}_n \,\|\, b^{\mathcal S}_n\big),
        \qquad
        \mathrm{NCKD} = \frac{T^2}{N} \sum_n \mathrm{KL}\big(\hat p^{\mathcal T}_n \,\|\, \hat p^{\mathcal S}_n\big)

    where :math:`b_n = (p_{n,y_n},\, 1 - p_{n,y_n})` is the binary distribution "target class / any other
    class" and :math:`\hat p_{n,i} = p_{n,i} / (1 - p_{n,y_n})`, :math:`i \ne y_n`, the distribution
    renormalised over the :math:`C - 1` non-target classes, all at temperature :math:`T`. Per sample, the
    classical KD loss splits exactly as

    .. math::

        \mathrm{KD}_n = \mathrm{TCKD}_n + (1 - p^{\mathcal T}_{n,y_n})\,\mathrm{NCKD}_n,

    which is the paper's point: in KD the non-target term is suppressed when the teacher is confident.

    Both terms are computed in log space: :math:`\log(1 - p_y)` as a log-sum-exp of the non-target
    log-probabilities and :math:`\log \hat p` as a log-softmax over the non-target logits (the target
    column removed), so they stay finite at logits of :math:`\pm 10^4`. The reference code
    (``megvii-research/mdistiller``, ``mdistiller/distillers/DKD.py``) instead takes ``torch.log`` of the
    summed probabilities, which is :math:`-\infty` when a probability underflows, and subtracts 1000 from
    the target logit before a softmax over all classes, which is only approximately the same (the target
    keeps a mass :math:`\approx e^{-1000 + \Delta}` and dominates when logits differ by more than
    :math:`\approx 1000\,T`). Values agree with the reference wherever it is finite.

    Args:
        student_logits: ``(N, C)`` raw student outputs, ``C >= 2``; gradients flow into these.
        teacher_logits: ``(N, C)`` raw teacher outputs; treated as constants (detached).
        targets: ``(N,)`` int64 ground-truth labels in ``[0, C)``.
        temperature: :math:`T > 0`.
        standardize: z-score both models' logits first (:func:`standardize_logits`), as the
            logit-standardization paper does for DKD.

    Returns:
        ``(tckd, nckd)``: two scalar tensors (float32 or wider), each >= 0 and 0 when the two models'
        distributions are equal. With ``C = 2`` there is one non-target class and NCKD is 0.
    """
    check_logits(student_logits, teacher_logits)
    t = check_temperature(temperature)
    n, c = student_logits.shape
    if c < 2:
        raise ValueError(f"DKD splits the target class from the others and needs at least 2 classes, got {c}")
    _check_targets(targets, n, c)
    s, teacher = student_logits, teacher_logits.detach()
    if standardize:
        s, teacher = standardize_logits(s), standardize_logits(teacher)
    log_b_s, log_hat_s = _dkd_log_probs(s, targets, t)
    log_b_t, log_hat_t = _dkd_log_probs(teacher, targets, t)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True) * (t * t)
    nckd = F.kl_div(log_hat_s, log_hat_t, reduction="batchmean", log_target=True) * (t * t)
    return tckd, nckd


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
) -> torch.Tensor:
    r"""Decoupled Knowledge Distillation of Zhao et al. (2022): :math:`\alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}`.

    .. math::

        \mathcal{L}_{DKD} = \alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}

    with TCKD and NCKD from :func:`dkd_parts` (each already times :math:`T^2` and averaged over the batch).
    Classical KD is the special case :math:`\alpha = 1`, :math:`\beta = 1 - p^{\mathcal T}_{y}` per sample;
    DKD frees :math:`\beta` so the non-target knowledge is not suppressed for confidently classified samples.

    Paper: Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation", CVPR 2022. Defaults are
    those of the reference code (``megvii-research/mdistiller``, ``CFG.DKD``) for CIFAR-100:
    :math:`\alpha = 1`, :math:`\beta = 8`, :math:`T = 4`, next to cross-entropy with weight 1. Some
    CIFAR-100 pairs use another :math:`\beta` (2 for resnet56 to resnet20, 6 for the WRN pairs, per their
    config files). The reference also multiplies the whole DKD term by a linear warm-up,
    :math:`\min(\mathrm{epoch}/20, 1)` (``CFG.DKD.WARMUP = 20``); that schedule belongs to the training
    loop and is **not** part of this function: scale the loss weight yourself to reproduce it. With
    ``standardize=True`` the reference code multiplies :math:`\alpha` and :math:`\beta` by 9 and sets
    :math:`T = 2` (:func:`kdlib.methods.standardized_dkd`: :math:`\alpha = 9`, :math:`\beta = 72`).

    Args:
        student_logits: ``(N, C)`` raw student outputs, ``C >= 2``; gradients flow into these.
        teacher_logits: ``(N, C)`` raw teacher outputs; treated as constants (detached).
        targets: ``(N,)`` int64 ground-truth labels in ``[0, C)``.
        alpha: weight :math:`\alpha \ge 0` of TCKD.
        beta: weight :math:`\beta \ge 0` of NCKD.
        temperature: :math:`T > 0`.
        standardize: z-score both models' logits first (logit standardization, Sun et al. 2024).

    Returns:
        A scalar tensor (float32 or wider), >= 0.
    """
    a = _check_weight("alpha", alpha)
    b = _check_weight("beta", beta)
    tckd, nckd = dkd_parts(student_logits, teacher_logits, targets, temperature=temperature, standardize=standardize)
    return a * tckd + b * nckd


def pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    r"""One minus the Pearson correlation of ``a`` and ``b`` along ``dim``: :math:`d_P = 1 - \rho \in [0, 2]`.

    .. math::

        \rho(u, v) = \frac{\sum_i (u_i - \bar u)(v_i - \bar v)}
            {\lVert u - \bar u \rVert_2 \, \lVert v - \bar v \rVert_2 + \epsilon}

    The :math:`\epsilon` in the denominator follows the DIST reference code (``hunto/DIST_KD``,
    :math:`10^{-8}`); a constant vector therefore has :math:`\rho = 0`, distance 1. Invariant to a positive
    scale and a shift of either argument (up to :math:`\epsilon`); symmetric in ``a`` and ``b``.

    Args:
        a, b: float tensors of the same shape.
        dim: the dimension the correlation runs over; it is reduced away.
        eps: :math:`\epsilon \ge 0`.

    Returns:
        The distances, with ``dim`` removed, in float32 or wider.
    """
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same shape")
    dtype = _compute_dtype(a, b)
    u = a.to(dtype) - a.to(dtype).mean(dim=dim, keepdim=True)
    v = b.to(dtype) - b.to(dtype).mean(dim=dim, keepdim=True)
    norms = torch.linalg.vector_norm(u, dim=dim) * torch.linalg.vector_norm(v, dim=dim)
    return 1.0 - (u * v).sum(dim=dim) / (norms + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    r"""DIST of Huang et al. (2022): match the teacher's relations (Pearson correlation), not its exact
    probabilities.

    .. math::

        \mathcal{L}_{DIST} = T^2 \Big(&\beta\, \frac1N \sum_{n=1}^{N} d_P\big(Y^{\mathcal S}_{n,:},
            Y^{\mathcal T}_{n,:}\big) \\ &+ \gamma\, \frac1C \sum_{i=1}^{C} d_P\big(Y^{\mathcal S}_{:,i},
            Y^{\mathcal T}_{:,i}\big)\Big),

        Y = \mathrm{softmax}(z / T) \text{ row-wise},

    where :math:`d_P = 1 - \rho` is :func:`pearson_distance`. The first term (inter-class relation)
    compares, for each sample, how the two models rank and space the classes; the second (intra-class
    relation) compares, for each class, how the two models spread it across the samples of the batch.
    Because the Pearson correlation ignores positive scale and shift, the student need not reproduce a
    stronger teacher's confidence, only its relative preferences.

    Paper: Huang, You, Wang, Qian and Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.
    The :math:`T^2` factor multiplies both terms, as in the reference code (``hunto/image_classification_sota``
    ``lib/models/losses/dist_kd.py``, class ``DIST(beta, gamma, tau)``; mdistiller-style
    re-implementations do the same). Defaults :math:`\beta = \gamma = 1`, :math:`T = 1` are that class's
    defaults, used for ImageNet (``--kd dist`` in the reference's ``KDLoss`` wrapper, which also offers
    ``dist_t<T>`` for another temperature). For CIFAR-100 re-implementations use :math:`T = 4` with
    :math:`\beta = \gamma = 2` (for example ``DISTLoss(beta=2, gamma=2, tem=4)``), next to cross-entropy
    with weight 1; the official CIFAR-100 config (``dist_cifar.yaml``) was not among the sources checked.

    Args:
        student_logits: ``(N, C)`` raw student outputs with ``N >= 2`` and ``C >= 2``; gradients flow into
            these.
        teacher_logits: ``(N, C)`` raw teacher outputs; treated as constants (detached).
        beta: weight :math:`\beta \ge 0` of the inter-class term.
        gamma: weight :math:`\gamma \ge 0` of the intra-class term.
        temperature: :math:`T > 0`.

    Returns:
        A scalar tensor (float32 or wider) in :math:`[0, 2 T^2 (\beta + \gamma)]`, 0 when the two models'
        probabilities are equal (and no class has the same probability on every sample). The value is
        symmetric in the two arguments; only the student receives gradients.
    """
    check_logits(student_logits, teacher_logits)
    t = check_temperature(temperature)
    b = _check_weight("beta", beta)
    g = _check_weight("gamma", gamma)
    n, c = student_logits.shape
    if n < 2:
        raise ValueError(
            "DIST's intra-class term correlates each class across the batch and needs at least 2 samples, "
            f"got a batch of {n}; use a batch of at least 2 samples"
        )
    if c < 2:
        raise ValueError(f"DIST's inter-class term correlates the classes and needs at least 2 classes, got {c}")
    y_s = F.softmax(student_logits.to(_compute_dtype(student_logits)) / t, dim=1)
    y_t = F.softmax(teacher_logits.detach().to(_compute_dtype(teacher_logits)) / t, dim=1)
    inter = pearson_distance(y_s, y_t, dim=1).mean()
    intra = pearson_distance(y_s, y_t, dim=0).mean()
    return (t * t) * (b * inter + g * intra)


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
