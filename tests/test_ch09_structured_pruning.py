"""Chapter 9, "Structured pruning and real speed": the notebook runs in smoke mode (reading the committed
benchmark results), its glued numbers are consistent, and the checked cells match the full run."""

from __future__ import annotations

import json

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "09_structured_pruning.ipynb"
RESULTS = NOTEBOOKS.parent / "benchmarks" / "results" / "prune_speedup.json"


def test_structured_pruning_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    # Live part: the from-scratch chain pruner agrees with Torch-Pruning; masks keep the FLOPs, channels do not;
    # BatchNorm recalibration by hand agrees with kdlib's.
    assert g["live_chain_maxdiff"] < 1e-5 and g["live_bn_maxdiff"] < 1e-3
    assert 40 < g["live_flops_pct"] < 60 and g["live_mask_speedup"] > 0 and g["live_pruned_speedup"] > 0
    for name in ("live_dense_acc", "live_pruned_acc", "live_recal_acc", "live_kd_acc", "live_ce_acc"):
        assert 0 <= g[name] <= 100
    # Benchmark part: glued numbers are the committed JSON's.
    bench = json.loads(RESULTS.read_text())
    assert bench["smoke"] is False and g["b_seeds"] == bench["protocol"]["seeds"] >= 3
    assert g["b_round_to"] == bench["protocol"]["round_to"] == 8
    rows = bench["pruning"]
    tags = [("lo", rows[0]), ("hi", rows[-1])] + ([("mid", rows[1])] if len(rows) == 3 else [])
    for tag, row in tags:
        assert g[f"b_{tag}_flops_removed"] == pytest.approx(100 * (1 - row["flops_ratio"]))
        assert g[f"b_{tag}_recal_acc"] == pytest.approx(100 * row["accuracy_recalibrated"])
        assert g[f"b_{tag}_widths"] == "/".join(map(str, dict.fromkeys(c for n, c in row["channels_after"].items()
                                                                         if n != "fc")))
        assert g[f"b_{tag}_flops_speedup"] == pytest.approx(1 / row["flops_ratio"])
        assert g[f"b_{tag}_kd_loss"] == pytest.approx(100 * bench["dense"]["accuracy"] - g[f"b_{tag}_kd_mean"])
        assert len(row["kd"]) == len(row["ce"]) == bench["protocol"]["seeds"]
        # The controls: a pruned model against the same extra training and against its widths from scratch.
        ce = 100 * row["ce_mean"]
        assert g[f"c_{tag}_ce_vs_extra"] == pytest.approx(ce - g["c_dense_extra_mean"])
        assert g[f"c_{tag}_ce_vs_scratch"] == pytest.approx(ce - g[f"c_{tag}_scratch_mean"])
    # The prose says KD fine-tuning ended below cross-entropy fine-tuning at every ratio; a new run must agree.
    assert all(row["kd_mean"] < row["ce_mean"] for row in rows)
    assert g["b_kd_spread"] == pytest.approx(100 * (max(r["kd_mean"] for r in rows) - min(r["kd_mean"] for r in rows)))
    assert g["b_unr_speed64"] > 0 and g["b_unr_flops_removed"] < g["b_lo_flops_removed"]
    assert g["b_lo_flops_removed"] >= 50  # the "removes at least half of the FLOPs"
    assert 0.8 < g["b_masked_speed64"] < 1.25  # masks: same speed (noise only)
