"""Chapter 5, "Modern logit distillation and a head-to-head benchmark": the notebook runs in smoke mode (reading
the committed benchmark results), its glued numbers are consistent, and the checked cells match the full run."""

from __future__ import annotations

import pytest
from notebook_support import NOTEBOOKS, nbval_smoke, run_smoke

NOTEBOOK = NOTEBOOKS / "05_modern_logit_kd.ipynb"


def test_modern_logit_kd_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    assert 0 <= g["nckd_weight_train"] <= 1 and 0 <= g["nckd_weight_test"] <= 1
    assert g["kd_scaled"] > 0 and g["kd_ls_scaled"] == pytest.approx(0, abs=1e-5)
    for pair in ("mnist1d", "fashion"):
        assert g[f"{pair}_kd_low"] <= g[f"{pair}_kd_diff"] <= g[f"{pair}_kd_high"]
        assert g[f"{pair}_kd_diff"] == pytest.approx(g[f"{pair}_kd_mean"] - g[f"{pair}_student_mean"], abs=1e-9)
        counts = sum(g[f"{pair}_n_{v}"] for v in ("better", "worse", "ns"))
        assert counts == (11 if pair == "mnist1d" else 12)  # every method but the baseline; no AT for an MLP
    assert g["thr_fashion_kd"] > 0 and g["zoo_seeds"] >= 5


def test_modern_logit_kd_checked_outputs(tmp_path):
    code, output = nbval_smoke(NOTEBOOK, tmp_path)
    assert code == 0, output[-5000:]
