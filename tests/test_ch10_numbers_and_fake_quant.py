"""Chapter 10, "Numbers, scales and fake quantization": the notebook runs in smoke mode, its glued numbers obey
the invariants the chapter states, and the checked cells match the full run."""

from __future__ import annotations

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "10_numbers_and_fake_quant.ipynb"


def test_numbers_and_fake_quant_smoke(tmp_path):
    _, g = run_smoke(NOTEBOOK, tmp_path)
    # Float formats: torch.finfo facts and what they do to the examples.
    assert g["max_float16"] == 65504.0 and g["eps_bfloat16"] == 2.0**-7 and g["eps_float16"] == 2.0**-10
    assert g["bf16_sum"] == 256.0 and g["bf16_100_3"] == 100.5
    assert g["cast_zero"] > 99.0  # a plain cast to integers rounds (almost) every trained weight to 0
    # The affine map: inside the range, the error is at most half a step.
    assert 0.5 < g["err_ratio_max"] <= 1.0 + 1e-5
    # Rounding error: about s^2/12, a factor ~4 per bit at 8 bits; clipping optimum moves inward as bits shrink.
    assert 3.0 < g["w_mse_ratio_7_8"] < 5.0 and 0.7 < g["w_mse_vs_theory_8"] < 1.3
    for t in ("w", "a"):
        assert 0 < g[f"alpha_{t}_2"] <= g[f"alpha_{t}_4"] <= g[f"alpha_{t}_8"] <= 1.0
    # Observers: on the planted outliers min-max is worst at 4 bits; the MSE search over all values is at least
    # as good as min-max (α = 1 is on its grid) and as the same search run on the last batch only.
    for bits in (4, 8):
        assert g[f"obs_mse_all_mse{bits}"] <= 1.0001 * min(g[f"obs_minmax_mse{bits}"], g[f"obs_mse_mse{bits}"])
    assert g["obs_minmax_mse4"] > max(g["obs_percentile_mse4"], g["obs_mse_mse4"])
    # Per-channel never loses on the crafted tensor, which per-tensor partly rounds to zero.
    assert g["crafted_mse_channel"] < g["crafted_mse_tensor"] and g["crafted_zero_rows"] >= 1
    assert g["pc_gain4_min"] >= 1.0 - 1e-6
    # Accuracies are percentages; paired differences are consistent.
    acc_keys = [k for k in g if k.startswith(("ptq_", "km_s0", "affine_s0", "mixed_acc")) and not k.endswith("_std")]
    assert acc_keys and all(0 <= g[k] <= 100 for k in acc_keys)
    assert all(0 <= g[f"km_{b}"] <= 100 for b in (2, 3, 4))
    for name in ("pc_4", "pc_3", "pc_2", "act_4", "act_3", "act_2", "mse_4", "mse_3", "mse_2"):
        assert g[f"paired_{name}_low"] <= g[f"paired_{name}_diff"] <= g[f"paired_{name}_high"]
        assert g[f"paired_{name}_verdict"] in ("better", "worse", "n.s.")
    assert g["ptq_wt_4"] == pytest.approx(g["ptq_wc_4"] - g["paired_pc_4_diff"], abs=1e-6)
    # Sizes: quantized models are far smaller than fp32, and more bits cost more bytes.
    assert g["payload_km_2"] < g["payload_km_3"] < g["payload_km_4"] < g["payload_fp32"] / 7
    assert g["payload_affine_2"] < g["payload_affine_3"] < g["payload_affine_4"] < g["saved_affine_4"] < g["fp32_bytes"]
    assert g["size_mixed"] <= g["size_u8"] and g["size_u3"] < g["size_u4"] < g["size_u8"]
    assert 2.0 <= g["mixed_avg_bits_min"] <= g["mixed_avg_bits"] <= g["mixed_avg_bits_max"] <= 8.0
