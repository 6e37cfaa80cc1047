"""Chapter 3, "Vanilla knowledge distillation": the notebook runs in smoke mode (its live part tiny, its tables
from the committed benchmark results), its glued numbers are consistent with one another, and the cells tagged
``nbval-check-output`` match the committed full run."""

from __future__ import annotations

import math

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "03_vanilla_kd.ipynb"
VERDICTS = ("better", "worse", "n.s.")
ARMS = ("KD", "function_matching", "KD_fixed_teacher_no_shifts", "KD_inconsistent_teacher", "KD_unregularized_teacher",
        "KD_lr_1e_3", "KD_random_teacher", "KD_uniform_teacher", "first_edition_s_KD", "KD_transfer_set",
        "hard_labels_transfer_set", "alone_no_shifts")


def test_vanilla_kd_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    assert g["demo_budget"] == 2 and g["demo_best_lr"] in (1e-3, 1e-2)  # the live tuning example
    for key in ("reg", "plain"):
        assert 0 <= g[f"teacher_{key}_acc"] <= 100 and g[f"teacher_{key}_std"] > 0
        assert 0.1 <= g[f"teacher_{key}_top_train"] <= 1 and 0.1 <= g[f"teacher_{key}_top_test"] <= 1
    for key in ("alone", "kd", "fm"):
        assert 0 <= g[f"live_{key}"] <= 100
    for key in ("kd", "fm"):
        assert 0 <= g[f"live_{key}_test_agreement"] <= 100 and g[f"live_{key}_test_kl"] >= 0
    # The benchmark tables: paired differences are consistent with the means and their intervals.
    for arm in ARMS:
        assert g[f"arm_{arm}_low"] <= g[f"arm_{arm}_diff"] <= g[f"arm_{arm}_high"], arm
        assert g[f"arm_{arm}_diff"] == pytest.approx(g[f"arm_{arm}_mean"] - g["arm_alone_mean"], abs=1e-9), arm
        assert g[f"arm_{arm}_verdict"] in VERDICTS, arm
    for key in ("kd", "fm"):
        assert g[f"two_{key}_low"] <= g[f"two_{key}_diff"] <= g[f"two_{key}_high"]
        assert g[f"two_{key}_n"] == 2 * g["bench_seeds"]  # two teachers, paired (teacher, seed)
    assert g["patience_cross"] in (1500, 3000, 6000, 12000, 24000, 48000) or math.isnan(g["patience_cross"])
    assert g["short_steps"] < g["bench_steps"] <= g["long_steps"]
    assert g["tune_T20"] <= 100 and g["tune_lr_spread"] >= 0
    for width in (30, 300):
        assert g[f"f{width}_low"] <= g[f"f{width}_diff"] <= g[f"f{width}_high"]
        assert g[f"f{width}_verdict"] in VERDICTS
    assert g["few_verdict"] in VERDICTS and 0 <= g["few_alone"] <= 100
    assert math.isfinite(g["cost_cached_m1d"]) and g["cost_cached_m1d"] > 0
