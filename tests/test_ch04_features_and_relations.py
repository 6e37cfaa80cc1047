"""Chapter 4, "Beyond logits": the notebook runs in smoke mode, its glued numbers are consistent, and the cells
tagged ``nbval-check-output`` match the committed full run."""

from __future__ import annotations

from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "04_features_and_relations.ipynb"


def test_features_and_relations_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    assert g["train_size"] == 1000 and g["student_epochs"] == 1
    assert 0 <= g["alone_acc"] <= 100 and 0 <= g["teacher_acc"] <= 100  # percent, not fractions
    for key in ("at_gap_student", "at_gap_fitnet", "at_gap_at", "sp_gap_student", "sp_gap_sp", "rkd_gap_student",
                "rkd_gap_rkd"):
        assert g[key] >= 0, key
    assert 0 <= g["n_better"] <= g["n_methods"] == 7  # fitnet, at, sp, rkd, pkt, crd, crd_queue
    assert g["slowest_ratio"] >= 1
    assert g["queue_mb"] <= g["bank_mb"] < g["bank_mb_imagenet"]
