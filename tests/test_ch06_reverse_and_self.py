"""Chapter 6, "Reverse and self distillation": the notebook runs in smoke mode (reading the committed benchmark
results), its glued numbers are consistent, and the checked cells match the full run."""

from __future__ import annotations

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "06_reverse_and_self.ipynb"
SELF_ARMS = ("Tf_KD_reg", "Tf_KD_self", "born_again_1", "born_again_2", "born_again_ensemble", "defective_teacher")


def test_reverse_and_self_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    assert g["ls_identity_gap"] < 1e-5  # Tf-KD reg at T = 1 is label smoothing
    assert 0 <= g["teacher_conf_test"] <= 100 and 0 <= g["gen0_train_acc"] <= 100
    assert g["bench_seeds"] >= 5
    for arm in SELF_ARMS:
        assert g[f"self_{arm}_verdict"] in ("better", "worse", "n.s."), arm
        assert g[f"self_{arm}_diff"] == pytest.approx(g[f"self_{arm}_mean"] - g["self_alone_mean"], abs=1e-9), arm
    assert g["reversed_diff"] == pytest.approx(g["reversed_mean"] - g["strong_alone_mean"], abs=1e-9)
    assert 0 < g["defective_teacher_acc"] < g["strong_alone_mean"]
    assert g["ch3_uniform_verdict"] in ("better", "worse", "n.s.")
