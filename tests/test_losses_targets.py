"""Tests of KD against constructed teachers: the virtual teacher (Tf-KD_reg) and weighted teacher ensembles."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlib.losses import (
    confidence_weights,
    ensemble_log_probs,
    hard_label_loss,
    kd_loss,
    multi_teacher_kd_loss,
    tf_kd_reg_loss,
    virtual_teacher_log_probs,
)


def logits(*shape, seed=0, scale=3.0, dtype=torch.float32):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def labels(n=5, c=7, seed=0):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def naive_softmax(row, T=1.0):
    """Softmax of a 1-D tensor written out, in float64."""
    e = [math.exp(float(v) / T) for v in row]
    total = sum(e)
    return torch.tensor([x / total for x in e], dtype=torch.float64)


def naive_kl(p, q):
    """sum_i p_i log(p_i / q_i) for two 1-D probability vectors."""
    return sum(float(pi) * math.log(float(pi) / float(qi)) for pi, qi in zip(p, q) if pi > 0)


def naive_ensemble(z, T=1.0, w=None):
    """(N, C) float64 probabilities sum_k w_kn softmax(z_kn / T), with loops."""
    k, n, c = z.shape
    out = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            weight = 1.0 / k if w is None else float(w[j] if w.dim() == 1 else w[j, i])
            out[i] += weight * naive_softmax(z[j, i], T)
    return out


def naive_kd_from_probs(s, p, T):
    """T^2 * mean_n KL(p_n || softmax(s_n / T)), with loops."""
    n = s.shape[0]
    return T * T * sum(naive_kl(p[i], naive_softmax(s[i], T)) for i in range(n)) / n


# ---------------------------------------------------------------- virtual teacher


def test_virtual_teacher_hand_computed_values():
    # C = 3, a = 0.9: the label gets 0.9, the two others (1 - 0.9) / 2 = 0.05 each
    p = virtual_teacher_log_probs(torch.tensor([0, 2]), 3, 0.9).exp()
    torch.testing.assert_close(p, torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]]))
    # C = 4, a = 0.7: 0.3 / 3 = 0.1 on each of the three wrong classes
    p = virtual_teacher_log_probs(torch.tensor([2]), 4, 0.7).exp()
    torch.testing.assert_close(p, torch.tensor([[0.1, 0.1, 0.7, 0.1]]))
    # a = 1/C is the uniform distribution, the edge of the allowed range
    p = virtual_teacher_log_probs(torch.tensor([1]), 4, 0.25).exp()
    torch.testing.assert_close(p, torch.full((1, 4), 0.25))


def test_virtual_teacher_matches_loop_and_is_a_distribution():
    y, c, a = labels(6, 5, seed=1), 5, 0.8
    out = virtual_teacher_log_probs(y, c, a)
    assert out.shape == (6, 5) and out.dtype == torch.float32 and not out.requires_grad
    for i in range(6):
        for k in range(c):
            expected = math.log(a) if k == int(y[i]) else math.log((1 - a) / (c - 1))
            assert out[i, k].item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(6))
    assert torch.equal(out.argmax(1), y)


def test_virtual_teacher_is_the_label_smoothing_target():
    # eps = (1 - a) C / (C - 1): (1 - eps) one_hot + eps / C is the virtual teacher
    y, c, a = labels(4, 6, seed=2), 6, 0.85
    eps = (1 - a) * c / (c - 1)
    smoothed = (1 - eps) * F.one_hot(y, c).float() + eps / c
    torch.testing.assert_close(virtual_teacher_log_probs(y, c, a).exp(), smoothed)


# ---------------------------------------------------------------- Tf-KD_reg loss


@pytest.mark.parametrize("T", [1.0, 2.0, 20.0])
def test_tf_kd_reg_matches_naive_formula(T):
    s, y, a = logits(5, 4, seed=3), labels(5, 4, seed=3), 0.9
    rows = []
    for i in range(5):
        pd = [a if k == int(y[i]) else (1 - a) / 3 for k in range(4)]
        # p^d_T = softmax(log p^d / T), i.e. proportional to (p^d)^(1/T)
        powered = [v ** (1 / T) for v in pd]
        rows.append([v / sum(powered) for v in powered])
    expected = naive_kd_from_probs(s, torch.tensor(rows, dtype=torch.float64), T)
    assert tf_kd_reg_loss(s, y, correct_prob=a, temperature=T).item() == pytest.approx(expected, rel=1e-5)


def test_tf_kd_reg_hand_computed_value():
    # C = 3, a = 0.9, T = 1, uniform student: KL(p^d || u) = 0.9 ln 0.9 + 2 * 0.05 ln 0.05 + ln 3 = 0.70421
    value = tf_kd_reg_loss(torch.zeros(1, 3), torch.tensor([0]), correct_prob=0.9, temperature=1.0)
    assert value.item() == pytest.approx(0.9 * math.log(0.9) + 0.1 * math.log(0.05) + math.log(3), rel=1e-6)
    assert value.item() == pytest.approx(0.704215, abs=1e-5)
    # T = 2 scales by T^2 = 4 and softens p^d to sqrt(p^d) normalised: (0.6270, 0.1865, 0.1865)
    r = [math.sqrt(0.9), math.sqrt(0.05), math.sqrt(0.05)]
    p = [v / sum(r) for v in r]
    expected = 4 * sum(pi * math.log(pi * 3) for pi in p)
    value = tf_kd_reg_loss(torch.zeros(1, 3), torch.tensor([0]), correct_prob=0.9, temperature=2.0)
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_tf_kd_reg_is_nonnegative_and_zero_at_the_virtual_teacher(T):
    y = labels(8, 5, seed=4)
    for seed in range(5):
        assert tf_kd_reg_loss(logits(8, 5, seed=seed), y, correct_prob=0.7, temperature=T).item() >= 0
    # a student whose softmax at T is the virtual teacher's: its logits are log p^d (at any T the student
    # logits s = log p^d give softmax(s / T) = softmax(log p^d / T) = p^d_T)
    s = virtual_teacher_log_probs(y, 5, 0.7)
    assert tf_kd_reg_loss(s, y, correct_prob=0.7, temperature=T).item() == pytest.approx(0.0, abs=1e-6)
    # and a different correct_prob is not the same teacher
    assert tf_kd_reg_loss(s, y, correct_prob=0.9, temperature=T).item() > 1e-4


@pytest.mark.parametrize(("c", "a"), [(3, 0.9), (5, 0.6), (10, 0.95), (4, 0.25)])
def test_tf_kd_reg_at_t1_plus_teacher_entropy_is_label_smoothing(c, a):
    # KL(p^d || q) + H(p^d) = -sum p^d log q = CE with label smoothing eps = (1 - a) C / (C - 1)
    s, y = logits(7, c, seed=5), labels(7, c, seed=5)
    p = virtual_teacher_log_probs(y, c, a).exp()
    entropy = -(p * p.log()).sum(1).mean()
    eps = (1 - a) * c / (c - 1)
    smoothed_ce = F.cross_entropy(s, y, label_smoothing=eps)
    torch.testing.assert_close(tf_kd_reg_loss(s, y, correct_prob=a, temperature=1.0) + entropy, smoothed_ce)
    # hence the same gradient as label smoothing
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    tf_kd_reg_loss(s1, y, correct_prob=a, temperature=1.0).backward()
    F.cross_entropy(s2, y, label_smoothing=eps).backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_tf_kd_reg_gradient_and_dtypes():
    s = logits(4, 3, seed=6).requires_grad_()
    y = torch.tensor([0, 1, 2, 0])
    tf_kd_reg_loss(s, y, correct_prob=0.9, temperature=2.0).backward()
    # d/ds T^2 KL(p || softmax(s/T)) = T (q - p) / N
    q = torch.softmax(s.detach() / 2.0, 1)
    p = torch.softmax(virtual_teacher_log_probs(y, 3, 0.9) / 2.0, 1)
    torch.testing.assert_close(s.grad, 2.0 * (q - p) / 4)
    for dtype in (torch.float16, torch.bfloat16):
        v = tf_kd_reg_loss(logits(4, 3, seed=6, dtype=dtype), y, temperature=20.0)
        assert v.dtype == torch.float32 and torch.isfinite(v)
    assert torch.isfinite(tf_kd_reg_loss(torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([1]), temperature=1.0))


# ---------------------------------------------------------------- ensemble log-probabilities


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_ensemble_uniform_is_the_explicit_mean_of_softmaxes(T):
    z = logits(3, 4, 5, seed=7)
    out = ensemble_log_probs(z, T)
    assert out.shape == (4, 5)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))
    torch.testing.assert_close(out.exp(), torch.softmax(z / T, -1).mean(0))
    torch.testing.assert_close(out.exp().double(), naive_ensemble(z, T))


def test_ensemble_of_one_is_log_softmax():
    z = logits(1, 6, 4, seed=8)
    torch.testing.assert_close(ensemble_log_probs(z, 2.0), F.log_softmax(z[0] / 2.0, -1))


def test_ensemble_hand_computed_value():
    # two teachers on one sample, T = 1: p1 = (0.5, 0.5), p2 = (0.9, 0.1) -> mean (0.7, 0.3);
    # with weights (0.25, 0.75): 0.25 * (0.5, 0.5) + 0.75 * (0.9, 0.1) = (0.8, 0.2)
    z = torch.stack([torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.9, 0.1]]))])
    torch.testing.assert_close(ensemble_log_probs(z).exp(), torch.tensor([[0.7, 0.3]]))
    torch.testing.assert_close(ensemble_log_probs(z, weights=torch.tensor([0.25, 0.75])).exp(), torch.tensor([[0.8, 0.2]]))


def test_ensemble_per_teacher_and_per_sample_weights_match_loops():
    z = logits(3, 4, 5, seed=9)
    w = torch.tensor([0.2, 0.5, 0.3])
    torch.testing.assert_close(ensemble_log_probs(z, 2.0, w).exp().double(), naive_ensemble(z, 2.0, w))
    ws = torch.softmax(logits(3, 4, seed=10), 0)  # (K, N), columns sum to 1
    torch.testing.assert_close(ensemble_log_probs(z, 2.0, ws).exp().double(), naive_ensemble(z, 2.0, ws))
    # per-sample weights equal to the per-teacher ones give the same ensemble
    torch.testing.assert_close(ensemble_log_probs(z, 2.0, w[:, None].expand(3, 4)), ensemble_log_probs(z, 2.0, w))
    # weights as a list and in float64 work too
    torch.testing.assert_close(ensemble_log_probs(z, 2.0, [0.2, 0.5, 0.3]), ensemble_log_probs(z, 2.0, w))


def test_a_teacher_with_weight_zero_has_no_influence():
    z = logits(2, 4, 5, seed=11)
    base = ensemble_log_probs(z, 2.0, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(base, F.log_softmax(z[0] / 2.0, -1))
    other = z.clone()
    other[1] = logits(4, 5, seed=12, scale=50.0)
    torch.testing.assert_close(ensemble_log_probs(other, 2.0, torch.tensor([1.0, 0.0])), base)
    # per sample: sample 0 from teacher 1 only, the rest from teacher 0 only
    w = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    out = ensemble_log_probs(z, 2.0, w)
    torch.testing.assert_close(out[0], F.log_softmax(z[1, 0] / 2.0, -1))
    torch.testing.assert_close(out[1:], F.log_softmax(z[0, 1:] / 2.0, -1))
    assert torch.isfinite(out).all()


def test_ensemble_is_detached_and_finite_for_extreme_and_low_precision_logits():
    z = logits(2, 3, 4, seed=13).requires_grad_()
    assert not ensemble_log_probs(z).requires_grad
    huge = torch.tensor([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 0.0]]])
    out = ensemble_log_probs(huge, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp(), torch.tensor([[0.5, 0.5, 0.0]]))
    assert torch.isfinite(ensemble_log_probs(huge, 1.0, torch.tensor([0.3, 0.7]))).all()
    for dtype in (torch.float16, torch.bfloat16):
        low = logits(3, 4, 5, seed=14, dtype=dtype)
        out = ensemble_log_probs(low, 2.0)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        torch.testing.assert_close(out, ensemble_log_probs(low.float(), 2.0))
        assert torch.isfinite(ensemble_log_probs(huge.to(dtype), 1.0, torch.tensor([0.5, 0.5]))).all()
    assert ensemble_log_probs(z.double(), 2.0).dtype == torch.float64


# ---------------------------------------------------------------- confidence weights (CA-MKD)


def naive_confidence_weights(z, y):
    k, n, _ = z.shape
    w = torch.zeros(k, n, dtype=torch.float64)
    for i in range(n):
        ce = [-math.log(float(naive_softmax(z[j, i])[int(y[i])])) for j in range(k)]
        total = sum(math.exp(v) for v in ce)
        for j in range(k):
            w[j, i] = (1 - math.exp(ce[j]) / total) / (k - 1)
    return w


@pytest.mark.parametrize("k", [2, 3, 5])
def test_confidence_weights_match_the_ca_mkd_formula(k):
    z, y = logits(k, 6, 4, seed=15, scale=2.0), labels(6, 4, seed=15)
    w = confidence_weights(z, y)
    assert w.shape == (k, 6) and not w.requires_grad
    torch.testing.assert_close(w.double(), naive_confidence_weights(z, y))
    torch.testing.assert_close(w.sum(0), torch.ones(6))
    assert (w >= 0).all()


def test_confidence_weights_hand_computed_and_ordering():
    # K = 2: w_0 = 1 - e^{CE_0} / (e^{CE_0} + e^{CE_1}) = p_0(y) / (p_0(y) + p_1(y)).
    # Teacher 0 puts 0.8 on the label, teacher 1 puts 0.2: weights 0.8 and 0.2.
    z = torch.log(torch.tensor([[[0.8, 0.1, 0.1]], [[0.2, 0.4, 0.4]]]))
    torch.testing.assert_close(confidence_weights(z, torch.tensor([0])), torch.tensor([[0.8], [0.2]]))
    # label 1: teacher 1 (0.4) is more confident than teacher 0 (0.1): 0.1/0.5 = 0.2 vs 0.8
    torch.testing.assert_close(confidence_weights(z, torch.tensor([1])), torch.tensor([[0.2], [0.8]]))
    # in general the teacher with the higher probability on the label gets the larger weight
    z, y = logits(4, 8, 5, seed=16), labels(8, 5, seed=16)
    w = confidence_weights(z, y)
    p_label = torch.softmax(z, -1).gather(-1, y.expand(4, 8)[..., None]).squeeze(-1)
    assert torch.equal(w.argsort(0), p_label.argsort(0))
    # scale-free in the teachers' logit offsets: a per-sample shift of one teacher changes nothing
    shifted = z.clone()
    shifted[2] += 7.0
    torch.testing.assert_close(confidence_weights(shifted, y), w)


def test_confidence_weights_single_teacher_and_low_precision():
    z, y = logits(1, 5, 3, seed=17), labels(5, 3, seed=17)
    assert torch.equal(confidence_weights(z, y), torch.ones(1, 5))
    for dtype in (torch.float16, torch.bfloat16):
        w = confidence_weights(logits(3, 5, 3, seed=18, dtype=dtype), y)
        assert w.dtype == torch.float32 and torch.isfinite(w).all()
        torch.testing.assert_close(w.sum(0), torch.ones(5))
    huge = torch.tensor([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 0.0]]])
    w = confidence_weights(huge, torch.tensor([0]))
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, torch.tensor([[1.0], [0.0]]))


# ---------------------------------------------------------------- multi-teacher KD loss


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_multi_teacher_kd_matches_naive_formula(T):
    s, z = logits(4, 5, seed=19), logits(3, 4, 5, seed=20)
    assert multi_teacher_kd_loss(s, z, T).item() == pytest.approx(naive_kd_from_probs(s, naive_ensemble(z, T), T), rel=1e-5)
    w = torch.tensor([0.6, 0.1, 0.3])
    expected = naive_kd_from_probs(s, naive_ensemble(z, T, w), T)
    assert multi_teacher_kd_loss(s, z, T, w).item() == pytest.approx(expected, rel=1e-5)
    ws = confidence_weights(z, labels(4, 5, seed=21))
    expected = naive_kd_from_probs(s, naive_ensemble(z, T, ws), T)
    assert multi_teacher_kd_loss(s, z, T, ws).item() == pytest.approx(expected, rel=1e-5)


def test_multi_teacher_kd_with_one_teacher_is_kd_loss():
    s, t = logits(6, 5, seed=22), logits(6, 5, seed=23)
    for T in (1.0, 2.0, 4.0):
        torch.testing.assert_close(multi_teacher_kd_loss(s, t[None], T), kd_loss(s, t, T))
        torch.testing.assert_close(multi_teacher_kd_loss(s, t[None], T, torch.ones(1)), kd_loss(s, t, T))
    # weights (1, 0) ignore the second teacher
    z = torch.stack([t, logits(6, 5, seed=24)])
    torch.testing.assert_close(multi_teacher_kd_loss(s, z, 3.0, torch.tensor([1.0, 0.0])), kd_loss(s, t, 3.0))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_multi_teacher_kd_is_nonnegative_and_zero_at_the_ensemble(T):
    z = logits(3, 6, 5, seed=25)
    for seed in range(5):
        assert multi_teacher_kd_loss(logits(6, 5, seed=100 + seed), z, T).item() >= 0
    # T * log p̄_T are logits whose softmax at T is the ensemble
    s = T * ensemble_log_probs(z, T)
    assert multi_teacher_kd_loss(s, z, T).item() == pytest.approx(0.0, abs=1e-5)
    w = torch.tensor([0.5, 0.2, 0.3])
    s = T * ensemble_log_probs(z, T, w)
    assert multi_teacher_kd_loss(s, z, T, w).item() == pytest.approx(0.0, abs=1e-5)
    # but it is not zero against the uniform ensemble
    assert multi_teacher_kd_loss(s, z, T).item() > 1e-3


def test_multi_teacher_kd_gradient_flows_into_the_student_only():
    s = logits(4, 5, seed=26).requires_grad_()
    z = logits(2, 4, 5, seed=27).requires_grad_()
    T = 3.0
    multi_teacher_kd_loss(s, z, T).backward()
    assert z.grad is None
    # d/ds T^2 KL(p̄ || softmax(s/T)) = T (q - p̄) / N
    q = torch.softmax(s.detach() / T, -1)
    p = torch.softmax(z.detach() / T, -1).mean(0)
    torch.testing.assert_close(s.grad, T * (q - p) / 4)


def test_multi_teacher_kd_low_precision_and_extremes():
    for dtype in (torch.float16, torch.bfloat16):
        v = multi_teacher_kd_loss(logits(4, 5, seed=28, dtype=dtype), logits(3, 4, 5, seed=29, dtype=dtype), 2.0)
        assert v.dtype == torch.float32 and torch.isfinite(v)
    huge = torch.tensor([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 0.0]]])
    assert torch.isfinite(multi_teacher_kd_loss(torch.tensor([[1e4, 0.0, -1e4]]), huge, 1.0))


# ---------------------------------------------------------------- bad inputs


def test_bad_teacher_stacks():
    s = logits(4, 3)
    for fn in (
        lambda z: ensemble_log_probs(z),
        lambda z: confidence_weights(z, torch.zeros(4, dtype=torch.long)),
        lambda z: multi_teacher_kd_loss(s, z),
    ):
        with pytest.raises(ValueError, match=r"stacked as \(teachers, batch, classes\), got \(4, 3\)"):
            fn(logits(4, 3))
        with pytest.raises(ValueError, match=r"stacked as \(teachers, batch, classes\)"):
            fn([logits(4, 3), logits(4, 3)])
        with pytest.raises(TypeError, match="teacher_logits must be a floating-point tensor, got torch.int64"):
            fn(torch.ones(2, 4, 3, dtype=torch.long))


def test_bad_student_logits_for_multi_teacher_kd():
    z = logits(2, 4, 3)
    with pytest.raises(TypeError, match="student_logits must be a floating-point tensor"):
        multi_teacher_kd_loss(torch.ones(4, 3, dtype=torch.long), z)
    with pytest.raises(ValueError, match="batch sizes differ: student 5, teacher 4"):
        multi_teacher_kd_loss(logits(5, 3), z)
    with pytest.raises(ValueError, match="student has 4 classes but teacher has 3"):
        multi_teacher_kd_loss(logits(4, 4), z)
    with pytest.raises(ValueError, match=r"student_logits must have shape \(batch, classes\)"):
        multi_teacher_kd_loss(logits(2, 4, 3), z)


def test_bad_weights():
    z = logits(2, 4, 3)
    for fn in (lambda w: ensemble_log_probs(z, 1.0, w), lambda w: multi_teacher_kd_loss(logits(4, 3), z, 2.0, w)):
        with pytest.raises(ValueError, match=r"weights must have shape \(2,\) or \(2, 4\) for 2 teachers and 4 samples, got \(3,\)"):
            fn(torch.tensor([0.2, 0.3, 0.5]))
        with pytest.raises(ValueError, match=r"got \(4, 2\)"):
            fn(torch.full((4, 2), 0.5))
        with pytest.raises(ValueError, match="weights must be finite and >= 0"):
            fn(torch.tensor([1.5, -0.5]))
        with pytest.raises(ValueError, match="weights must be finite and >= 0"):
            fn(torch.tensor([float("nan"), 1.0]))
        with pytest.raises(ValueError, match="weights must sum to 1 over the teachers"):
            fn(torch.tensor([0.5, 0.6]))
        with pytest.raises(ValueError, match="weights must sum to 1 over the teachers"):
            fn(torch.tensor([[0.5, 0.5, 0.5, 1.0], [0.5, 0.5, 0.5, 0.5]]))


def test_bad_virtual_teacher_settings():
    y = torch.tensor([0, 1, 2])
    for bad in (0.2, 1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"correct_prob must lie in \[1/C, 1\) = \[0.333, 1\)"):
            virtual_teacher_log_probs(y, 3, bad)
        with pytest.raises(ValueError, match="correct_prob must lie in"):
            tf_kd_reg_loss(logits(3, 3), y, correct_prob=bad)
    for bad in (1, 0, 2.0, "3"):
        with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
            virtual_teacher_log_probs(torch.tensor([0]), bad)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2, got 1"):
        tf_kd_reg_loss(logits(3, 1), torch.zeros(3, dtype=torch.long))


def test_bad_targets():
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\) for 3 classes, got values in \[0, 3\]"):
        virtual_teacher_log_probs(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        tf_kd_reg_loss(logits(2, 3), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        confidence_weights(logits(2, 2, 3), torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="targets must be int64 class indices, got torch.int32"):
        tf_kd_reg_loss(logits(2, 3), torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(TypeError, match="targets must be int64"):
        confidence_weights(logits(2, 2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="targets must be a torch.Tensor"):
        confidence_weights(logits(2, 2, 3), [0, 1])
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\)"):
        confidence_weights(logits(2, 2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\) to match the logits, got \(1, 2\)"):
        tf_kd_reg_loss(logits(2, 3), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"targets must have shape \(batch,\), one class index per sample, got \(1, 2\)"):
        virtual_teacher_log_probs(torch.tensor([[0, 1]]), 3)
    with pytest.raises(ValueError, match=r"got \(\)"):
        virtual_teacher_log_probs(torch.tensor(1), 3)


def test_bad_inputs_to_tf_kd_reg():
    y = torch.tensor([0, 1])
    with pytest.raises(TypeError, match="student_logits must be a floating-point tensor"):
        tf_kd_reg_loss(torch.ones(2, 3, dtype=torch.long), y)
    # the targets are checked against the student (not against a teacher built from them)
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\) to match the logits, got \(2,\)"):
        tf_kd_reg_loss(logits(3, 3), y)
    with pytest.raises(ValueError, match=r"student_logits must have shape \(batch, classes\), got \(3,\)"):
        tf_kd_reg_loss(logits(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="empty batch"):
        tf_kd_reg_loss(logits(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match="student_logits must be a torch.Tensor"):
        tf_kd_reg_loss([[0.0, 1.0]], torch.tensor([0]))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature(bad):
    z, s, y = logits(2, 4, 3), logits(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        ensemble_log_probs(z, bad)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        multi_teacher_kd_loss(s, z, bad)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        tf_kd_reg_loss(s, y, temperature=bad)


def test_hard_label_loss_is_cross_entropy_with_the_teachers_top_class():
    s = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 4, requires_grad=True)
    loss = hard_label_loss(s, t)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(s.detach(), t.argmax(1))))
    loss.backward()
    assert t.grad is None and s.grad is not None  # no gradient reaches the teacher
    # The T -> 0 limit of KD (up to scale): sharper and sharper teacher targets give the same ranking.
    assert float(hard_label_loss(s, t * 100).detach()) == pytest.approx(float(loss.detach()))
    with pytest.raises(ValueError):
        hard_label_loss(torch.randn(6, 4), torch.randn(6, 5))
