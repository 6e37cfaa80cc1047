"""Chapter 11, "Real int8: PTQ, QAT, and distillation-aware QAT": the notebook runs in smoke mode (reading the
committed benchmark results), its glued numbers are consistent, and the checked cells match the full run."""

from __future__ import annotations

import json
import statistics

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "11_int8_qat_kd.ipynb"
RESULTS = NOTEBOOKS.parent / "benchmarks" / "results" / "quantize_int8.json"


def test_int8_qat_kd_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    # Live part: the fp32 ONNX file computes PyTorch's logits; the int8 file is smaller; the simulation, put on
    # the engine's output grid, matches the engine to about one output step.
    assert 0 <= g["live_fp32_maxdiff"] <= g["live_parity_atol"] == 1e-4
    assert g["live_int8_kb"] < g["live_fp32_kb"] and g["live_size_ratio"] == pytest.approx(
        g["live_fp32_kb"] / g["live_int8_kb"])
    for name in ("live_fp32_acc", "live_int8_acc", "live_sim_acc", "live_minmax_acc", "live_percentile_acc",
                 "live_entropy_acc", "live_int8_agree", "live_entropy_agree", "live_sim_agree", "live_grid_agree", "live_w4a8_agree"):
        assert 0 <= g[name] <= 100, name
    assert g["live_minmax_acc"] == pytest.approx(g["live_int8_acc"])
    # kdlib's entropy calibration really clips (ONNX Runtime's quantize_static alone would return min-max).
    assert g["live_entropy_shrink"] > 0
    assert g["live_entropy_delta"] == pytest.approx(g["live_entropy_acc"] - g["live_minmax_acc"])
    assert g["live_logit_step"] > 0 and g["live_grid_maxdiff"] <= 2 * g["live_logit_step"] + 1e-5
    assert g["live_logit_lo"] < 0 < g["live_logit_hi"]
    assert g["live_w4a8_kb"] < g["live_int8_kb"]
    assert g["live_int8_word"] == ("faster" if g["live_int8_vs_onnx_64"] > 1 else "slower")
    for name in ("live_int8_vs_torch_64", "live_int8_vs_onnx_64", "live_onnx_vs_torch_64", "live_w4a8_vs_fp32"):
        assert g[name] > 0, name

    # Benchmark part: glued numbers are the committed JSON's, and verdicts follow from them.
    bench = json.loads(RESULTS.read_text())
    post, qat, targets = bench["post_training"], bench["qat"], bench["targets"]
    assert bench["smoke"] is False and g["b_seeds"] == bench["protocol"]["seeds"] >= 3
    assert g["b_fp32_acc"] == pytest.approx(100 * post["fp32"]["accuracy"])
    for method in ("minmax", "entropy", "percentile"):
        assert g[f"b_{method}_acc"] == pytest.approx(100 * post[f"onnx_int8_{method}"]["accuracy"])
        assert 0 <= g[f"b_{method}_acc"] <= 100
    assert g["b_drop"] == pytest.approx(g["b_fp32_acc"] - g["b_minmax_acc"])
    assert g["b_size_ratio"] == pytest.approx(post["fp32"]["state_dict_bytes"] / post["onnx_int8_minmax"]["onnx_bytes"])
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    assert g["b_size_verdict"] == met(g["b_size_ratio"] >= 3.5 and g["b_size_ratio_onnx"] >= 3.5)
    assert g["b_speed_verdict"] == met(g["b_speedup"] >= 2.0)
    assert g["b_int8_accuracy_verdict"] == met(g["b_drop"] <= 0.5)
    assert g["b_w4_accuracy_verdict"] == met(g["b_w4_drop"] <= 1.0)
    assert g["b_w4_drop"] == pytest.approx(g["b_fp32_acc"] - g["b_w4a8_kd_mean"])
    verdicts = []
    for key in ("w8a8", "w4a8", "w4a4"):
        row = qat[key]
        assert 0 <= g[f"b_{key}_ptq"] <= 100
        for arm, tag in (("qat_ce", "ce"), ("qat_kd", "kd")):
            values = row[arm]["values"]
            assert len(values) == bench["protocol"]["seeds"]
            assert g[f"b_{key}_{tag}_mean"] == pytest.approx(100 * statistics.fmean(values))
            assert g[f"b_{key}_{tag}_std"] == pytest.approx(100 * statistics.stdev(values))
        diffs = [a - b for a, b in zip(row["qat_kd"]["values"], row["qat_ce"]["values"])]
        assert g[f"b_{key}_diff"] == pytest.approx(100 * statistics.fmean(diffs))
        assert g[f"b_{key}_low"] <= g[f"b_{key}_diff"] <= g[f"b_{key}_high"]
        expected = "better" if g[f"b_{key}_low"] > 0 else "worse" if g[f"b_{key}_high"] < 0 else "n.s."
        assert g[f"b_{key}_verdict"] == expected
        verdicts.append(expected)
    assert g["b_n_kd_better"] == verdicts.count("better") and g["b_n_kd_worse"] == verdicts.count("worse")
    assert g["b_control_mean"] == pytest.approx(100 * statistics.fmean(qat["fp32_same_budget_kd"]["values"]))
    assert g["b_w4_kb"] < g["b_w8_kb"] < g["b_fp32_kb"]
