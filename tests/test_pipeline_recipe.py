"""Recipe checking: every mistake is refused before anything runs, with a message that names the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from kdlib.pipeline import ORDER, RecipeError, check_recipe, load_recipe, pareto_front, set_value
from kdlib.pipeline.sweep import check_axes, combinations

ROOT = Path(__file__).resolve().parents[1]

RAW = {
    "data": {"name": "digits", "augment": False, "validation": 100},
    "teacher": {"model": "cnn", "kwargs": {"input_size": 8, "channels": [16, 32, 32]}, "epochs": 15, "lr": 1e-2},
    "student": {"model": "cnn", "kwargs": {"input_size": 8, "channels": [8, 16, 16]}},
    "stage": [{"kind": "distill", "epochs": 15, "lr": 1e-2}, {"kind": "prune", "ratio": 0.5}, {"kind": "quantize"},
              {"kind": "export"}, {"kind": "evaluate", "repeats": 3}],
}


def changed(key: str, value: object) -> dict:
    return set_value(RAW, key, value)


def test_defaults_are_filled_in_and_the_repository_recipe_is_valid():
    recipe = check_recipe(RAW)
    assert recipe["run"] == {"seed": 0, "device": "auto"}
    assert recipe["stage"][1]["importance"] == "l1" and recipe["stage"][1]["teacher"] == "previous"
    assert recipe["stage"][2]["mode"] == "ptq" and recipe["stage"][2]["backend"] == "onnxruntime"
    shipped = load_recipe(ROOT / "recipes" / "fashion_mnist.toml")
    assert [s["kind"] for s in shipped["stage"]] == list(ORDER)
    assert shipped["sweep"]["seeds"] == [0, 1, 2]


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("prune.ratoi", 0.5, ["ratoi", "did you mean 'ratio'"]),
        ("data.train_sise", 10, ["train_sise", "train_size"]),
        ("prune.ratio", "half", ["prune", "ratio", "a number", "'half'"]),
        ("distill.epochs", 2.5, ["epochs", "an integer"]),
        ("data.augment", "yes", ["augment", "true or false"]),
        ("student.model", "resnet9000", ["resnet9000", "known:", "cnn", "package.module:factory"]),
        ("distill.method", "kdd", ["'kdd'", "kd", "dkd", "crd"]),
        ("data.name", "imagenet", ["imagenet", "fashion_mnist", "digits"]),
        ("prune.ratio", 1.0, ["[0, 1)"]),
        ("quantize.bits", 4, ["8-bit", "simulated"]),
        ("quantize.backend", "tensorrt", ["tensorrt", "onnxruntime", "pt2e"]),
        ("prune.teacher", "big", ["previous", "teacher", "none"]),
        ("evaluate.batch_sizes", [0, 64], ["batch_sizes", "positive integers"]),
        ("distill.epochs", 0, ["epochs", "at least 1"]),
    ],
)
def test_a_wrong_setting_names_the_key_and_what_is_allowed(key, value, words):
    with pytest.raises(RecipeError) as err:
        check_recipe(changed(key, value))
    for word in words:
        assert word in str(err.value)


def test_stages_in_an_order_that_cannot_work_are_refused_with_the_reason():
    raw = copy.deepcopy(RAW)
    raw["stage"][1], raw["stage"][2] = raw["stage"][2], raw["stage"][1]  # quantize before prune
    with pytest.raises(RecipeError, match="prune first, then quantize"):
        check_recipe(raw)
    raw = copy.deepcopy(RAW)
    raw["stage"].append({"kind": "prune"})
    with pytest.raises(RecipeError, match="two 'prune' stages"):
        check_recipe(raw)
    pt2e = changed("quantize.backend", "pt2e")
    with pytest.raises(RecipeError, match="pt2e"):
        check_recipe(pt2e)


def test_missing_parts_are_named():
    no_teacher = {k: v for k, v in RAW.items() if k != "teacher"}
    with pytest.raises(RecipeError, match=r"method 'kd' needs a \[teacher\] table"):
        check_recipe(no_teacher)
    with pytest.raises(RecipeError, match="checkpoint = .* or epochs"):
        check_recipe(changed("teacher.epochs", None) | {"teacher": {"model": "cnn"}})
    with pytest.raises(RecipeError, match="no stages"):
        check_recipe({**RAW, "stage": []})
    with pytest.raises(RecipeError, match=r"no table \[optimizer\]"):
        check_recipe({**RAW, "optimizer": {}})
    with pytest.raises(RecipeError, match="needs kind"):
        check_recipe({**RAW, "stage": [{"epochs": 2}]})


def test_a_disabled_stage_is_left_out_and_alone_needs_no_teacher():
    recipe = check_recipe(changed("prune.enabled", False))
    assert [s["kind"] for s in recipe["stage"]] == ["distill", "quantize", "export", "evaluate"]
    alone = {k: v for k, v in changed("distill.method", "student").items() if k != "teacher"}
    alone["stage"] = [s for s in alone["stage"] if s["kind"] in ("distill", "export")]
    assert check_recipe(alone)["teacher"] is None


def test_set_value_addresses_tables_and_stages_and_leaves_the_original_alone():
    raw = set_value(RAW, "prune.ratio", 0.25)
    assert raw["stage"][1]["ratio"] == 0.25 and "ratio" in RAW["stage"][1] and RAW["stage"][1]["ratio"] == 0.5
    assert set_value(RAW, "run.seed", 3)["run"]["seed"] == 3
    with pytest.raises(RecipeError, match="names no table or stage"):
        set_value(RAW, "compile.mode", 1)
    with pytest.raises(RecipeError, match="table.key"):
        set_value(RAW, "ratio", 1)


def test_load_recipe_reports_a_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(RecipeError, match="no recipe file"):
        load_recipe(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nname = 1\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


def test_sweep_axes_are_checked_value_by_value_and_combined_per_seed():
    grid = check_axes(RAW, {"seeds": [0, 1], "prune": {"ratio": [0.25, 0.5]}, "quantize.mode": ["ptq", "qat"]})
    assert grid == {"seeds": [0, 1], "axes": {"prune.ratio": [0.25, 0.5], "quantize.mode": ["ptq", "qat"]}}
    combos = combinations(grid["axes"], grid["seeds"])
    assert len(combos) == 8 and combos[0] == {"prune.ratio": 0.25, "quantize.mode": "ptq", "run.seed": 0}
    with pytest.raises(RecipeError, match=r"sweep.prune.ratio = 1.5: .*\[0, 1\)"):
        check_axes(RAW, {"prune.ratio": [0.5, 1.5]})
    with pytest.raises(RecipeError, match="seeds must be a non-empty list"):
        check_axes(RAW, {"seeds": []})
    with pytest.raises(RecipeError, match="non-empty list of values"):
        check_axes(RAW, {"prune.ratio": 0.5})


def test_pareto_front_keeps_exactly_the_points_nothing_beats():
    points = [
        {"name": "a", "cost": 1.0, "test_accuracy": 0.80},
        {"name": "b", "cost": 2.0, "test_accuracy": 0.85},
        {"name": "c", "cost": 3.0, "test_accuracy": 0.84},  # dearer and worse than b
        {"name": "d", "cost": 2.0, "test_accuracy": 0.83},  # as dear as b and worse
        {"name": "e", "cost": 4.0, "test_accuracy": 0.90},
        {"name": "f", "cost": 1.0, "test_accuracy": 0.80},  # a tie with a: neither beats the other
    ]
    front = pareto_front(points, cost="cost")
    assert [p["name"] for p in front] == ["a", "f", "b", "e"]
    for p in points:
        beaten = any(q["cost"] <= p["cost"] and q["test_accuracy"] >= p["test_accuracy"] and q != p
                     and (q["cost"], q["test_accuracy"]) != (p["cost"], p["test_accuracy"]) for q in points)
        assert (p["name"] in {f["name"] for f in front}) == (not beaten)
