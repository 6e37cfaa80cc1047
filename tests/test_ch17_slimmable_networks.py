"""Chapter 17, "One network, many widths": the notebook runs in smoke mode (a slimmable layer by hand against
kdlib's, four arms at four widths, switchable BatchNorm against the widest width's, extraction, ONNX export and
latency, training costs), and its glued values are consistent."""

from __future__ import annotations

from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "17_slimmable_networks.ipynb"


def test_slimmable_networks_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    assert g["slice_gap"] < 1e-5  # the slice written by hand is kdlib's SlimmableLinear
    assert g["export_gap"] < 1e-3  # extracted PyTorch and ONNX models give the slimmable network's logits
    assert g["params_min"] < g["params_max"] < g["params_all"]  # widths are nested; BN per width is extra
    assert 8 < g["flops_ratio"] < 16  # about w^2, less since the stem and classifier shrink on one side
    for w in (25, 50, 75, 100):
        for arm in ("slimmable_in_place_KD", "separate", "slimmable_labels"):
            assert 0 <= g[f"w{w}_{arm}_mean"] <= 100
    for key in ("bn_own_025", "bn_wide_025", "bn_recal_025"):
        assert 0 <= g[key] <= 100
    assert g["ort_min"] > 0 and g["pt_min"] > 0
    assert g["kb_min"] < g["kb_max"]  # the narrow ONNX file is physically smaller
    assert 0 < g["tflops_slim"] < g["tflops_kd"]  # distillation adds the teacher's forward passes
    assert g["seconds_slim"] > 0 and g["chapter_minutes"] > 0
