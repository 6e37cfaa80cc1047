import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from tiny import blobs

from kdlib.data import UNLABELED, with_unlabeled
from kdlib.protocol import compare, contrasts, grid, holdout, holm, paired_test, report, tune


def test_holdout_carves_a_stratified_validation_split_from_training():
    data = blobs(n_train=90, classes=3)
    val = holdout(data, 30, seed=1)
    assert len(val.test) == 30 and len(val.train) == 60
    assert torch.bincount(val.test.y).tolist() == [10, 10, 10]  # each class keeps its share
    # Disjoint, and together exactly the original training split: no test sample is ever used.
    rows = {tuple(r.tolist()) for r in torch.cat([val.train.x, val.test.x])}
    assert rows == {tuple(r.tolist()) for r in data.train.x} and len(rows) == 90
    assert not any(torch.equal(v, t) for v in val.test.x for t in data.test.x)
    assert val.name == "blobs (validation)"
    assert torch.equal(holdout(data, 30, seed=1).test.x, val.test.x)  # the same for a seed
    assert not torch.equal(holdout(data, 30, seed=2).test.x, val.test.x)


def test_holdout_fraction_keeps_unlabeled_samples_in_training():
    data = with_unlabeled(blobs(n_train=60), torch.randn(20, 8))
    val = holdout(data, 0.25)
    assert len(val.test) == 15 and bool((val.test.y != UNLABELED).all())
    assert int((val.train.y == UNLABELED).sum()) == 20


@pytest.mark.parametrize("size", [0, 60, 1.0, 0.0, "10"])
def test_holdout_rejects_sizes_it_cannot_honour(size):
    with pytest.raises((ValueError, TypeError), match="validation|size"):
        holdout(blobs(n_train=60), size)


def test_grid_is_the_cartesian_product():
    configs = grid(lr=[1e-3, 3e-3], label_smoothing=[0.0, 0.1, 0.2])
    assert len(configs) == 6 and configs[0] == {"lr": 1e-3, "label_smoothing": 0.0}
    assert {(c["lr"], c["label_smoothing"]) for c in configs} == {(a, b) for a in (1e-3, 3e-3) for b in (0, 0.1, 0.2)}
    with pytest.raises(ValueError, match="non-empty"):
        grid(lr=[])


def test_tune_picks_the_best_mean_and_counts_the_budget():
    calls = []

    def run(config, seed):
        calls.append((config["x"], seed))
        return -((config["x"] - 2) ** 2) + 0.1 * seed  # best at x = 2 whatever the seed

    result = tune(run, grid(x=[0, 1, 2, 3]), seeds=[0, 1])
    assert result.best == {"x": 2} and result.best_score == pytest.approx(0.05)
    assert result.budget == 8 == len(calls) == len(result.trials)
    assert set(result.to_frame().columns) == {"x", "seed", "score"}
    diverged = tune(lambda c, s: math.nan if c["x"] == 0 else 0.5, grid(x=[0, 1]))
    assert diverged.best == {"x": 1}


def test_paired_test_matches_scipy():
    a, b = [61.0, 62.5, 60.1, 63.0, 61.7], [60.0, 61.0, 60.2, 61.5, 60.9]
    out = paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert out["p"] == pytest.approx(ref.pvalue) and out["n"] == 5
    ci = ref.confidence_interval(0.95)
    assert (out["low"], out["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert out["diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert math.isnan(paired_test([1.0], [0.0])["p"])
    assert paired_test([2.0, 3.0], [1.0, 2.0])["p"] == 0.0  # zero spread, non-zero difference


def test_holm_adjustment_by_hand():
    # Sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08 -> 0.09 (monotone); 0.5 x 1 = 0.5.
    assert holm([0.04, 0.01, 0.5, 0.03]) == pytest.approx([0.09, 0.04, 0.5, 0.09])
    adjusted = holm([0.2, math.nan, 0.9])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.4) and adjusted[2] == pytest.approx(0.9)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_compare_pairs_by_seed_and_corrects_verdicts():
    rng = np.random.default_rng(0)
    seeds = range(6)
    base = {s: 60 + 3 * rng.standard_normal() for s in seeds}  # large seed-to-seed spread
    rows = [dict(arm="alone", seed=s, accuracy=base[s]) for s in seeds]
    rows += [dict(arm="kd", seed=s, accuracy=base[s] + 1.0 + 0.05 * rng.standard_normal()) for s in seeds]
    noise = [1.0, -1.0, 0.5, -0.5, 1.2, -1.1]  # mean ~0, spread ~1: no effect
    rows += [dict(arm="noise", seed=s, accuracy=base[s] + noise[s]) for s in seeds]
    rows += [dict(arm="bad", seed=s, accuracy=base[s] - 2 + 0.1 * rng.standard_normal()) for s in seeds]
    table = compare(pd.DataFrame(rows), "alone")
    assert list(table.index) == ["alone", "kd", "noise", "bad"]
    assert table.loc["kd", "verdict"] == "better" and table.loc["bad", "verdict"] == "worse"
    assert table.loc["noise", "verdict"] == "n.s."
    assert table.loc["kd", "diff"] == pytest.approx(1.0, abs=0.1)
    assert (table["p_holm"].iloc[1:] >= table["p"].iloc[1:]).all()
    # Holm can overturn a raw 5 % result: with many arms, p = 0.03 alone is not enough.
    assert holm([0.03] + [0.5] * 9)[0] > 0.05
    # a perplexity-like value: lower is better, so the same differences flip their verdicts
    flipped = compare(pd.DataFrame(rows), "alone", higher_is_better=False)
    assert flipped.loc["kd", "verdict"] == "worse" and flipped.loc["bad", "verdict"] == "better"
    assert flipped.loc["noise", "verdict"] == "n.s." and flipped["p_holm"].equals(table["p_holm"])
    assert "perplexity" in report(flipped, metric="perplexity").columns
    with pytest.raises(ValueError, match="baseline arm 'x'"):
        compare(pd.DataFrame(rows), "x")
    with pytest.raises(KeyError, match="lacks the columns"):
        compare(pd.DataFrame(rows), "alone", value="best")


def test_report_formats_a_compare_table():
    rows = [dict(arm=a, seed=s, accuracy=v) for a, vals in (("alone", [60, 61, 62]), ("kd", [62, 63, 64.5]))
            for s, v in enumerate(vals)]
    out = report(compare(pd.DataFrame(rows), "alone"), against="alone")
    assert list(out.columns) == ["accuracy (%)", "Δ vs alone [95 % CI]", "Holm p", "verdict"]
    assert out.loc["alone", "Δ vs alone [95 % CI]"] == "—" and out.loc["kd", "accuracy (%)"] == "63.17 ± 1.26"
    assert out.loc["kd", "Δ vs alone [95 % CI]"].startswith("+2.17 [")


def test_contrasts_pair_chosen_arms_and_correct_them_together():
    values = {"a": [60, 61, 62, 60.5], "b": [62, 63, 64.5, 62.5], "c": [62.1, 62.9, 64.4, 62.8]}
    rows = [dict(arm=a, seed=s, accuracy=v) for a, vals in values.items() for s, v in enumerate(vals)]
    frame = pd.DataFrame(rows)
    out = contrasts(frame, {"b_vs_a": ("b", "a"), "c_vs_b": ("c", "b")})
    assert list(out.index) == ["b_vs_a", "c_vs_b"]
    assert out.loc["b_vs_a", "comparison"] == "b − a"
    for name, (tested, base) in {"b_vs_a": ("b", "a"), "c_vs_b": ("c", "b")}.items():
        alone = compare(frame[frame.arm.isin([tested, base])], base).loc[tested]
        assert out.loc[name, "diff"] == pytest.approx(alone["diff"]) and out.loc[name, "p"] == pytest.approx(alone["p"])
    assert list(out["p_holm"]) == pytest.approx(holm(list(out["p"])))
    assert out.loc["b_vs_a", "verdict"] == "better" and out.loc["c_vs_b", "verdict"] == "n.s."
