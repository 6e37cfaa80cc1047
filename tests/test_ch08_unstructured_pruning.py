"""Chapter 8, "Unstructured pruning and lottery tickets": the notebook runs in smoke mode (reading the committed
benchmark results), its glued numbers are consistent, and the checked cells match the full run."""

from __future__ import annotations

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "08_unstructured_pruning.ipynb"


def test_unstructured_pruning_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    # Live part: global pruning hits the target exactly; masks double the file, a sparse encoding shrinks it.
    assert g["report_overall"] == pytest.approx(g["live_sparsity"], abs=1e-6)
    assert 1.9 < g["ratio_masked"] < 2.1 and g["ratio_dense"] == pytest.approx(1.0)
    assert g["bytes_sparse"] < g["bytes_csr"] < g["bytes_dense"] and g["lenet_params"] == 266610
    assert all(g[f"plan_{layer}"] in (0, 25, 50, 75, 90, 95) for layer in ("hidden1", "hidden2", "fc"))
    assert 0 <= g["plan_overall"] <= 95 and 0 <= g["pruned_ft"] <= 100
    # Benchmark part (committed JSON): seeds, protocol and paired differences agree with the means.
    assert g["lot_seeds"] >= 5 and g["han_seeds"] >= 3 and g["curve_seeds"] >= 2
    assert g["lot_sparsity"] == pytest.approx(90) and g["han_keep"] == pytest.approx(8)
    groups = (("lot", ("ticket", "random", "reinit")), ("han", ("dense_more", "pruned", "last_prune")))
    for prefix, arms in groups:
        for arm in arms:
            assert g[f"{prefix}_{arm}_low"] <= g[f"{prefix}_{arm}_diff"] <= g[f"{prefix}_{arm}_high"]
            mean_gap = g[f"{prefix}_{arm}_mean"] - g[f"{prefix}_dense_mean"]
            assert g[f"{prefix}_{arm}_diff"] == pytest.approx(mean_gap, abs=1e-9)
            assert g[f"{prefix}_{arm}_verdict"] in ("better", "worse", "n.s.")
    assert g["lot_tr_diff"] == pytest.approx(g["lot_ticket_mean"] - g["lot_random_mean"], abs=1e-9)
    assert g["han_pm_diff"] == pytest.approx(g["han_pruned_mean"] - g["han_dense_more_mean"], abs=1e-9)
    for arm in ("gos", "los", "git", "kd", "noft"):
        for s in (50, 80, 90, 95):
            assert 0 <= g[f"curve_{arm}_{s}"] <= 100
