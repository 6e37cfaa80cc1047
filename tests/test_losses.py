import math

import pytest
import torch
import torch.nn.functional as F

from kdlib.losses import cross_entropy, hinton_loss, kd_loss, soft_targets


def logits(n=5, c=7, seed=0, scale=3.0):
    return scale * torch.randn(n, c, generator=torch.Generator().manual_seed(seed))


def reference_kd(s, t, T):
    """The formula written out by hand: T^2 * mean_n sum_i p_i (log p_i - log q_i)."""
    p = torch.softmax(t / T, 1)
    q = torch.softmax(s / T, 1)
    return T * T * (p * (p.log() - q.log())).sum(1).mean()


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
def test_kd_matches_formula(T):
    s, t = logits(seed=1), logits(seed=2)
    torch.testing.assert_close(kd_loss(s, t, T), reference_kd(s, t, T))


def test_kd_hand_computed_value():
    # two classes, T = 1: p = softmax([0, 0]) = (1/2, 1/2), q = softmax([log 3, 0]) = (3/4, 1/4)
    s = torch.tensor([[math.log(3.0), 0.0]])
    t = torch.zeros(1, 2)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_zero_when_student_equals_teacher_and_positive_otherwise():
    t = logits()
    assert kd_loss(t.clone(), t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    # adding a per-sample constant to logits leaves the softmax unchanged: still zero
    assert kd_loss(t + 5.0, t, 4.0).item() == pytest.approx(0.0, abs=1e-5)
    for seed in range(20):
        assert kd_loss(logits(seed=seed + 100), t, 4.0).item() > 0


def test_kd_argument_order_teacher_is_the_target():
    s, t = logits(seed=3), logits(seed=4)
    assert kd_loss(s, t, 2.0).item() != pytest.approx(kd_loss(t, s, 2.0).item())
    torch.testing.assert_close(
        kd_loss(s, t, 2.0),
        F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4,
    )


def test_kd_is_batch_mean():
    s, t = logits(n=6, seed=5), logits(n=6, seed=6)
    per_sample = torch.stack([kd_loss(s[i : i + 1], t[i : i + 1], 3.0) for i in range(6)])
    torch.testing.assert_close(kd_loss(s, t, 3.0), per_sample.mean())


@pytest.mark.parametrize("T", [1.0, 2.0, 8.0])
def test_kd_gradient_is_T_times_probability_difference(T):
    s = logits(seed=7).requires_grad_()
    t = logits(seed=8)
    kd_loss(s, t, T).backward()
    expected = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t / T, 1)) / s.shape[0]
    torch.testing.assert_close(s.grad, expected)


def test_kd_gradient_magnitude_stays_comparable_across_temperatures():
    """The T^2 factor: for large T the gradient tends to (s - t) / (N C), independent of T."""
    s0 = 0.1 * logits(seed=9)
    s0 = s0 - s0.mean(1, keepdim=True)
    t = 0.1 * logits(seed=10)
    t = t - t.mean(1, keepdim=True)
    grads = []
    for T in (10.0, 100.0):
        s = s0.clone().requires_grad_()
        kd_loss(s, t, T).backward()
        grads.append(s.grad)
    limit = (s0 - t) / (s0.shape[0] * s0.shape[1])
    torch.testing.assert_close(grads[1], limit, rtol=5e-2, atol=1e-5)
    assert grads[0].norm() / grads[1].norm() == pytest.approx(1.0, rel=0.05)


def test_kd_no_gradient_into_teacher():
    s = logits(seed=11).requires_grad_()
    t = logits(seed=12).requires_grad_()
    kd_loss(s, t, 4.0).backward()
    assert t.grad is None and s.grad is not None


def test_kd_finite_for_extreme_logits_and_half_precision():
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    t = torch.tensor([[-1e4, 1e4, 0.0], [-1e4, 1e4, 0.0]])
    assert torch.isfinite(kd_loss(s, t, 1.0))
    for dtype in (torch.float16, torch.bfloat16):
        value = kd_loss(logits().to(dtype), logits(seed=1).to(dtype), 4.0)
        assert value.dtype == torch.float32 and torch.isfinite(value)


def test_hinton_loss_combines_ce_and_kd():
    s, t = logits(seed=13), logits(seed=14)
    y = torch.tensor([0, 1, 2, 3, 4])
    combined = hinton_loss(s, t, y, temperature=3.0, alpha=0.25)
    torch.testing.assert_close(combined, 0.75 * F.cross_entropy(s, y) + 0.25 * kd_loss(s, t, 3.0))
    torch.testing.assert_close(hinton_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))


def test_soft_targets_flatten_with_temperature():
    z = torch.tensor([3.0, 1.0, 0.0])
    entropies = [-(p * p.log()).sum().item() for p in (soft_targets(z, T) for T in (1, 2, 5, 20))]
    assert entropies == sorted(entropies)
    torch.testing.assert_close(soft_targets(z, 1.0).sum(), torch.tensor(1.0))


@pytest.mark.parametrize("T", [0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(T):
    with pytest.raises(ValueError, match="temperature must be"):
        kd_loss(logits(), logits(), T)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]"):
        hinton_loss(logits(), logits(), torch.zeros(5, dtype=torch.long), alpha=alpha)


def test_bad_shapes_give_one_clear_error():
    with pytest.raises(ValueError, match="student has 7 classes but teacher has 10"):
        kd_loss(logits(c=7), logits(c=10))
    with pytest.raises(ValueError, match="batch sizes differ"):
        kd_loss(logits(n=4), logits(n=5))
    with pytest.raises(ValueError, match=r"shape \(batch, classes\)"):
        kd_loss(torch.randn(7), torch.randn(7))
    with pytest.raises(ValueError, match="empty batch"):
        kd_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(TypeError, match="floating-point"):
        kd_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="targets must have shape"):
        cross_entropy(logits(), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        cross_entropy(logits(), torch.zeros(5, dtype=torch.int32))
