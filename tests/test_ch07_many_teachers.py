"""Chapter 7, "Many teachers and peers": the notebook runs in smoke mode (reading the committed benchmark results),
its glued numbers are consistent, and the checked cells match the full run."""

from __future__ import annotations

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "07_many_teachers.ipynb"
# Arms compared with the student alone (glued as <group>_<arm>_{mean,diff,low,high,verdict}).
VS_ALONE = {"multi": ("single_0", "single_1", "single_2", "ensemble_mean", "ensemble_confidence",
                      "2_good_1_weak_mean", "2_good_1_weak_confidence"),
            "dml": ("DML_peer_0", "DML_peer_1", "DML_ensemble", "DML_with_a_CNN_peer"),
            "cap": ("teacher_8_channels", "teacher_128_channels", "early_stopped_widest", "TAKD")}
# Seed-paired contrasts between two arms (glued as <name>_{diff,low,high,verdict}).
CONTRASTS = ("ens_mean_vs_best_single", "ens_conf_vs_best_single", "ens_conf_vs_mean", "weak_conf_vs_mean",
             "weak_mean_vs_ens_mean", "widest_vs_default", "early_vs_widest", "takd_vs_widest", "takd_vs_assistant_size")


def check_glued(g: dict) -> None:
    """Consistency of the glued values."""
    # Live part: kdlib agrees with the from-scratch ensemble target and CA-MKD weights.
    assert g["ensemble_scratch_gap"] == pytest.approx(0, abs=1e-5)
    assert g["confidence_scratch_gap"] == pytest.approx(0, abs=1e-5)
    for name in ("live_teacher0_acc", "live_teacher1_acc", "live_teacher2_acc", "live_ensemble_acc", "live_alone_acc",
                 "live_ensemble_mean_acc", "live_ensemble_confidence_acc", "live_dml_peer0_acc", "weak_train_acc",
                 "live_teacher_train_acc", "disagree_train_pct", "disagree_test_pct", "conf_uniform_pct"):
        assert 0 <= g[name] <= 100, name
    assert g["live_best_teacher_acc"] == max(g[f"live_teacher{k}_acc"] for k in range(3))
    for name in ("tv_single_train", "tv_single_test", "tv_single_train_t1", "tv_single_test_t1"):
        assert 0 <= g[name] <= 1, name  # total variation distances
    for name in ("weak_weight_train", "weak_weight_test"):
        assert 0 <= g[name] <= 0.5, name  # CA-MKD weights with three teachers lie in [0, 1/(K-1)]
    # Benchmark part.
    for group, arms in VS_ALONE.items():
        alone = g[f"{group}_alone_mean"]
        for arm in arms:
            key = f"{group}_{arm}"
            assert g[f"{key}_low"] <= g[f"{key}_diff"] <= g[f"{key}_high"], key
            assert g[f"{key}_diff"] == pytest.approx(g[f"{key}_mean"] - alone, abs=1e-9), key
            assert g[f"{key}_verdict"] in ("better", "worse", "n.s."), key
    for name in CONTRASTS:
        assert g[f"{name}_low"] <= g[f"{name}_diff"] <= g[f"{name}_high"], name
        assert g[f"{name}_verdict"] in ("better", "worse", "n.s."), name
    assert g["best_single_arm"] in ("single 0", "single 1", "single 2")
    for name in ("teacher0_acc", "teacher1_acc", "teacher2_acc", "weak_acc", "ensemble_acc", "weak_ensemble_acc",
                 "width8_teacher_acc", "width128_teacher_acc", "early_teacher_acc", "takd_assistant_acc",
                 "dml_cnn_peer_acc"):
        assert 0 <= g[name] <= 100, name
    assert g["width128_teacher_params"] > g["width8_teacher_params"] >= g["narrow_student_params"] > 0


def test_many_teachers_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    check_glued(g)
    assert g["bench_seeds"] >= 5
