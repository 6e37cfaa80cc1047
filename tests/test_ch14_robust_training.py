"""Chapter 14, "Robust and safe training": the notebook runs in smoke mode, its glued numbers are consistent, and
the checked cells (error messages, the bit-identical resume, the refused checkpoints) match the full run."""

from __future__ import annotations

import math

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "14_robust_training.ipynb"


def _finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def test_robust_training_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    steps = g["student_steps"]
    # 2. learning rates: five runs, some of which may raise; the finished ones have sane statistics
    assert 0 <= g["n_nonfinite"] <= 5
    for tag in ("good", "high", "clip"):
        if _finite(g[f"acc_{tag}"]):
            assert 0 <= g[f"acc_{tag}"] <= 100 and 0 <= g[f"dead_{tag}"] <= 100
    if g["loud_run"] != "none":
        assert 1 <= g["loud_step"] <= steps and 1 <= g["loud_weight_step"] <= g["loud_step"]
        assert g["loud_weight"] >= g["init_weight"] > 0
    # rollback skips the batches that hold the corrupted signal, at most one per pass over the data
    assert 1 <= g["rollback_skipped"] <= math.ceil(g["epochs_seen"]) and 0 <= g["rollback_acc"] <= 100
    # 3. temperature: flatter targets as T grows, KD -> half the MSE of centered logits, T² keeps the gradients
    entropies = [g[f"entropy_T{t}"] for t in (1, 4, 20, 100)]
    assert entropies == sorted(entropies) and entropies[-1] <= math.log(10) + 1e-6
    assert g["ratio_T1000"] == pytest.approx(1, abs=0.01) and g["ratio_T20"] < g["ratio_T1000"]
    assert g["grad_T1000"] == pytest.approx(g["grad_T100"], rel=0.05)
    assert g["noT2_shrink"] == pytest.approx(100, rel=0.05)
    assert g["best_T"] in (1, 4, 20, 100) and isinstance(g["sweep_verdict"], str)
    for key in ("alone", "T1", "T4", "T20", "T100"):
        assert 0 <= g[f"sweep_acc_{key}"] <= 100
    # 4. teacher confidence
    assert 0 <= g["teacher_test_acc"] <= 100 and 0 <= g["teacher_train_py"] <= 1
    # 5. resume: from the last checkpoint before the crash
    assert g["resumed_from"] < g["crash_at"] <= g["resumed_from"] + g["checkpoint_every"]
    assert g["resumed_from"] % g["checkpoint_every"] == 0
    # 6. one flipped bit changes exactly one weight
    assert g["flip_changed"] == 1 and _finite(g["flip_weight"]) and g["flip_weight"] > 1e30
