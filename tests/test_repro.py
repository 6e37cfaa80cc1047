import random

import numpy as np
import pytest
import torch

from kdlib.repro import paired_difference, seed_everything, set_deterministic, summarize


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


def test_paired_difference_verdicts_follow_the_interval():
    base = [60.0, 61.0, 59.5, 60.5, 60.0]
    better = paired_difference([b + 2 + 0.1 * i for i, b in enumerate(base)], base)
    assert better["verdict"] == "better" and better["low"] > 0 and better["diff"] == pytest.approx(2.2)
    worse = paired_difference([b - 1 for b in base], base)
    assert worse["diff"] == pytest.approx(-1) and worse["verdict"] == "worse"  # zero spread: interval is a point
    noise = paired_difference([60.0, 62.0, 58.0, 61.0, 59.0], base)
    assert noise["low"] < 0 < noise["high"] and noise["verdict"] == "n.s."
    # Pairing matters: a constant offset is significant even when the seeds themselves vary a lot.
    wide = [50.0, 70.0, 55.0, 65.0, 60.0]
    assert paired_difference([w + 0.5 for w in wide], wide)["verdict"] == "better"


def test_paired_difference_needs_the_same_seeds():
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
