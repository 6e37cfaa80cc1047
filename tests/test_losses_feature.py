import math

import pytest
import torch
import torch.nn.functional as F

from kdlib.losses import at_loss, attention_map, fitnet_loss


def feats(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ naive formulas


def naive_fitnet(s, t):
    """Sum of squared differences over every element, divided by the number of elements."""
    total = 0.0
    flat_s, flat_t = s.reshape(-1).tolist(), t.reshape(-1).tolist()
    for a, b in zip(flat_s, flat_t):
        total += (a - b) ** 2
    return total / len(flat_s)


def naive_attention(x, p):
    """Per sample: Q[i] = mean_c |x[c, i]|^p over flattened positions i, then Q / ||Q||_2."""
    maps = []
    for sample in x:
        flat = sample.reshape(sample.shape[0], -1)
        channels, positions = flat.shape
        q = [sum(abs(flat[c, i].item()) ** p for c in range(channels)) / channels for i in range(positions)]
        norm = math.sqrt(sum(v * v for v in q))
        maps.append([v / norm for v in q])
    return torch.tensor(maps, dtype=torch.float64)


def naive_at(s, t, p=2):
    a_s, a_t = naive_attention(s, p), naive_attention(t, p)
    n, positions = a_s.shape
    return sum((a_s[i, j] - a_t[i, j]).item() ** 2 for i in range(n) for j in range(positions)) / (n * positions)


# ------------------------------------------------------------------------------------------------ FitNets


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 7), (2, 3, 4, 5)])
def test_fitnet_matches_formula(shape):
    s, t = feats(*shape, seed=1), feats(*shape, seed=2)
    assert fitnet_loss(s, t).item() == pytest.approx(naive_fitnet(s, t), rel=1e-6)
    torch.testing.assert_close(fitnet_loss(s, t), F.mse_loss(s, t))


def test_fitnet_hand_computed_value():
    # squared differences (1-1)^2 + (2-0)^2 + (3-0)^2 + (4-0)^2 = 0 + 4 + 9 + 16 = 29 over 4 elements = 7.25
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert fitnet_loss(s, t).item() == pytest.approx(7.25)


def test_fitnet_is_a_mean_not_a_sum_and_zero_only_when_equal():
    s, t = feats(3, 4, 5, seed=3), feats(3, 4, 5, seed=4)
    # repeating the batch leaves a mean unchanged (a sum over elements or samples would double)
    torch.testing.assert_close(fitnet_loss(torch.cat([s, s]), torch.cat([t, t])), fitnet_loss(s, t))
    assert fitnet_loss(t.clone(), t).item() == 0.0
    assert fitnet_loss(s, t).item() > 0


def test_fitnet_gradient_into_student_only():
    s = feats(3, 4, 2, 2, seed=5).requires_grad_()
    t = feats(3, 4, 2, 2, seed=6).requires_grad_()
    fitnet_loss(s, t).backward()
    assert t.grad is None
    torch.testing.assert_close(s.grad, 2 * (s.detach() - t.detach()) / s.numel())


def test_fitnet_finite_for_extreme_and_half_precision():
    s = torch.tensor([[1e4, -1e4], [-1e4, 1e4]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4], [-1e4, 1e4]])
    loss = fitnet_loss(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    for dtype in (torch.float16, torch.bfloat16):
        # 300^2 = 9e4 overflows float16 (max 65504) unless computed in float32
        value = fitnet_loss(feats(2, 3, seed=7, scale=300).to(dtype), feats(2, 3, seed=8, scale=300).to(dtype))
        assert value.dtype == torch.float32 and torch.isfinite(value)


def test_fitnet_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape.*adapter"):
        fitnet_loss(feats(2, 8, 4, 4), feats(2, 16, 4, 4))
    with pytest.raises(ValueError, match="batch sizes differ"):
        fitnet_loss(feats(2, 8), feats(3, 8))
    with pytest.raises(ValueError, match="empty batch"):
        fitnet_loss(torch.zeros(0, 8), torch.zeros(0, 8))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fitnet_loss(feats(8), feats(8))
    with pytest.raises(TypeError, match="floating-point"):
        fitnet_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        fitnet_loss([[1.0, 2.0]], torch.zeros(1, 2))


# ------------------------------------------------------------------------------------------------ attention


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (3, 4, 7)])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_attention_map_matches_formula(shape, p):
    # negative activations and odd p: the map uses |A|^p, not A^p
    x = feats(*shape, seed=10)
    torch.testing.assert_close(attention_map(x, p).double(), naive_attention(x, p), rtol=1e-5, atol=1e-6)


def test_attention_map_is_normalised_per_sample():
    x = feats(4, 3, 5, 5, seed=11) * torch.tensor([1.0, 10.0, 100.0, 0.1]).view(4, 1, 1, 1)
    a = attention_map(x)
    assert a.shape == (4, 25)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(4))
    # per-sample normalisation: one sample's map does not depend on the others
    torch.testing.assert_close(attention_map(x[1:2]), a[1:2])


@pytest.mark.parametrize("p", [2, 4])
def test_at_matches_formula(p):
    s, t = feats(3, 4, 5, 5, seed=12), feats(3, 6, 5, 5, seed=13)
    assert at_loss(s, t, p).item() == pytest.approx(naive_at(s, t, p), rel=1e-5)


def test_at_hand_computed_value():
    # 1-D features (N=1, C, L=2).
    # student channels [1, 0] and [1, 2]: mean of squares per position = [(1+1)/2, (0+4)/2] = [1, 2] -> [1, 2]/sqrt(5)
    # teacher one channel [3, 0]: squares [9, 0] -> [1, 0]
    # squared differences: (1/sqrt5 - 1)^2 + (2/sqrt5)^2 = 1 - 2/sqrt5 + 1/5 + 4/5 = 2 - 2/sqrt5
    # mean over N * L = 2 positions: 1 - 1/sqrt5 = 0.5527864
    s = torch.tensor([[[1.0, 0.0], [1.0, 2.0]]])
    t = torch.tensor([[[3.0, 0.0]]])
    assert at_loss(s, t).item() == pytest.approx(1 - 1 / math.sqrt(5), rel=1e-6)


def test_at_is_mean_over_batch_and_positions():
    s, t = feats(5, 3, 4, 4, seed=14), feats(5, 8, 4, 4, seed=15)
    per_sample = torch.stack([at_loss(s[i : i + 1], t[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(at_loss(s, t), per_sample.mean())
    # bounded by 4 / P since both maps have unit norm
    assert at_loss(s, t).item() <= 4 / 16


def test_at_invariances():
    s, t = feats(4, 3, 6, 6, seed=16), feats(4, 5, 6, 6, seed=17)
    base = at_loss(s, t)
    assert at_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-7)
    assert base.item() > 0
    # positive scale per sample, channel order, and repeated channels do not change an attention map
    scales = torch.tensor([0.01, 1.0, 7.0, 300.0]).view(4, 1, 1, 1)
    torch.testing.assert_close(at_loss(s * scales, t), base)
    torch.testing.assert_close(at_loss(s, t * scales), base)
    torch.testing.assert_close(at_loss(s[:, [2, 0, 1]], t), base)
    torch.testing.assert_close(at_loss(s, torch.cat([t, t], dim=1)), base)
    # the sign of activations does not matter (|A|^p)
    torch.testing.assert_close(at_loss(-s, t), base)


def test_at_gradient_into_student_only_and_gradcheck():
    s = feats(2, 3, 4, 4, seed=18).requires_grad_()
    t = feats(2, 5, 4, 4, seed=19).requires_grad_()
    at_loss(s, t).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    s64 = feats(2, 3, 3, 3, seed=20).double().requires_grad_()
    t64 = feats(2, 2, 3, 3, seed=21).double()
    assert torch.autograd.gradcheck(lambda x: at_loss(x, t64), (s64,))


def test_at_finite_for_extreme_zero_and_half_precision():
    s = feats(2, 3, 4, 4, seed=22, scale=1e4).requires_grad_()
    t = feats(2, 5, 4, 4, seed=23, scale=1e4)
    loss = at_loss(s, t, p=4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # a student whose activations are all zero (dead ReLUs): a zero map, finite loss and gradient
    z = torch.zeros(2, 3, 4, 4, requires_grad=True)
    loss = at_loss(z, t)
    loss.backward()
    assert loss.item() == pytest.approx(1 / 16) and torch.isfinite(z.grad).all()
    for dtype in (torch.float16, torch.bfloat16):
        value = at_loss(feats(2, 3, 4, 4, seed=24, scale=300).to(dtype), feats(2, 6, 4, 4, seed=25).to(dtype))
        assert value.dtype == torch.float32 and torch.isfinite(value)


def test_at_bad_inputs():
    with pytest.raises(ValueError, match=r"spatial size \(8, 8\) differs.*\(4, 4\).*same resolution.*pool"):
        at_loss(feats(2, 3, 8, 8), feats(2, 3, 4, 4))
    with pytest.raises(ValueError, match="spatial size"):
        at_loss(feats(2, 3, 16), feats(2, 3, 4, 4))
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        at_loss(feats(2, 16), feats(2, 16))
    with pytest.raises(ValueError, match="batch sizes differ"):
        at_loss(feats(2, 3, 4, 4), feats(3, 3, 4, 4))
    with pytest.raises(ValueError, match="empty batch"):
        at_loss(torch.zeros(0, 3, 4, 4), torch.zeros(0, 3, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        at_loss(torch.zeros(2, 3, 4, 4, dtype=torch.int32), feats(2, 3, 4, 4))
    for p in (0.5, 0, -2, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="exponent p must be"):
            at_loss(feats(2, 3, 4, 4), feats(2, 3, 4, 4), p=p)
    with pytest.raises(ValueError, match="spatial dimension"):
        attention_map(feats(2, 16))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        attention_map("features")


# ------------------------------------------------------------------------------------------------ devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_feature_losses_agree_on_cpu_and_cuda():
    s, t = feats(3, 4, 5, 5, seed=26), feats(3, 6, 5, 5, seed=27)
    torch.testing.assert_close(at_loss(s.cuda(), t.cuda()).cpu(), at_loss(s, t), rtol=1e-5, atol=1e-7)
    t4 = feats(3, 4, 5, 5, seed=28)
    torch.testing.assert_close(fitnet_loss(s.cuda(), t4.cuda()).cpu(), fitnet_loss(s, t4), rtol=1e-5, atol=1e-7)
