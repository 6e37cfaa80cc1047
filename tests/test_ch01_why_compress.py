"""Chapter 1, "Why compress?": the notebook runs in smoke mode, its glued numbers are consistent with kdlib,
and the cells tagged ``nbval-check-output`` (model printouts, MAC and byte tables) match the committed run."""

from __future__ import annotations

import math

import pytest
import torch
from notebook_support import NOTEBOOKS, run_smoke

from kdlib import models, profile

NOTEBOOK = NOTEBOOKS / "01_why_compress.ipynb"


def _pair():
    teacher = models.create("cnn", num_classes=10)
    student = models.create("mlp", num_classes=10, input_shape=(1, 28, 28), hidden=(64,))
    return teacher, student


def test_why_compress_smoke(tmp_path):
    nb, glued = run_smoke(NOTEBOOK, tmp_path)
    teacher, student = _pair()
    x = torch.zeros(1, 1, 28, 28)

    # Costs that follow from the architecture are exact.
    assert glued["teacher_params"] == profile.count_parameters(teacher)
    assert glued["student_params"] == profile.count_parameters(student)
    assert glued["teacher_params"] > glued["student_params"]
    assert glued["params_ratio"] == pytest.approx(glued["teacher_params"] / glued["student_params"])
    assert glued["teacher_mflops"] * 1e6 == pytest.approx(profile.count_flops(teacher, x))
    assert glued["student_mflops"] * 1e6 == pytest.approx(profile.count_flops(student, x))
    assert glued["flops_ratio"] > glued["params_ratio"] > 1  # convolutions reuse their weights
    assert glued["teacher_kib"] * 1024 == pytest.approx(profile.serialized_size(teacher))
    assert glued["student_kib"] * 1024 == pytest.approx(profile.serialized_size(student))
    assert glued["student_kib"] * 1024 > 4 * glued["student_params"]  # fp32 weights plus format overhead

    # Latencies are measured: positive and finite; at batch 64 the gap is orders of magnitude.
    for key in ("teacher_lat_b1", "student_lat_b1", "teacher_lat_b64", "student_lat_b64"):
        assert 0 < glued[key] < math.inf, key
    assert glued["teacher_lat_b64"] > glued["student_lat_b64"]

    # Accuracies after a tiny smoke training (2,000 images): the MLP learns fast, the BatchNorm CNN after one
    # epoch of 16 steps is only clearly above chance (0.1).
    assert 0.5 < glued["student_acc"] <= 1
    assert 0.15 < glued["teacher_acc"] <= 1
    assert glued["n_seeds"] == 2
    assert 0.5 < glued["student_mean"] <= 1
    assert glued["student_std"] >= 0
    assert glued["gap_mean"] == pytest.approx(glued["teacher_acc"] - glued["student_mean"])

    # The cost figure was drawn.
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "no figure in the executed notebook"
