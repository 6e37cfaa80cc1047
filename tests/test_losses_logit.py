"""Tests of the modern logit losses: logit standardization, MSE logit matching, DKD and DIST."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlib.losses import (
    dist_loss,
    dkd_loss,
    dkd_parts,
    kd_loss,
    kd_loss_from_log_probs,
    mse_logit_loss,
    pearson_distance,
    standardize_logits,
    teacher_log_probs,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def logits(n=5, c=7, seed=0, scale=3.0, dtype=torch.float32):
    return scale * torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def labels(n=5, c=7, seed=0):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def positive(n, seed):
    """Per-sample positive factors in [0.5, 5.5), shape (n, 1)."""
    return 0.5 + 5 * torch.rand(n, 1, generator=torch.Generator().manual_seed(seed))


EXTREME_S = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
EXTREME_T = torch.tensor([[-1e4, 1e4, 0.0], [-1e4, 1e4, 0.0]])


def reference_kd(s, t, T):
    """T^2 * mean_n sum_i p_i (log p_i - log q_i), written out by hand."""
    p = torch.softmax(t / T, 1)
    q = torch.softmax(s / T, 1)
    return T * T * (p * (p.log() - q.log())).sum(1).mean()


# ---------------------------------------------------------------- logit standardization


def test_standardize_matches_reference_formula_with_unbiased_std():
    z = logits(seed=1)
    expected = (z - z.mean(1, keepdim=True)) / (z.std(1, unbiased=True, keepdim=True) + 1e-7)
    torch.testing.assert_close(standardize_logits(z), expected)
    out = standardize_logits(z)
    torch.testing.assert_close(out.mean(1), torch.zeros(5), atol=1e-6, rtol=0)
    # unbiased: the (C-1)-normalised std of the output is 1; a biased std would give sqrt(7/6) = 1.08
    torch.testing.assert_close(out.std(1, unbiased=True), torch.ones(5))


def test_standardize_hand_computed_value():
    # z = (1, 2, 3): mean 2, unbiased std sqrt(((-1)^2 + 0^2 + 1^2) / (3 - 1)) = 1, so (-1, 0, 1) / (1 + 1e-7).
    # A biased std, sqrt(2/3), would give (-1.2247, 0, 1.2247).
    out = standardize_logits(torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 1.0]]) / (1 + 1e-7))


def test_standardize_is_invariant_to_per_sample_shift_and_positive_scale():
    z = logits(seed=2)
    moved = positive(5, seed=3) * z + 10 * torch.randn(5, 1, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(standardize_logits(moved), standardize_logits(z), rtol=1e-5, atol=1e-5)
    # a negative scale flips the sign: standardization keeps order information
    torch.testing.assert_close(standardize_logits(-z), -standardize_logits(z))


def test_standardize_constant_row_gives_zeros_and_a_finite_gradient():
    z = torch.zeros(2, 4, requires_grad=True)
    out = standardize_logits(z)
    assert torch.equal(out, torch.zeros(2, 4))
    (out * torch.arange(4.0)).sum().backward()
    assert torch.isfinite(z.grad).all()
    # the limit from non-constant rows: (I - 11^T / C) w / eps for upstream gradient w = (0, 1, 2, 3)
    expected = (torch.arange(4.0) - 1.5) / 1e-7
    torch.testing.assert_close(z.grad, expected.expand(2, 4))


def test_standardize_half_precision_is_computed_in_float32():
    for dtype in (torch.float16, torch.bfloat16):
        out = standardize_logits(logits(dtype=dtype))
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.isfinite(standardize_logits(EXTREME_S)).all()


def test_standardize_bad_inputs():
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        standardize_logits([[1.0, 2.0]])
    with pytest.raises(TypeError, match="floating-point"):
        standardize_logits(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes"):
        standardize_logits(torch.ones(4, 1))
    with pytest.raises(ValueError, match="eps must be"):
        standardize_logits(torch.ones(2, 3), eps=0.0)


# ---------------------------------------------------------------- KD with logit standardization


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_standardized_kd_matches_formula(T):
    s, t = logits(seed=5), logits(seed=6)
    z = lambda x: (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-7)  # noqa: E731
    torch.testing.assert_close(kd_loss(s, t, T, standardize=True), reference_kd(z(s), z(t), T))


def test_standardized_kd_hand_computed_value():
    # s = (-1, 1): mean 0, unbiased std sqrt(2)  -> Z(s) = (-a, a) with a = 1/sqrt(2)
    # t = (3, 1):  mean 2, unbiased std sqrt(2)  -> Z(t) = (a, -a)
    # T = 1: p = (sig(2a), sig(-2a)), q = (sig(-2a), sig(2a)), so
    # KL(p||q) = (p1 - p2) ln(p1/p2) = tanh(a) * 2a = tanh(0.7071) * 1.4142 = 0.6089 * 1.4142 = 0.8611
    s = torch.tensor([[-1.0, 1.0]])
    t = torch.tensor([[3.0, 1.0]])
    a = 1 / math.sqrt(2)
    assert kd_loss(s, t, 1.0, standardize=True).item() == pytest.approx(math.tanh(a) * 2 * a, rel=1e-5)
    # without standardization the value differs (different logit ranges are penalised)
    assert kd_loss(s, t, 1.0).item() != pytest.approx(math.tanh(a) * 2 * a, rel=1e-2)


def test_standardized_kd_is_invariant_to_shift_and_scale_of_either_side():
    s, t = logits(seed=7), logits(seed=8)
    shift = lambda seed: 10 * torch.randn(5, 1, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    base = kd_loss(s, t, 2.0, standardize=True)
    moved_s = positive(5, 9) * s + shift(10)
    moved_t = positive(5, 11) * t + shift(12)
    for a, b in ((moved_s, t), (s, moved_t), (moved_s, moved_t)):
        torch.testing.assert_close(kd_loss(a, b, 2.0, standardize=True), base, rtol=1e-5, atol=1e-6)
    # plain KD is shift- but not scale-invariant: the test above would catch a missing standardization
    assert kd_loss(moved_s, t, 2.0).item() != pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-2)


def test_standardized_kd_zero_for_a_rescaled_teacher():
    t = logits(seed=13)
    assert kd_loss(3.0 * t + 2.0, t, 2.0, standardize=True).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(3.0 * t + 2.0, t, 2.0).item() > 0.1
    for seed in range(5):
        assert kd_loss(logits(seed=seed + 100), t, 2.0, standardize=True).item() > 0


def test_cached_standardized_teacher_matches_live_kd():
    s0, t = logits(seed=14), logits(seed=15)
    s1 = s0.clone().requires_grad_()
    s2 = s0.clone().requires_grad_()
    live = kd_loss(s1, t, 2.0, standardize=True)
    cached = kd_loss_from_log_probs(s2, teacher_log_probs(t, 2.0, standardize=True), 2.0, standardize=True)
    torch.testing.assert_close(cached, live)
    live.backward()
    cached.backward()
    torch.testing.assert_close(s2.grad, s1.grad)
    # the student side must be standardized too: forgetting it changes the value
    half = kd_loss_from_log_probs(s0, teacher_log_probs(t, 2.0, standardize=True), 2.0)
    assert half.item() != pytest.approx(live.item(), rel=1e-2)


def test_standardized_kd_gradient_into_student_only_and_finite_at_extremes():
    s = EXTREME_S.clone().requires_grad_()
    t = EXTREME_T.clone().requires_grad_()
    value = kd_loss(s, t, 2.0, standardize=True)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    assert t.grad is None
    for dtype in (torch.float16, torch.bfloat16):
        v = kd_loss(logits(dtype=dtype), logits(seed=1, dtype=dtype), 2.0, standardize=True)
        assert v.dtype == torch.float32 and torch.isfinite(v)


def test_standardized_kd_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        kd_loss(torch.ones(3, 1), torch.ones(3, 1), 2.0, standardize=True)


# ---------------------------------------------------------------- MSE logit matching


def test_mse_matches_formula():
    s, t = logits(seed=16), logits(seed=17)
    n, c = s.shape
    naive = sum((s[i, j] - t[i, j]) ** 2 for i in range(n) for j in range(c)) / (n * c)
    torch.testing.assert_close(mse_logit_loss(s, t), naive)


def test_mse_hand_computed_value():
    # (1-0)^2 + (2-0)^2 + (3-1)^2 + (4-1)^2 = 1 + 4 + 4 + 9 = 18 over N*C = 4 elements -> 4.5
    # (a sum over classes with a batch mean would give 9; the paper's 1/(2N) sum would give 4.5 * C/2 = 4.5)
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert mse_logit_loss(s, t).item() == pytest.approx(4.5)
    # three classes tell the mean over elements from the paper's 1/(2N) sum: 3*4 / 3 = 4 vs 3*4 / 2 = 6
    assert mse_logit_loss(torch.full((1, 3), 2.0), torch.zeros(1, 3)).item() == pytest.approx(4.0)


def test_mse_zero_only_when_equal_and_not_shift_invariant():
    t = logits(seed=18)
    assert mse_logit_loss(t.clone(), t).item() == 0.0
    # unlike KD, a constant offset is penalised: every element differs by 1
    assert mse_logit_loss(t + 1.0, t).item() == pytest.approx(1.0)


def test_mse_is_twice_the_high_temperature_limit_of_kd():
    """Hinton et al. §2.1: for zero-mean logits and large T, KD -> sum (s - t)^2 / (2 N C) = MSE / 2."""
    s = logits(seed=19, dtype=torch.float64)
    t = logits(seed=20, dtype=torch.float64)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    assert kd_loss(s, t, 1000.0).item() == pytest.approx(mse_logit_loss(s, t).item() / 2, rel=1e-2)


def test_mse_gradient_into_student_only():
    s = logits(seed=21).requires_grad_()
    t = logits(seed=22).requires_grad_()
    mse_logit_loss(s, t).backward()
    assert t.grad is None
    torch.testing.assert_close(s.grad, 2 * (s.detach() - t.detach()) / s.numel())


def test_mse_finite_for_extremes_and_half_precision():
    s = EXTREME_S.clone().requires_grad_()
    value = mse_logit_loss(s, EXTREME_T)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    for dtype in (torch.float16, torch.bfloat16):
        # 300^2 = 90000 overflows fp16 (max 65504) if squared before promotion
        v = mse_logit_loss(torch.full((2, 3), 300.0, dtype=dtype), torch.zeros(2, 3, dtype=dtype))
        assert v.dtype == torch.float32 and v.item() == pytest.approx(90000.0)


def test_mse_bad_inputs():
    with pytest.raises(ValueError, match="student has 7 classes but teacher has 10"):
        mse_logit_loss(logits(c=7), logits(c=10))
    with pytest.raises(ValueError, match="batch sizes differ"):
        mse_logit_loss(logits(n=4), logits(n=5))
    with pytest.raises(ValueError, match="empty batch"):
        mse_logit_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(TypeError, match="floating-point"):
        mse_logit_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        mse_logit_loss([[0.0]], torch.zeros(1, 1))


# ---------------------------------------------------------------- DKD


def naive_dkd_parts(s, t, y, T):
    """TCKD and NCKD in probability space, one sample at a time, straight from the paper's definitions."""
    tckd, nckd = 0.0, 0.0
    for n in range(s.shape[0]):
        p_t, p_s = torch.softmax(t[n] / T, 0), torch.softmax(s[n] / T, 0)
        b_t = torch.stack([p_t[y[n]], 1 - p_t[y[n]]])
        b_s = torch.stack([p_s[y[n]], 1 - p_s[y[n]]])
        tckd = tckd + (b_t * (b_t / b_s).log()).sum()
        rest = [i for i in range(s.shape[1]) if i != y[n]]
        h_t = p_t[rest] / p_t[rest].sum()
        h_s = p_s[rest] / p_s[rest].sum()
        nckd = nckd + (h_t * (h_t / h_s).log()).sum()
    n = s.shape[0]
    return T * T * tckd / n, T * T * nckd / n


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_parts_match_formula(T):
    s, t, y = logits(seed=23, dtype=torch.float64), logits(seed=24, dtype=torch.float64), labels(seed=25)
    tckd, nckd = dkd_parts(s, t, y, temperature=T)
    ref_tckd, ref_nckd = naive_dkd_parts(s, t, y, T)
    torch.testing.assert_close(tckd, ref_tckd)
    torch.testing.assert_close(nckd, ref_nckd)
    torch.testing.assert_close(dkd_loss(s, t, y, alpha=0.5, beta=3.0, temperature=T), 0.5 * tckd + 3.0 * nckd)


def test_dkd_matches_the_reference_masking_trick_at_moderate_logits():
    """mdistiller subtracts 1000 from the target logit; equivalent here because logits/T differ by far less."""
    s, t, y = logits(seed=26), logits(seed=27), labels(seed=28)
    T = 4.0
    gt = F.one_hot(y, 7).bool()
    tckd_ref, _ = naive_dkd_parts(s, t, y, T)
    nckd_ref = F.kl_div(
        F.log_softmax(s / T - 1000.0 * gt, 1), F.softmax(t / T - 1000.0 * gt, 1), reduction="sum"
    ) * T**2 / 5
    torch.testing.assert_close(dkd_loss(s, t, y), tckd_ref + 8.0 * nckd_ref)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_dkd_decomposes_kd_per_sample(T):
    """The paper's identity KD = TCKD + (1 - p^T_target) NCKD, checked one sample at a time."""
    s, t, y = logits(n=6, seed=29), logits(n=6, seed=30), labels(n=6, seed=31)
    for n in range(6):
        tckd, nckd = dkd_parts(s[n : n + 1], t[n : n + 1], y[n : n + 1], temperature=T)
        p_target = torch.softmax(t[n] / T, 0)[y[n]]
        torch.testing.assert_close(kd_loss(s[n : n + 1], t[n : n + 1], T), tckd + (1 - p_target) * nckd)


def test_dkd_hand_computed_value():
    # C = 3, T = 1, target 0. Teacher logits (0, 0, 0): p_T = (1/3, 1/3, 1/3).
    # Student logits (0, ln 2, 0): p_S = (1/4, 1/2, 1/4).
    # TCKD: b_T = (1/3, 2/3), b_S = (1/4, 3/4): 1/3 ln(4/3) + 2/3 ln(8/9) = 0.09589 - 0.07852 = 0.01737
    # NCKD: p^_T = (1/2, 1/2), p^_S = (2/3, 1/3): 1/2 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8) = 0.05889
    # check: TCKD + (1 - 1/3) NCKD = 1/3 ln(4/3) + 1/3 ln(8/9) = 1/3 ln(32/27) = KL(p_T || p_S)
    s = torch.tensor([[0.0, math.log(2.0), 0.0]])
    t = torch.zeros(1, 3)
    y = torch.tensor([0])
    tckd, nckd = dkd_parts(s, t, y, temperature=1.0)
    assert tckd.item() == pytest.approx(math.log(4 / 3) / 3 + 2 * math.log(8 / 9) / 3, rel=1e-5)
    assert nckd.item() == pytest.approx(math.log(9 / 8) / 2, rel=1e-5)
    assert dkd_loss(s, t, y, temperature=1.0).item() == pytest.approx(
        math.log(4 / 3) / 3 + 2 * math.log(8 / 9) / 3 + 8 * math.log(9 / 8) / 2, rel=1e-5
    )
    assert kd_loss(s, t, 1.0).item() == pytest.approx(math.log(32 / 27) / 3, rel=1e-5)


def test_dkd_temperature_squared_factor():
    s, t, y = logits(seed=32), logits(seed=33), labels(seed=34)
    at_2 = dkd_parts(s, t, y, temperature=2.0)
    at_1 = dkd_parts(s / 2, t / 2, y, temperature=1.0)
    for a, b in zip(at_2, at_1):
        torch.testing.assert_close(a, 4 * b)


def test_dkd_zero_when_equal_nonnegative_and_direction_matters():
    t, y = logits(seed=35), labels(seed=36)
    for part in dkd_parts(t + 3.0, t, y):  # a per-sample shift leaves the softmax unchanged
        assert part.item() == pytest.approx(0.0, abs=1e-5)
    for seed in range(10):
        s = logits(seed=seed + 200)
        tckd, nckd = dkd_parts(s, t, y)
        assert tckd.item() >= 0 and nckd.item() > 0
    s = logits(seed=37)
    assert dkd_loss(s, t, y).item() != pytest.approx(dkd_loss(t, s, y).item(), rel=1e-3)
    # the target decides which class is split off
    assert dkd_loss(s, t, y).item() != pytest.approx(dkd_loss(s, t, (y + 1) % 7).item(), rel=1e-3)


def test_dkd_is_batch_mean_and_two_classes_have_no_nckd():
    s, t, y = logits(n=4, seed=38), logits(n=4, seed=39), labels(n=4, seed=40)
    per_sample = torch.stack([dkd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(dkd_loss(s, t, y), per_sample.mean())
    tckd, nckd = dkd_parts(logits(c=2, seed=41), logits(c=2, seed=42), labels(c=2, seed=43))
    assert nckd.item() == pytest.approx(0.0, abs=1e-7) and tckd.item() > 0


def test_dkd_standardized_is_invariant_to_scale():
    s, t, y = logits(seed=44), logits(seed=45), labels(seed=46)
    base = dkd_loss(s, t, y, standardize=True)
    moved = dkd_loss(positive(5, 47) * s - 2.0, 3 * t + 1, y, standardize=True)
    torch.testing.assert_close(moved, base, rtol=1e-5, atol=1e-6)
    assert dkd_loss(positive(5, 47) * s, t, y).item() != pytest.approx(dkd_loss(s, t, y).item(), rel=1e-2)


def test_dkd_gradient_into_student_only():
    s = logits(seed=48).requires_grad_()
    t = logits(seed=49).requires_grad_()
    dkd_loss(s, t, labels(seed=50)).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_dkd_finite_and_exact_at_extreme_logits():
    # T = 4, targets (0, 1). Sample 1 has student == teacher: 0. Sample 0: student puts all mass on class 0
    # (the target), teacher on class 1. TCKD_0 = 1 * (0 - log(1 - p_S,0)) = 2500 (the log-sum-exp of the
    # non-target logits/T minus that of all: max -0 vs 2500); NCKD_0 over classes (1, 2): teacher (1, 0),
    # student log-probs (-2500, 0), so 2500. Times T^2 = 16 and over N = 2: TCKD = NCKD = 20000;
    # DKD = 20000 + 8 * 20000 = 180000. The reference code's torch.log(probabilities) would give inf here.
    s = EXTREME_S.clone().requires_grad_()
    t = EXTREME_T.clone().requires_grad_()
    y = torch.tensor([0, 1])
    value = dkd_loss(s, t, y)
    value.backward()
    assert value.item() == pytest.approx(180000.0, rel=1e-5)
    assert torch.isfinite(s.grad).all() and t.grad is None
    for dtype in (torch.float16, torch.bfloat16):
        v = dkd_loss(logits(dtype=dtype), logits(seed=1, dtype=dtype), labels())
        assert v.dtype == torch.float32 and torch.isfinite(v)


def test_dkd_bad_inputs():
    s, t = logits(), logits(seed=1)
    with pytest.raises(TypeError, match="int64"):
        dkd_loss(s, t, labels().int())
    with pytest.raises(ValueError, match=r"targets must have shape \(5,\)"):
        dkd_loss(s, t, labels()[:, None])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 7\)"):
        dkd_loss(s, t, torch.tensor([0, 1, 2, 3, 7]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 7\)"):
        dkd_loss(s, t, torch.tensor([0, 1, -1, 3, 4]))
    with pytest.raises(TypeError, match="torch.Tensor of class indices"):
        dkd_loss(s, t, [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="at least 2 classes"):
        dkd_loss(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="beta weighs a loss term"):
        dkd_loss(s, t, labels(), beta=-1.0)
    with pytest.raises(ValueError, match="alpha weighs a loss term"):
        dkd_loss(s, t, labels(), alpha=float("nan"))
    with pytest.raises(ValueError, match="temperature must be"):
        dkd_parts(s, t, labels(), temperature=0.0)
    with pytest.raises(ValueError, match="student has 7 classes but teacher has 10"):
        dkd_loss(s, logits(c=10), labels())


# ---------------------------------------------------------------- DIST


def naive_pearson(u, v):
    """Pearson correlation of two 1-D tensors, written out."""
    du, dv = u - u.mean(), v - v.mean()
    return (du * dv).sum() / ((du * du).sum().sqrt() * (dv * dv).sum().sqrt())


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_matches_formula(T):
    s, t = logits(n=6, seed=51, dtype=torch.float64), logits(n=6, seed=52, dtype=torch.float64)
    ys, yt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    inter = 1 - torch.stack([naive_pearson(ys[n], yt[n]) for n in range(6)]).mean()  # per sample, over classes
    intra = 1 - torch.stack([naive_pearson(ys[:, c], yt[:, c]) for c in range(7)]).mean()  # per class, over batch
    close = dict(rtol=1e-5, atol=0.0)  # the function adds eps = 1e-8 to the product of norms; the naive one does not
    torch.testing.assert_close(dist_loss(s, t, beta=1.0, gamma=0.0, temperature=T), T * T * inter, **close)
    torch.testing.assert_close(dist_loss(s, t, beta=0.0, gamma=1.0, temperature=T), T * T * intra, **close)
    torch.testing.assert_close(
        dist_loss(s, t, beta=2.0, gamma=0.5, temperature=T), T * T * (2 * inter + 0.5 * intra), **close
    )
    # the two terms differ on random data, so a swapped axis would be caught above
    assert abs(inter.item() - intra.item()) > 1e-3


def test_pearson_distance_agrees_with_corrcoef_and_hand_values():
    a, b = logits(n=3, seed=53)[0], logits(n=3, seed=54)[0]
    r = torch.corrcoef(torch.stack([a, b]))[0, 1]
    torch.testing.assert_close(pearson_distance(a, b), 1 - r)
    # (1,2,3) vs (1,3,2): centred (-1,0,1) and (-1,1,0), dot 1, norms sqrt(2) each -> rho = 1/2, d = 1/2
    x = torch.tensor([1.0, 2.0, 3.0])
    assert pearson_distance(x, torch.tensor([1.0, 3.0, 2.0])).item() == pytest.approx(0.5, rel=1e-6)
    assert pearson_distance(x, 2 * x + 7).item() == pytest.approx(0.0, abs=1e-6)
    assert pearson_distance(x, -x).item() == pytest.approx(2.0, rel=1e-6)


def test_dist_hand_computed_value():
    # Logits log(p) make the softmax (T = 1) return p exactly.
    # Teacher rows (.5,.3,.2), (.2,.3,.5); student rows swapped.
    # Inter, row 0: u = (1/6, -1/30, -2/15), v = reversed u; u.v = -39/900, |u|^2 = |v|^2 = 42/900 -> rho = -13/14,
    #   distance 27/14; row 1 the same. inter = 27/14.
    # Intra, over the 2 samples: class 0 (.5,.2) vs (.2,.5) -> rho = -1, distance 2; class 2 likewise 2;
    #   class 1 is constant (.3,.3): rho = 0 / (0 + eps) = 0, distance 1 (the reference's eps convention).
    #   intra = (2 + 1 + 2) / 3 = 5/3.  DIST = 27/14 + 5/3 = 3.5952.
    p_t = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]], dtype=torch.float64)
    p_s = p_t.flip(0)
    value = dist_loss(p_s.log(), p_t.log())
    assert value.item() == pytest.approx(27 / 14 + 5 / 3, rel=1e-6)


def test_dist_temperature_squared_factor():
    s, t = logits(seed=55), logits(seed=56)
    torch.testing.assert_close(dist_loss(s, t, temperature=4.0), 16 * dist_loss(s / 4, t / 4, temperature=1.0))


def test_dist_zero_when_equal_symmetric_and_bounded():
    t = logits(n=6, seed=57)
    assert dist_loss(t + 2.0, t).item() == pytest.approx(0.0, abs=1e-6)  # per-sample logit shift: same probabilities
    for seed in range(5):
        s = logits(n=6, seed=seed + 300)
        value = dist_loss(s, t, beta=1.0, gamma=1.0, temperature=2.0).item()
        assert 0 < value <= 4 * 2 * 2
        # Pearson is symmetric, so the value is too (only the gradient tells student from teacher)
        assert value == pytest.approx(dist_loss(t, s, temperature=2.0).item(), rel=1e-5)


def test_pearson_distance_is_invariant_to_positive_scale_and_shift():
    ys = torch.softmax(logits(n=6, seed=58), 1)
    yt = torch.softmax(logits(n=6, seed=59), 1)
    gen = torch.Generator().manual_seed(60)
    rows = 0.5 + 5 * torch.rand(6, 1, generator=gen), torch.randn(6, 1, generator=gen)
    torch.testing.assert_close(pearson_distance(rows[0] * ys + rows[1], yt, dim=1), pearson_distance(ys, yt, dim=1))
    cols = 0.5 + 5 * torch.rand(1, 7, generator=gen), torch.randn(1, 7, generator=gen)
    torch.testing.assert_close(pearson_distance(ys, cols[0] * yt + cols[1], dim=0), pearson_distance(ys, yt, dim=0))
    # a KL-type loss on the same probabilities would not be invariant; a negative scale flips the correlation
    torch.testing.assert_close(pearson_distance(-ys, yt, dim=1), 2 - pearson_distance(ys, yt, dim=1))


def test_dist_gradient_into_student_only_and_finite_at_extremes():
    s = logits(seed=61).requires_grad_()
    t = logits(seed=62).requires_grad_()
    dist_loss(s, t, temperature=4.0).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    s = EXTREME_S.clone().requires_grad_()
    value = dist_loss(s, EXTREME_T)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    for dtype in (torch.float16, torch.bfloat16):
        v = dist_loss(logits(dtype=dtype), logits(seed=1, dtype=dtype), temperature=4.0)
        assert v.dtype == torch.float32 and torch.isfinite(v)


def test_dist_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 samples"):
        dist_loss(logits(n=1), logits(n=1, seed=1))
    with pytest.raises(ValueError, match="at least 2 classes"):
        dist_loss(torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="gamma weighs a loss term"):
        dist_loss(logits(), logits(seed=1), gamma=-0.5)
    with pytest.raises(ValueError, match="temperature must be"):
        dist_loss(logits(), logits(seed=1), temperature=-1.0)
    with pytest.raises(ValueError, match="batch sizes differ"):
        dist_loss(logits(n=4), logits(n=5))
    with pytest.raises(ValueError, match="same shape"):
        pearson_distance(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="floating-point"):
        pearson_distance(torch.zeros(3, dtype=torch.long), torch.zeros(3))


# ---------------------------------------------------------------- CPU / CUDA agreement


@cuda
def test_cpu_and_cuda_agree():
    s, t, y = logits(n=8, seed=63), logits(n=8, seed=64), labels(n=8, seed=65)
    cases = [
        lambda s, t, y: standardize_logits(s),
        lambda s, t, y: kd_loss(s, t, 2.0, standardize=True),
        lambda s, t, y: mse_logit_loss(s, t),
        lambda s, t, y: torch.stack(dkd_parts(s, t, y, standardize=True)),
        lambda s, t, y: dkd_loss(s, t, y),
        lambda s, t, y: dist_loss(s, t, temperature=4.0),
    ]
    for fn in cases:
        torch.testing.assert_close(fn(s.cuda(), t.cuda(), y.cuda()).cpu(), fn(s, t, y), rtol=1e-4, atol=1e-5)
