"""Chapter 15, "Your data, many processes": the notebook runs in smoke mode (an ImageFolder written from
Fashion-MNIST, a teacher cache on disk, the example script on one process and under torchrun), its glued values
are consistent, and the checked cells match the full run."""

from __future__ import annotations

from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "15_your_data_at_scale.ipynb"


def test_your_data_at_scale_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    for key in ("teacher_acc", "alone_acc", "kd_acc", "one_acc", "two_acc"):
        assert 0 <= g[key] <= 100
    assert g["loader0_ratio"] > 0 and g["loaderw_ratio"] > 0 and g["memory_seconds"] > 0
    assert 0 <= g["kl_top5"] <= g["kl_top1"]  # more stored probabilities, closer targets
    assert g["speedup"] > 0 and g["speed_verdict"] and g["workers_verdict"]
