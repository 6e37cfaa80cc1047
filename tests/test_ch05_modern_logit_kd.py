"""Chapter 5, "Modern logit distillation and a head-to-head benchmark": the notebook runs in smoke mode (reading
the committed benchmark results), its glued numbers are consistent, and the checked cells match the full run."""

from __future__ import annotations

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "05_modern_logit_kd.ipynb"
LONG_METHODS = ("kd", "mse", "dkd", "dist", "kd_ls", "dkd_ls", "fitnet", "at", "sp", "pkt")


def test_modern_logit_kd_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    assert 0 <= g["nckd_weight_train"] <= 1 and 0 <= g["nckd_weight_test"] <= 1
    assert g["kd_scaled"] > 0 and g["kd_ls_scaled"] == pytest.approx(0, abs=1e-5)
    assert g["dkd_amplification"] >= 8  # 8 / (1 - p_y) with 1 - p_y <= 1
    for m in LONG_METHODS:
        assert g[f"zoo_{m}_low"] <= g[f"zoo_{m}_diff"] <= g[f"zoo_{m}_high"], m
        assert g[f"zoo_{m}_diff"] == pytest.approx(g[f"zoo_{m}_mean"] - g["zoo_student_mean"], abs=1e-9), m
        assert g[f"zoo_{m}_verdict"] in ("better", "worse", "n.s."), m
    assert g["zoo_n_better"] + g["zoo_n_worse"] + g["zoo_n_ns"] == g["zoo_n_long"] == len(LONG_METHODS)
    assert g["zoo_tune_steps"] < g["zoo_steps"] and g["zoo_student_params"] < g["zoo_teacher_params"]
    for m in ("rkd", "crd"):
        assert g[f"zoo_{m}_short_verdict"] in ("better", "worse", "n.s.")
    assert 0 <= g["zoo_n_low_edge"] <= g["zoo_n_tuned"]
    assert g["thr_fashion_kd"] > 0
