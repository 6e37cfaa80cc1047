"""Chapter 13, "Reproducibility: seeds, variance, and what KD does to it": the notebook runs in smoke mode (reading
the committed seed-variance results), its glued values are consistent, and the checked cells match the full run."""

from __future__ import annotations

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "13_reproducibility.ipynb"
VERDICTS = {"std": ("less variable", "more variable", "no detectable difference"),
            "dis": ("fewer disagreements", "more disagreements", "no detectable difference")}


def test_reproducibility_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    # The live demo: the repeated run scores exactly like the first one.
    assert g["demo_acc_a"] == g["demo_acc_b"]
    # Variance decomposition: spreads are positive, inside their intervals; quadrature sum as defined.
    for src in ("init", "order", "both"):
        assert 0 <= g[f"m1d_{src}_std_low"] <= g[f"m1d_{src}_std"] <= g[f"m1d_{src}_std_high"]
    assert g["m1d_additive_std"] == pytest.approx((g["m1d_init_std"] ** 2 + g["m1d_order_std"] ** 2) ** 0.5)
    assert g["m1d_both_std"] == pytest.approx(g["m1d_alone_std"]) and g["mnist1d_seeds"] >= 10
    # Seed planning: intervals shrink with n; pairing formula; 80 % power needs more than resolving.
    assert g["m1d_ci_n3"] > g["m1d_ci_n5"] > g["m1d_ci_n10"] > 0
    assert g["t_n3"] == pytest.approx(4.3027, abs=1e-3)
    for n in (3, 5, 10):
        assert g[f"mde_unpaired80_n{n}"] > g[f"mde_unpaired_n{n}"] > 0
        assert g[f"mde_paired80_n{n}"] > g[f"mde_paired_n{n}"] > 0
    assert -1 <= g["pair_rho"] <= 1
    # The claim: every interval brackets its estimate, verdicts follow the intervals.
    for key in ("m1d_kd", "m1d_transfer", "fashion_kd"):
        assert g[f"{key}_ratio_low"] <= g[f"{key}_ratio"] <= g[f"{key}_ratio_high"]
        assert g[f"{key}_dis_low"] <= g[f"{key}_dis_diff"] <= g[f"{key}_dis_high"]
        assert 0 <= g[f"{key}_levene_p"] <= 1 and 0 <= g[f"{key}_pm_p"] <= 1
        assert g[f"{key}_std_verdict"] in VERDICTS["std"] and g[f"{key}_dis_verdict"] in VERDICTS["dis"]
        assert (g[f"{key}_std_verdict"] == "no detectable difference") == (g[f"{key}_ratio_low"] <= 1 <= g[f"{key}_ratio_high"])
        assert (g[f"{key}_dis_verdict"] == "no detectable difference") == (g[f"{key}_dis_low"] <= 0 <= g[f"{key}_dis_high"])
        assert 0 <= g[f"{key}_fidelity"] <= 100
    assert g["m1d_kd_ratio"] == pytest.approx(g["m1d_kd_std"] / g["m1d_alone_std"])
    assert g["m1d_kd_dis_diff"] == pytest.approx(g["m1d_kd_dis"] - g["m1d_alone_dis"])
    # Two seeds disagree on at least the gap between their accuracies.
    assert g["m1d_alone_dis"] >= g["m1d_alone_acc_gap"] - 1e-9
    # The prose describes the committed results in words; these are the statements it makes.
    assert g["m1d_order_dis"] < g["m1d_init_dis"] and g["m1d_additive_std"] > g["m1d_both_std"]
    for key in ("m1d_kd", "m1d_transfer", "fashion_kd"):
        assert g[f"{key}_ratio"] < 1 and g[f"{key}_std_verdict"] == "no detectable difference"
        assert g[f"{key}_dis_verdict"] == "fewer disagreements"
    assert g["min_var_p"] > 0.05
    assert g["m1d_kd_acc_verdict"] != "higher" and g["fashion_kd_acc_verdict"] != "higher"
    assert g["m1d_transfer_acc_verdict"] == g["m1d_transfer_fid_verdict"] == "higher"
    assert g["m1d_kd_fid_verdict"] != "higher" and g["fashion_kd_fid_verdict"] == "lower"
    assert g["pd_m1d_transfer_n3_verdict"] == "better" and g["pd_fashion_kd_n3_verdict"] == "worse"
