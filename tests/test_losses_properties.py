"""Property tests of every distillation loss: for any logits or features with magnitudes up to 1e4, in
float32, float16 or bfloat16, the loss is finite, non-negative where it is by construction (a KL divergence,
a squared error, a softplus sum, 1 - a correlation), and its gradient with respect to the student is finite.

Inputs come from hypothesis (which likes 0, ties, equal rows and the extremes of the range) rather than from
torch.randn, so degenerate batches are part of what is tried.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kdlib import losses as L

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAGNITUDE = 1e4
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
# KL divergences and 1 - correlation are >= 0 exactly in real arithmetic; in float32 a pair of nearly equal
# distributions may round to a tiny negative number. Losses that are sums of squares or softplus are >= 0 exactly.
ROUNDING = 1e-5


@st.composite
def tensors(draw, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` with values in [-1e4, 1e4]: either arbitrary or a random scale times small
    integers (so equal entries, equal rows and huge gaps all occur)."""
    elements = st.floats(-MAGNITUDE, MAGNITUDE, allow_nan=False, allow_infinity=False, width=32)
    if draw(st.booleans()):
        return draw(arrays(np.float32, shape, elements=elements))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e3]))
    ints = draw(arrays(np.int8, shape, elements=st.integers(-10, 10)))
    return (ints.astype(np.float32) * scale).clip(-MAGNITUDE, MAGNITUDE)


@st.composite
def logit_pairs(draw, min_batch: int = 1, teachers: int = 0):
    """``(student, teacher, targets, dtype)``; the teacher is ``(K, N, C)`` when ``teachers`` > 0."""
    n = draw(st.integers(min_batch, 6))
    c = draw(st.integers(2, 10))
    dtype = draw(st.sampled_from(DTYPES))
    student = torch.from_numpy(draw(tensors((n, c)))).to(dtype).requires_grad_()
    teacher = torch.from_numpy(draw(tensors((teachers, n, c) if teachers else (n, c)))).to(dtype)
    targets = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=torch.int64)
    return student, teacher, targets, dtype


@st.composite
def feature_pairs(draw, min_batch: int = 2, rank: int = 2, same_shape: bool = False):
    """``(student, teacher, dtype)`` features ``(N, D)`` (rank 2) or ``(N, C, L)`` (rank 3)."""
    n = draw(st.integers(min_batch, 6))
    dtype = draw(st.sampled_from(DTYPES))
    if rank == 2:
        s_shape = (n, draw(st.integers(1, 8)))
        t_shape = s_shape if same_shape else (n, draw(st.integers(1, 8)))
    else:
        length = draw(st.integers(1, 5))
        s_shape = (n, draw(st.integers(1, 4)), length)
        t_shape = s_shape if same_shape else (n, draw(st.integers(1, 4)), length)
    student = torch.from_numpy(draw(tensors(s_shape))).to(dtype).requires_grad_()
    teacher = torch.from_numpy(draw(tensors(t_shape))).to(dtype)
    return student, teacher, dtype


# Known limitation (found by these tests), a matter of range, not a bug: losses that are invariant to the scale
# of the student's input (logit standardization, DIST's Pearson correlation, PKT's cosine kernel, RKD's
# normalised distances and angles) have gradients that grow
# like 1 / scale, bounded only by their epsilon (1e-7 or 1e-8). For a degenerate student input (a constant logit
# row, a near-zero embedding or batch) the gradient is therefore large but finite *in float32*, up to ~1e7-1e8,
# and overflows to inf when cast back to a float16 student (largest float16: 65504). bfloat16 has float32's
# range and is unaffected; with fp16 autocast, GradScaler skips such a step. For these losses the fp16 check
# asserts exactly that: the float32 gradient is finite and exceeds float16's range wherever the float16 one is inf.
FP16_GRADIENT_OVERFLOW = {"kd_loss standardized", "dist_loss", "pkt_loss", "rkd_distance_loss", "rkd_angle_loss",
                          "rkd_loss"}
FP16_MAX = float(torch.finfo(torch.float16).max)


def check(loss_fn: Callable[[torch.Tensor], torch.Tensor], student: torch.Tensor, *, nonnegative: str | None,
          fp16_overflow: bool = False) -> None:
    """``loss_fn(student)`` is a finite scalar, >= 0 (``"exact"`` or up to float32 ``"rounding"``), and its
    gradient has the student's dtype and is finite (see FP16_GRADIENT_OVERFLOW for ``fp16_overflow``)."""
    loss = loss_fn(student)
    assert loss.dim() == 0 and loss.dtype in (torch.float32, torch.float64), loss.dtype
    value = float(loss.detach())
    assert np.isfinite(value), value
    if nonnegative == "exact":
        assert value >= 0.0, value
    elif nonnegative == "rounding":
        assert value >= -ROUNDING * max(1.0, abs(value)), value
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.dtype == student.dtype and grad.shape == student.shape
    finite = torch.isfinite(grad)
    if fp16_overflow and student.dtype == torch.float16 and not finite.all():
        wide = student.detach().float().requires_grad_()
        (grad32,) = torch.autograd.grad(loss_fn(wide), wide)
        assert torch.isfinite(grad32).all(), grad32
        assert (grad32[~finite].abs() > FP16_MAX).all(), (grad, grad32)
        return
    assert finite.all(), grad


LOGIT_LOSSES: dict[str, Callable] = {
    "kd_loss": lambda s, t, y: L.kd_loss(s, t, 4.0),
    "kd_loss T=1": lambda s, t, y: L.kd_loss(s, t, 1.0),
    "kd_loss standardized": lambda s, t, y: L.kd_loss(s, t, 2.0, standardize=True),
    "hinton_loss": lambda s, t, y: L.hinton_loss(s, t, y, temperature=4.0, alpha=0.9),
    "mse_logit_loss": lambda s, t, y: L.mse_logit_loss(s, t),
    "dkd_loss": lambda s, t, y: L.dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
    "tf_kd_reg_loss": lambda s, t, y: L.tf_kd_reg_loss(s, y, correct_prob=0.9, temperature=20.0),
}


@pytest.mark.parametrize("name", list(LOGIT_LOSSES))
@SETTINGS
@given(case=logit_pairs())
def test_logit_losses_are_finite_nonnegative_with_finite_gradients(name, case):
    student, teacher, targets, _ = case
    exact = name == "mse_logit_loss"
    check(lambda s: LOGIT_LOSSES[name](s, teacher, targets), student, nonnegative="exact" if exact else "rounding",
          fp16_overflow=name in FP16_GRADIENT_OVERFLOW)


@SETTINGS
@given(case=logit_pairs(min_batch=2), temperature=st.sampled_from([1.0, 4.0]))
def test_dist_loss_is_finite_nonnegative_with_finite_gradients(case, temperature):
    student, teacher, _, _ = case
    check(lambda s: L.dist_loss(s, teacher, temperature=temperature), student, nonnegative="rounding",
          fp16_overflow=True)


@SETTINGS
@given(case=logit_pairs(teachers=3), weighted=st.booleans())
def test_multi_teacher_kd_loss_is_finite_nonnegative_with_finite_gradients(case, weighted):
    student, teachers, targets, _ = case
    weights = L.confidence_weights(teachers, targets) if weighted else None
    check(lambda s: L.multi_teacher_kd_loss(s, teachers, 4.0, weights), student, nonnegative="rounding")


FEATURE_LOSSES: dict[str, tuple[Callable, dict, str]] = {
    # name: (loss, feature_pairs arguments, non-negativity)
    "fitnet_loss": (L.fitnet_loss, dict(same_shape=True), "exact"),
    "at_loss": (L.at_loss, dict(rank=3), "exact"),
    "sp_loss": (L.sp_loss, dict(), "exact"),
    "rkd_distance_loss": (L.rkd_distance_loss, dict(), "exact"),
    "rkd_angle_loss": (L.rkd_angle_loss, dict(min_batch=3), "exact"),
    "rkd_loss": (L.rkd_loss, dict(min_batch=3), "exact"),
    "pkt_loss": (L.pkt_loss, dict(), "rounding"),
}


@pytest.mark.parametrize("name", list(FEATURE_LOSSES))
@SETTINGS
@given(data=st.data())
def test_feature_and_relation_losses_are_finite_nonnegative_with_finite_gradients(name, data):
    loss_fn, shape_args, nonnegative = FEATURE_LOSSES[name]
    student, teacher, _ = data.draw(feature_pairs(**shape_args))
    check(lambda s: loss_fn(s, teacher), student, nonnegative=nonnegative, fp16_overflow=name in FP16_GRADIENT_OVERFLOW)


@SETTINGS
@given(case=feature_pairs(min_batch=2), memory=st.sampled_from(["bank", "queue"]))
def test_crd_loss_is_finite_nonnegative_with_finite_gradients(case, memory):
    student, teacher, _ = case
    n = student.shape[0]
    torch.manual_seed(0)
    crd = L.CRDLoss(student[0].numel(), teacher[0].numel(), 12, embed_dim=4, num_negatives=5, memory=memory,
                    queue_size=8)
    index = torch.arange(n) % 12
    for _ in range(2):  # the second call meets a memory that the first one filled
        check(lambda s: crd(s, teacher, index), student, nonnegative="exact")


_TINY = [[0.0, 1.2e-7], [1.2e-7, 0.0], [1.2e-7, 1.2e-7]]  # float16 subnormals: a batch of nearly equal points
OVERFLOW_EXAMPLES = {  # name: (loss, float16 student, teacher), small cases of the kind hypothesis found
    "kd_loss standardized": (lambda s, t: L.kd_loss(s, t, 2.0, standardize=True), [[0.0, 0.0], [0.0, 0.0]],
                             [[0.0, 1e-3], [7e-3, 0.0]]),
    "dist_loss": (lambda s, t: L.dist_loss(s, t), [[0.0, 0.0], [0.0, 0.0]], [[0.0, 1e-3], [7e-3, 0.0]]),
    "pkt_loss": (L.pkt_loss, [[0.0], [1e-3]], [[0.0], [0.0]]),
    "rkd_distance_loss": (L.rkd_distance_loss, _TINY, [[0.0], [1.0], [3.0]]),
    "rkd_angle_loss": (L.rkd_angle_loss, _TINY, [[0.0, 1.0], [1.0, 0.0], [3.0, 2.0]]),
    "rkd_loss": (L.rkd_loss, _TINY, [[0.0], [0.0], [0.0]]),
}


@pytest.mark.parametrize("name", sorted(FP16_GRADIENT_OVERFLOW))
def test_the_known_fp16_gradient_overflow_is_only_a_range_problem(name):
    """Pins the limitation above: inf in float16, finite in float32 and bfloat16."""
    loss_fn, student_values, teacher_values = OVERFLOW_EXAMPLES[name]
    teacher = torch.tensor(teacher_values, dtype=torch.float16)
    student = torch.tensor(student_values, dtype=torch.float16, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_fn(student, teacher), student)
    assert not torch.isfinite(grad).all()  # when a fix makes this finite, drop the loss from FP16_GRADIENT_OVERFLOW
    check(lambda s: loss_fn(s, teacher), student, nonnegative="rounding", fp16_overflow=True)
    wide = torch.tensor(student_values, dtype=torch.bfloat16, requires_grad=True)
    check(lambda s: loss_fn(s, teacher.bfloat16()), wide, nonnegative="rounding")
