"""Chapter 12, "The whole pipeline": the notebook runs the pipeline through the command line in smoke mode (and
reads the committed benchmark results), its glued numbers are consistent, and the checked cells match the full run."""

from __future__ import annotations

import json

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "12_compression_pipeline.ipynb"
RESULTS = NOTEBOOKS.parent / "benchmarks" / "results" / "pipeline_sweep.json"


def test_compression_pipeline_smoke(tmp_path):
    nb, g = run_smoke(NOTEBOOK, tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    # The command ran every stage, then resumed without recomputing any of them.
    assert "[05_evaluate] done" in text and text.count("finished earlier, kept") == 6
    assert g["live_size_ratio"] > 1 and g["live_speed_b64"] > 0
    # The benchmark's numbers: the recipe's final model against its student, as the prose says.
    bench = json.loads(RESULTS.read_text())
    assert not bench["smoke"] and len(bench["seeds"]) >= 3
    assert g["b_drop"] == pytest.approx(g["b_student_acc"] - g["b_int8_acc"])
    assert g["target_met"] == ("meets" if g["b_size_ratio"] >= 6 and g["b_speed_b64"] >= 6 and g["b_drop"] <= 1
                               else "misses")
    assert g["b_teacher_size_ratio"] > g["b_size_ratio"] > 1
    assert g["rec_raw"] <= g["rec_ce"] + 1e-9 or g["rec_raw"] <= g["rec_kd"] + 1e-9
    for key in ("rec_pruning_KD_instead_of_CE", "rec_quantization_KD_instead_of_CE", "ord_order"):
        assert g[f"{key}_low"] <= g[f"{key}_diff"] <= g[f"{key}_high"]
        assert g[f"{key}_verdict"] in ("better", "worse", "n.s.")
    assert 1 <= g["sw_front_size"] <= g["sw_settings"]
    # The statements the prose makes about the committed results.
    assert g["target_b64"] == ("reaches" if g["b_speed_b64"] >= 6 else "falls short of")
    assert g["rt_met"] == ("meets" if g["rt_speed_b64"] >= 6 and g["rt_size_ratio"] >= 6 and g["rt_drop"] <= 1
                           else "misses")
    assert g["rt_ms_plain"] >= g["rt_ms_25"] and g["rt_ms_60"] > g["rt_ms_rounded"]
    assert g["rt_drop_max"] >= g["rt_drop"] and "ratio 0.4 " not in g["sw_front"] + " "
    assert g["rec_cost"] == pytest.approx(g["rec_control"] - g["rec_kd"]) and g["ord_order_verdict"] == "better"
    assert g["rec_raw"] < 25 and g["rec_student"] - g["rec_kd"] < 1 and g["rec_student"] - g["rec_ce"] < 1
    assert abs(g["rec_ptq"] - g["rec_kd"]) < 0.5 and abs(g["rec_qat_kd"] - g["rec_kd"]) < 0.5
    assert g["rec_pruning_KD_instead_of_CE_verdict"] != "better"
    assert g["rec_quantization_KD_instead_of_CE_verdict"] != "better"
    assert g["rec_student"] < g["rec_alone"]
    assert g["ord_order_diff"] > 0 and g["sw_most_pruned_speed"] > g["sw_int8_only_speed"] > 1
