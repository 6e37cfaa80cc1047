"""Token-level sequence losses against their formulas and invariants: zero at equality, non-negativity, the masks,
gradients only into the student, extreme logits, half precision, argument order and the limits of the families."""

from __future__ import annotations

import math

import pytest
import torch

from kdlib.losses import (
    token_forward_kl,
    token_generalized_jsd,
    token_reverse_kl,
    token_skew_kl,
)

B, L, V = 3, 5, 7
LOSSES = {
    "forward": token_forward_kl,
    "reverse": token_reverse_kl,
    "jsd": lambda s, t, m=None, **kw: token_generalized_jsd(s, t, m, beta=0.3, **kw),
    "skew": lambda s, t, m=None, **kw: token_skew_kl(s, t, m, alpha=0.1, **kw),
    "skew_reverse": lambda s, t, m=None, **kw: token_skew_kl(s, t, m, alpha=0.1, reverse=True, **kw),
}


def logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(B, L, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # the textbook formula, per position
    return (p * (p.log() - q.log())).sum(-1)


def test_each_loss_equals_its_formula():
    s, t = logits(0), logits(1)
    q, p = s.softmax(-1), t.softmax(-1)
    beta, alpha = 0.3, 0.1
    m = beta * p + (1 - beta) * q
    expected = {
        "forward": kl(p, q), "reverse": kl(q, p),
        "jsd": beta * kl(p, m) + (1 - beta) * kl(q, m),
        "skew": kl(p, alpha * p + (1 - alpha) * q), "skew_reverse": kl(q, alpha * q + (1 - alpha) * p),
    }
    for name, loss in LOSSES.items():
        torch.testing.assert_close(loss(s, t), expected[name].mean(), msg=name)


@pytest.mark.parametrize("name", list(LOSSES))
def test_zero_at_equality_and_positive_otherwise(name):
    loss = LOSSES[name]
    s = logits(2)
    assert float(loss(s, s.clone())) == pytest.approx(0.0, abs=1e-12)
    for seed in range(5):
        assert float(loss(logits(10 + seed), logits(20 + seed))) > 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_the_mask_really_masks(name):
    loss = LOSSES[name]
    s, t = logits(3), logits(4)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, :2], mask[2, 3] = True, True
    changed_s, changed_t = s.clone(), t.clone()
    changed_s[~mask] += 100 * torch.randn_like(changed_s[~mask])
    changed_t[~mask] = 0.0
    masked = loss(s, t, mask)
    assert float(loss(changed_s, changed_t, mask)) == pytest.approx(float(masked))
    # the mean over the kept positions, as if only they were there
    kept = loss(s[mask].unsqueeze(0), t[mask].unsqueeze(0))
    torch.testing.assert_close(masked, kept)
    torch.testing.assert_close(loss(s, t, mask.long()), masked)  # 0/1 integers mean the same


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_flow_into_the_student_only(name):
    s = logits(5).requires_grad_(True)
    t = logits(6).requires_grad_(True)
    LOSSES[name](s, t).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None


@pytest.mark.parametrize("name", list(LOSSES))
def test_extreme_logits_stay_finite(name):
    s, t = logits(7, scale=1e4), logits(8, scale=1e4)
    s.requires_grad_(True)
    value = LOSSES[name](s, t)
    value.backward()
    assert math.isfinite(float(value.detach())) and bool(torch.isfinite(s.grad).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(LOSSES))
def test_half_precision_is_computed_in_float32(name, dtype):
    s, t = logits(9).to(dtype), logits(10).to(dtype)
    value = LOSSES[name](s, t)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, LOSSES[name](s.float(), t.float()))


def test_argument_order_and_limits():
    s, t = logits(11), logits(12)
    torch.testing.assert_close(token_forward_kl(s, t), token_reverse_kl(t, s))
    assert float(token_forward_kl(s, t)) != pytest.approx(float(token_reverse_kl(s, t)))
    torch.testing.assert_close(token_generalized_jsd(s, t, beta=0.0), token_forward_kl(s, t))
    torch.testing.assert_close(token_generalized_jsd(s, t, beta=1.0), token_reverse_kl(s, t))
    # near the ends the mixture formula vanishes like beta (or 1 - beta) times the KL it then approaches:
    # JSD_beta = beta KL(p || q) + O(beta^2), and symmetrically at beta = 1
    eps = 1e-4
    assert float(token_generalized_jsd(s, t, beta=eps)) / eps == pytest.approx(float(token_forward_kl(s, t)), rel=1e-2)
    assert float(token_generalized_jsd(s, t, beta=1 - eps)) / eps == pytest.approx(float(token_reverse_kl(s, t)),
                                                                                rel=1e-2)
    assert float(token_generalized_jsd(s, t, beta=0.5)) <= math.log(2) + 1e-12  # the symmetric JSD is bounded
    torch.testing.assert_close(token_skew_kl(s, t, alpha=0.0), token_forward_kl(s, t))
    torch.testing.assert_close(token_skew_kl(s, t, alpha=0.0, reverse=True), token_reverse_kl(s, t))
    assert float(token_skew_kl(s, t, alpha=0.5)) <= math.log(2) + 1e-12  # the skew bounds the log-ratio
    torch.testing.assert_close(token_forward_kl(s, t, temperature=2.0), token_forward_kl(s / 2, t / 2))


def test_no_kept_position_gives_zero_with_a_gradient():
    s = logits(13).requires_grad_(True)
    value = token_reverse_kl(s, logits(14), torch.zeros(B, L, dtype=torch.bool))
    value.backward()
    assert float(value.detach()) == 0.0 and s.grad is not None


def test_bad_inputs_give_one_clear_error():
    s, t = logits(15), logits(16)
    with pytest.raises(ValueError, match=r"\(batch, length, vocabulary\)"):
        token_forward_kl(s[0], t[0])
    with pytest.raises(ValueError, match="same shape"):
        token_forward_kl(s, t[:, :, :3])
    with pytest.raises(ValueError, match="mask must have shape"):
        token_forward_kl(s, t, torch.ones(B, L + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        token_forward_kl(s, t, torch.full((B, L), 2))
    with pytest.raises(ValueError, match="beta must lie in"):
        token_generalized_jsd(s, t, beta=1.5)
    with pytest.raises(ValueError, match="alpha must lie in"):
        token_skew_kl(s, t, alpha=1.0)
    with pytest.raises(ValueError, match="temperature"):
        token_reverse_kl(s, t, temperature=0.0)
