import pytest
import torch

from kdlib.augment import Compose, MixInputs, mix_inputs
from kdlib.data import RandomShift


def test_mix_inputs_are_convex_combinations_of_two_batch_members():
    x = torch.eye(6) * torch.arange(1.0, 7.0)[:, None]  # sample i is (i+1) * e_i: every mix is readable
    out = mix_inputs(x, generator=torch.Generator().manual_seed(0))
    for i, row in enumerate(out):
        nonzero = row.nonzero().squeeze(1).tolist()
        assert i in nonzero or row[i] == 0  # keeps a share of itself (unless lambda is 0)
        assert len(nonzero) <= 2
        weights = row[nonzero] / torch.tensor([k + 1.0 for k in nonzero])
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6) and bool((weights >= 0).all())


def test_mix_inputs_is_reproducible_and_keeps_shape_dtype():
    x = torch.randn(8, 1, 4, 4)
    a = mix_inputs(x, generator=torch.Generator().manual_seed(3))
    b = MixInputs()(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    with pytest.raises(ValueError, match="floating-point batch"):
        mix_inputs(torch.ones(4, 3, dtype=torch.int64))


def test_compose_applies_in_order_from_one_generator():
    x = torch.randn(5, 40)
    composed = Compose(RandomShift(2), MixInputs())(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    by_hand = MixInputs()(RandomShift(2)(x, g), g)
    assert torch.equal(composed, by_hand)
    with pytest.raises(TypeError, match="Compose needs callables"):
        Compose(3)
