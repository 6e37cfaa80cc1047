"""Chapter 2, soft targets and temperature: the notebook runs in smoke mode, its glued numbers hold, its checked cells match.

The smoke run trains the teacher on 5,000 images for one epoch, so only properties that hold for any
reasonably trained teacher are asserted; the exact values of the full run are in the committed notebook.
"""

from __future__ import annotations

import math
import re

import nbformat
import pytest
from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "02_soft_targets.ipynb"


@pytest.fixture(scope="module")
def glued(tmp_path_factory):
    _, values = run_smoke(NOTEBOOK, tmp_path_factory.mktemp("ch02"))
    return values


def test_prose_only_pastes_glued_values(glued):
    # every {glue:text}`name` or `name:fmt` in the markdown was glued by the run
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    names = {m.split(":")[0] for m in re.findall(r"\{glue:text\}`([^`]+)`", text)}
    assert names, "the chapter pastes no glued values"
    assert not names - set(glued), f"pasted but never glued: {sorted(names - set(glued))}"


def test_teacher_learns(glued):
    assert glued["teacher_accuracy"] > 0.6


def test_entropy_grows_with_temperature(glued):
    assert glued["entropy_increasing"] is True
    by_t = glued["entropy_by_T"]
    assert all(a < b for a, b in zip(by_t, by_t[1:]))
    assert 0 < glued["entropy_T1"] < glued["entropy_T4"] < glued["entropy_T20"] <= glued["entropy_max"] + 1e-6
    assert glued["entropy_max"] == pytest.approx(math.log(10))
    assert glued["top_prob_T1"] > glued["top_prob_T4"] > 0.1


def test_example_prediction_flattens(glued):
    assert glued["example_top_T1"] > glued["example_top_T4"] > glued["example_top_Tmax"] >= 0.1


def test_similarity_matrix_is_sane(glued):
    assert 0 < glued["least_similar_soft"] <= glued["pair1_ij"] < 100
    assert " ↔ " in glued["pair1"] and glued["pair1"] != glued["pair2"]
    assert -1.0 <= glued["rho_soft_conf"] <= 1.0
    assert 0 <= glued["top5_overlap"] <= 5
    assert 0 <= glued["n_never_confused"] <= glued["n_offdiag"] <= 90


def test_gradient_matches_formula(glued):
    assert glued["grad_check_max_diff"] < 1e-5


def test_temperature_scaling_of_the_gradient(glued):
    # with T^2 the gradient tends to the logit-matching limit; without it, it decays like 1/T^2
    assert glued["with_T2_ratio_20_4"] == pytest.approx(1.0, abs=0.2)
    assert glued["noT2_slope"] == pytest.approx(-2.0, abs=0.1)
    assert glued["lm_dist_T200"] < glued["lm_dist_T20"] < glued["lm_dist_T4"]
    assert glued["lm_dist_T200"] < 0.05
    assert glued["lm_dist_slope"] == pytest.approx(-1.0, abs=0.2)


def test_classic_bugs_differ_as_described(glued):
    assert glued["bug_noT2_ratio"] == pytest.approx(1 / 16, rel=1e-4)  # T = 4
    assert glued["bug_mean_ratio"] == pytest.approx(1 / 10, rel=1e-4)  # C = 10
    assert glued["bug_swapped_cos"] < 1 - 1e-4
    assert abs(glued["bug_softmax_loss_match"]) > 1e-3 and glued["bug_softmax_grad_match"] > 1e-5
    assert glued["bug_max_grad_match_others"] < 1e-6
