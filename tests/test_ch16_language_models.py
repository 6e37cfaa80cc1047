"""Chapter 16, "Distilling language models": the notebook runs in smoke mode (the forward/reverse KL picture,
five student arms on sums and on the Python documentation, tokens per second, the MiniLM sentence encoder
distilled and quantized), and its glued values are consistent."""

from __future__ import annotations

import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "16_language_models.ipynb"


def test_language_models_smoke(tmp_path):
    pytest.importorskip("sentence_transformers", reason="the chapter's pretrained teacher needs sentence-transformers")
    _, g = run_smoke(NOTEBOOK, tmp_path)
    assert g["kl_gap"] < 1e-2  # kdlib's token losses equal the sums written by hand
    assert g["fwd_std"] > g["rev_std"]  # forward KL covers both modes, reverse KL one
    assert 0 <= g["sums_alone_mean"] <= 100 and 0 <= g["sum_teacher_exact"] <= 100
    assert g["size_ratio"] >= 4 and g["encoder_ratio"] >= 4
    assert g["text_alone_mean"] > 1 and g["text_teacher_ppl"] > 1  # a perplexity is at least 1
    assert g["teacher_tps"] > 0 and g["student_tps"] > 0
    for key in ("teacher_mrr", "student_mrr", "tfidf_mrr", "int8_mrr"):
        assert 0 < g[key] <= 1
    assert g["int8_mb"] < g["encoder_mb"] < g["minilm_mb"]
