"""Chapter 7, "Many teachers and peers": the notebook runs in smoke mode (reading the committed benchmark results),
its glued numbers are consistent, and the checked cells match the full run."""

from __future__ import annotations

import math

import pytest
from notebook_support import NOTEBOOKS, nbval_smoke, run_smoke

NOTEBOOK = NOTEBOOKS / "07_many_teachers.ipynb"
PAIRS = ("mnist1d", "fashion")
# Arms compared with the student alone (glued as <pair>_<key>_{mean,std,diff,low,high,verdict}).
VS_ALONE = ("single0", "single1", "single2", "ens_mean", "ens_conf", "weak_mean", "weak_conf",
            "dml_peer0", "dml_peer1", "dml_ens", "early", "takd")
# Seed-paired contrasts between two arms (glued as <pair>_<name>_{diff,low,high,verdict}).
CONTRASTS = ("ens_mean_vs_best_single", "ens_conf_vs_best_single", "ens_conf_vs_mean", "weak_conf_vs_mean",
             "weak_mean_vs_ens_mean", "widest_vs_default", "early_vs_widest", "takd_vs_widest", "takd_vs_assistant_size")


def check_glued(g: dict) -> None:
    """Consistency of the glued values; the interval checks need at least two seeds."""
    several_seeds = g["bench_seeds"] > 1
    # Live part: kdlib agrees with the from-scratch ensemble target and CA-MKD weights.
    assert g["ensemble_scratch_gap"] == pytest.approx(0, abs=1e-5)
    assert g["confidence_scratch_gap"] == pytest.approx(0, abs=1e-5)
    for name in ("live_teacher0_acc", "live_teacher1_acc", "live_teacher2_acc", "live_ensemble_acc", "live_alone_acc",
                 "live_ensemble_mean_acc", "live_ensemble_confidence_acc", "live_dml_peer0_acc", "weak_train_acc",
                 "live_teacher_train_acc",
                 "disagree_train_pct", "disagree_test_pct", "conf_uniform_pct"):
        assert 0 <= g[name] <= 100, name
    assert g["live_best_teacher_acc"] == max(g[f"live_teacher{k}_acc"] for k in range(3))
    for name in ("tv_single_train", "tv_single_test", "tv_single_train_t1", "tv_single_test_t1"):
        assert 0 <= g[name] <= 1, name  # total variation distances
    for name in ("weak_weight_train", "weak_weight_test"):
        assert 0 <= g[name] <= 0.5, name  # CA-MKD weights with three teachers lie in [0, 1/(K-1)]

    # Benchmark part.
    for pair in PAIRS:
        alone = g[f"{pair}_alone_mean"]
        assert 0 <= alone <= 100
        for arm in VS_ALONE:
            mean, diff = g[f"{pair}_{arm}_mean"], g[f"{pair}_{arm}_diff"]
            assert 0 <= mean <= 100, (pair, arm)
            # Every seed has every arm, so the mean paired difference is the difference of the means.
            assert diff == pytest.approx(mean - alone, abs=1e-9), (pair, arm)
            assert g[f"{pair}_{arm}_verdict"] in ("better", "worse", "n.s.")
            if several_seeds:
                low, high = g[f"{pair}_{arm}_low"], g[f"{pair}_{arm}_high"]
                assert low <= diff <= high, (pair, arm)
                verdict = "better" if low > 0 else "worse" if high < 0 else "n.s."
                assert g[f"{pair}_{arm}_verdict"] == verdict, (pair, arm)
        for name in CONTRASTS:
            assert g[f"{pair}_{name}_verdict"] in ("better", "worse", "n.s."), (pair, name)
            if several_seeds:
                assert g[f"{pair}_{name}_low"] <= g[f"{pair}_{name}_diff"] <= g[f"{pair}_{name}_high"], (pair, name)
        assert g[f"{pair}_ens_conf_vs_mean_diff"] == pytest.approx(g[f"{pair}_ens_conf_mean"] - g[f"{pair}_ens_mean_mean"], abs=1e-9)
        assert g[f"{pair}_early_vs_widest_diff"] == pytest.approx(g[f"{pair}_early_mean"] - g[f"{pair}_widest_mean"], abs=1e-9)
        best = g[f"{pair}_best_single_arm"]
        assert best in ("single 0", "single 1", "single 2")
        assert g[f"{pair}_best_single_mean"] == max(g[f"{pair}_single{k}_mean"] for k in range(3))
        assert g[f"{pair}_widest_diff"] == pytest.approx(g[f"{pair}_widest_mean"] - alone, abs=1e-9)
        for name in ("teacher0_acc", "teacher1_acc", "teacher2_acc", "weak_acc", "ensemble_acc", "weak_ensemble_acc",
                     "narrowest_teacher_acc", "widest_teacher_acc", "early_teacher_acc", "takd_assistant_acc"):
            assert 0 <= g[f"{pair}_{name}"] <= 100, (pair, name)
        assert g[f"{pair}_widest_teacher_params"] > g[f"{pair}_narrowest_teacher_params"] > 0
        assert g[f"{pair}_widest_to_student"] == pytest.approx(g[f"{pair}_widest_teacher_params"] / g[f"{pair}_student_params"])
    assert 0 <= g["mnist1d_dml_cnn_peer_acc"] <= 100
    assert not math.isnan(g["mnist1d_dml_cnn_diff"])


def test_many_teachers_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    check_glued(g)
    assert g["bench_seeds"] >= 5


def test_many_teachers_checked_outputs(tmp_path):
    code, output = nbval_smoke(NOTEBOOK, tmp_path)
    assert code == 0, output[-5000:]
