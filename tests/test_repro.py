import random

import numpy as np
import pytest
import torch

from kdlib.repro import seed_everything, set_deterministic, summarize


def test_seed_everything_seeds_all_generators():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    g1 = seed_everything(7)
    a = draw()
    g2 = seed_everything(7)
    assert draw() == a
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    seed_everything(8)
    assert draw() != a


def test_seed_validation():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            seed_everything(bad)


def test_deterministic_switch():
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_summarize_mean_std_and_interval():
    out = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert out["mean"] == 3.0 and out["n"] == 5
    assert out["std"] == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert out["ci95"] == pytest.approx(2.776445 * out["std"] / np.sqrt(5), rel=1e-5)
    single = summarize([0.5])
    assert single["mean"] == 0.5 and np.isnan(single["std"])
    with pytest.raises(ValueError, match="non-empty"):
        summarize([])
