"""Chapter 3, "Vanilla knowledge distillation": the notebook runs in smoke mode, its glued numbers are
consistent with one another, and the cells marked ``# NBVAL_CHECK_OUTPUT`` match the committed full run."""

from __future__ import annotations

import math

import pytest
from notebook_support import NOTEBOOKS, nbval_smoke, run_smoke

NOTEBOOK = NOTEBOOKS / "03_vanilla_kd.ipynb"


def test_vanilla_kd_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    assert g["n_seeds"] == 2 and g["transfer_size"] == 1000
    for prefix in ("m1d_alone", "m1d_kd", "m1d_transfer", "m1d_pseudo", "f_alone", "f_kd"):
        assert 0 <= g[f"{prefix}_mean"] <= 100, prefix  # percent, not a fraction
        assert g[f"{prefix}_std"] >= 0, prefix
        assert 0 <= g[f"{prefix}_agree"] <= 100, prefix
    # differences and their intervals are consistent with the means
    assert g["m1d_kd_diff"] == pytest.approx(g["m1d_kd_mean"] - g["m1d_alone_mean"])
    assert g["f_kd_diff"] == pytest.approx(g["f_kd_mean"] - g["f_alone_mean"])
    for key in ("m1d_kd", "m1d_transfer", "m1d_pseudo", "f_kd"):
        assert g[f"{key}_low"] <= g[f"{key}_diff"] <= g[f"{key}_high"], key
        assert g[f"{key}_verdict"] in (
            "better than the student alone", "worse than the student alone", "indistinguishable from the student alone"
        ), key
    # a top-1 probability over 10 classes lies in [0.1, 1]
    assert 0.1 <= g["m1d_top_train"] <= 1 and 0.1 <= g["m1d_top_test"] <= 1
    assert g["sweep_worst_acc"] <= g["sweep_best_acc"]
    assert g["sweep_best_T"] in (1, 4) and g["sweep_best_alpha"] in (0.5, 1.0)
    assert math.isfinite(g["bench_cached_ratio_m1d"]) and g["bench_cached_ratio_m1d"] > 0
    assert g["temperature"] == 4.0 and g["alpha"] == 0.9


def test_vanilla_kd_checked_outputs(tmp_path):
    code, output = nbval_smoke(NOTEBOOK, tmp_path)
    assert code == 0, output[-5000:]
