"""Chapter 18, "Distillation without the data": the notebook runs in smoke mode (the BatchNorm-statistics loss by
hand against kdlib, DeepInversion, the adversarial generator, eight transfer-set arms over two seeds, the cost
table) and its glued values are consistent."""

from __future__ import annotations

from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "18_data_free.ipynb"


def test_data_free_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    assert g["bn_gap"] < 1e-3  # the loss written by hand is kdlib's bn_statistics_loss
    assert g["bn_real"] < g["bn_noise"]  # real images match the stored statistics better than noise
    assert g["inv_bn_last"] < g["inv_bn_first"]  # synthesis lowers the BatchNorm term
    # queries: one teacher pass per image and step plus the final check; the game: 6 batches per round
    assert g["inv_queries"] == g["synthetic_images"] * (g["inversion_steps"] + 1)
    assert g["dfad_queries"] == g["dfad_rounds"] * 128 * 5
    assert g["distil_queries"] == g["student_steps"] * 128
    for arm in ("all_real", "DeepInversion", "Gaussian_noise", "DFAD", "DFAD_class_balance"):
        assert 0 <= g[f"full_{arm}_mean"] <= 100
    assert 0 < g["teacher_accuracy"] <= 100
    assert 1 <= g["seen_dfad_classes"] <= 10 + 1e-6 and 0.1 <= g["seen_di_conf"] <= 1
    assert g["chapter_minutes"] > 0
