"""Recipes: the TOML file that describes one compression pipeline, read and checked before anything runs.

A recipe has four tables and a list of stages::

    [run]       seed, device
    [data]      name, train_size, test_size, validation, augment, root
    [teacher]   model, kwargs, checkpoint | epochs (+ lr, batch_size, seed)
    [student]   model, kwargs, checkpoint
    [[stage]]   kind = "distill" | "prune" | "quantize" | "export" | "evaluate", that kind's settings, and
                enabled = false to leave a stage out (what a sweep uses to compare with and without it)

and optionally a ``[sweep]`` table (see :mod:`kdlib.pipeline.sweep`). :func:`load_recipe` fills in every default
(:data:`SECTIONS`, :data:`STAGES`), so the recipe a run records is complete. Every mistake is a
:class:`RecipeError` that names the key and what is allowed: unknown keys, wrong types, values out of range,
unknown models, data sets or methods, and stages in an order that cannot work, all before any training.
"""

from __future__ import annotations

import copy
import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdlib import data as kdata
from kdlib import models
from kdlib.methods import METHODS
from kdlib.prune.structured import IMPORTANCES
from kdlib.quantize.runtime import CALIBRATION_METHODS

#: The tables of a recipe: every key, its type and its default (``None``: optional, no default).
SECTIONS: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "run": {"seed": (int, 0), "device": (str, "auto")},
    "data": {"name": (str, "fashion_mnist"), "train_size": (int, None), "test_size": (int, None),
             "validation": (int, 5000), "augment": (bool, True), "root": (str, None)},
    "teacher": {"model": (str, None), "kwargs": (dict, {}), "checkpoint": (str, None), "epochs": (int, None),
                "lr": (float, 2e-3), "batch_size": (int, 128), "seed": (int, 0)},
    "student": {"model": (str, None), "kwargs": (dict, {}), "checkpoint": (str, None)},
}

_FINE_TUNE = {"epochs": (int, 2), "lr": (float, 1e-3), "batch_size": (int, 128), "teacher": (str, "previous"),
              "temperature": (float, 4.0), "alpha": (float, 0.9)}
#: Each stage kind's keys, types and defaults. ``teacher`` of a fine-tune: ``"previous"`` (the model before
#: this stage), ``"teacher"`` (the recipe's teacher) or ``"none"`` (cross-entropy only); ``epochs = 0`` skips
#: the fine-tune (pruning alone; QAT with no training is PTQ).
STAGES: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "distill": {"method": (str, "kd"), "epochs": (int, 10), "lr": (float, 2e-3), "batch_size": (int, 128),
                "optimizer": (str, "adam"), "weight_decay": (float, 0.0), "recipe": (dict, {})},
    "prune": {"ratio": (float, 0.5), "importance": (str, "l1"), "round_to": (int, None), **_FINE_TUNE},
    "quantize": {"mode": (str, "ptq"), "backend": (str, "onnxruntime"), "bits": (int, 8),
                 "calibration": (str, "minmax"), "calibration_batches": (int, 16),
                 **{**_FINE_TUNE, "epochs": (int, 1), "lr": (float, 1e-4)}},
    "export": {},
    "evaluate": {"batch_sizes": (list, [1, 64]), "threads": (list, [1]), "repeats": (int, 21)},
}
#: The order stages must come in: each kind at most once, never before a kind listed earlier.
ORDER = ("distill", "prune", "quantize", "export", "evaluate")
_CHOICES = {
    ("prune", "importance"): IMPORTANCES,
    ("quantize", "mode"): ("ptq", "qat"),
    ("quantize", "backend"): ("onnxruntime", "pt2e"),
    ("quantize", "calibration"): CALIBRATION_METHODS,
    ("distill", "optimizer"): ("adam", "adamw", "sgd"),
}
_WHY_ORDER = {
    ("quantize", "prune"): "an int8 model runs in an inference engine and has no float weights left to prune; "
                           "prune first, then quantize",
    ("quantize", "distill"): "distillation trains float weights; distil first, then quantize (or use mode = "
                             "\"qat\" with teacher = \"teacher\" to distil while quantizing)",
    ("prune", "distill"): "distil the student first, then prune it (prune's fine-tune can distil: teacher = "
                          "\"teacher\")",
    ("export", "prune"): "the exported file is final; prune before exporting",
    ("export", "quantize"): "quantize before exporting: the quantize stage writes the int8 ONNX file export ships",
}


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the key and what is allowed."""


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table",
             list: "a list"}
    return names.get(kind, str(kind)) if isinstance(kind, type) else " or ".join(names[k] for k in kind)


def _check_table(table: object, schema: Mapping[str, tuple[Any, Any]], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise RecipeError(f"[{where}] must be a table of settings, got {type(table).__name__}")
    unknown = sorted(set(table) - set(schema) - ({"kind"} if where.startswith("stage") else set()))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(schema), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"[{where}] has no key {unknown[0]!r}{hint}; its keys are: {', '.join(schema) or 'none'}")
    filled: dict[str, Any] = {}
    for key, (kind, default) in schema.items():
        value = table.get(key, copy.deepcopy(default))
        if value is not None:
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
                raise RecipeError(f"{where}.{key} must be {_type_name(kind)}, got {value!r} ({type(value).__name__})")
        filled[key] = value
    return filled


def _check_choice(where: str, key: str, value: object, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise RecipeError(f"{where}.{key} = {value!r} is not known; choose one of: {', '.join(map(str, allowed))}")


def _check_model(where: str, spec: dict[str, Any]) -> None:
    name = spec["model"]
    if name is None:
        raise RecipeError(f"[{where}] needs model = a kdlib model name ({', '.join(models.available())}) "
                          "or \"package.module:factory\"")
    if ":" not in name and name not in models.available():
        raise RecipeError(f"{where}.model = {name!r} is not a kdlib model; known: {', '.join(models.available())}; "
                          "or give your own as \"package.module:factory\"")


def _check_positive(where: str, spec: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if spec.get(key) is not None and spec[key] < 1:
            raise RecipeError(f"{where}.{key} must be at least 1, got {spec[key]}")


def _check_stage(index: int, table: object, has_teacher: bool) -> dict[str, Any]:
    if not isinstance(table, dict) or "kind" not in table:
        raise RecipeError(f"stage {index + 1} needs kind = one of: {', '.join(ORDER)}")
    kind = table["kind"]
    _check_choice(f"stage {index + 1}", "kind", kind, ORDER)
    where = f"stage {index + 1} ({kind})"
    spec = {"kind": kind, **_check_table(table, {**STAGES[kind], "enabled": (bool, True)}, where)}
    for (k, key), allowed in _CHOICES.items():
        if k == kind:
            _check_choice(where, key, spec[key], allowed)
    if kind == "distill":
        _check_choice(where, "method", spec["method"], list(METHODS))
        if spec["method"] != "student" and not has_teacher:
            raise RecipeError(f"{where}: method {spec['method']!r} needs a [teacher] table")
    if kind in ("prune", "quantize"):
        _check_choice(where, "teacher", spec["teacher"], ("previous", "teacher", "none"))
        if spec["teacher"] == "teacher" and not has_teacher:
            raise RecipeError(f"{where}: teacher = \"teacher\" needs a [teacher] table")
    if kind == "prune" and not 0.0 <= spec["ratio"] < 1.0:
        raise RecipeError(f"{where}: ratio is the fraction of channels removed, in [0, 1); got {spec['ratio']}")
    if kind == "quantize" and spec["bits"] != 8:
        raise RecipeError(f"{where}: bits = {spec['bits']}: ONNX Runtime and PT2E run 8-bit integer kernels; "
                          "lower bit-widths can only be simulated (kdlib.quantize.prepare, chapter 10)")
    if kind == "evaluate":
        for key in ("batch_sizes", "threads"):
            if not spec[key] or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in spec[key]):
                raise RecipeError(f"{where}.{key} must be a non-empty list of positive integers, got {spec[key]!r}")
    _check_positive(where, spec, "batch_size", "repeats", "calibration_batches", "round_to")
    if spec.get("epochs") is not None and spec["epochs"] < (0 if kind in ("prune", "quantize") else 1):
        raise RecipeError(f"{where}.epochs must be at least {0 if kind in ('prune', 'quantize') else 1} "
                          f"(0 skips a fine-tune), got {spec['epochs']}")
    return spec


def _check_order(stages: list[dict[str, Any]]) -> None:
    seen: list[str] = []
    for stage in stages:
        kind = stage["kind"]
        if kind in seen:
            raise RecipeError(f"the recipe has two {kind!r} stages; each kind may appear once")
        later = [k for k in seen if ORDER.index(k) > ORDER.index(kind)]
        if later:
            why = _WHY_ORDER.get((later[0], kind), f"{kind} must come before {later[0]}")
            raise RecipeError(f"stage {kind!r} after {later[0]!r} cannot work: {why}. Stages run in this order: "
                              f"{' → '.join(ORDER)}")
        seen.append(kind)
    quantize = next((s for s in stages if s["kind"] == "quantize"), None)
    if quantize and quantize["backend"] == "pt2e" and "export" in seen:
        raise RecipeError("an export stage after quantize with backend = \"pt2e\" cannot work: a PT2E int8 model "
                          "is saved as its exported program (model_int8.pt2), not as ONNX; use backend = "
                          "\"onnxruntime\" to ship an ONNX file")


def check_recipe(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe ``raw`` (as parsed from TOML) with every default filled in, or a :class:`RecipeError`."""
    if not isinstance(raw, Mapping):
        raise RecipeError(f"a recipe is a table of tables, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS) - {"stage", "sweep"})
    if unknown:
        raise RecipeError(f"the recipe has no table [{unknown[0]}]; its tables are: "
                          f"{', '.join(f'[{s}]' for s in SECTIONS)}, [[stage]] and [sweep]")
    recipe: dict[str, Any] = {}
    for section, schema in SECTIONS.items():
        if section == "teacher" and section not in raw:
            recipe[section] = None
            continue
        recipe[section] = _check_table(raw.get(section, {}), schema, section)
    _check_choice("data", "name", recipe["data"]["name"], kdata.available())
    _check_positive("data", recipe["data"], "train_size", "test_size", "validation")
    _check_model("student", recipe["student"])
    teacher = recipe["teacher"]
    if teacher is not None:
        _check_model("teacher", teacher)
        if teacher["checkpoint"] is None and teacher["epochs"] is None:
            raise RecipeError("[teacher] needs checkpoint = a trained teacher's weights, or epochs = how long to "
                              "train it")
        _check_positive("teacher", teacher, "epochs", "batch_size")
    stages = raw.get("stage")
    if not isinstance(stages, list) or not stages:
        raise RecipeError("the recipe has no stages: add [[stage]] tables with kind = "
                          f"{' | '.join(repr(k) for k in ORDER)}")
    checked = [_check_stage(i, s, teacher is not None) for i, s in enumerate(stages)]
    recipe["stage"] = [s for s in checked if s.pop("enabled")]
    if not recipe["stage"]:
        raise RecipeError("every stage of the recipe is disabled (enabled = false); nothing would run")
    _check_order(recipe["stage"])
    sweep = raw.get("sweep")
    if sweep is not None:
        from kdlib.pipeline.sweep import check_axes

        recipe["sweep"] = check_axes(raw, sweep)
    return recipe


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recipe file as parsed TOML (not yet checked), checkpoint paths made relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no recipe file at {path}; the repository's recipes are in recipes/")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path} is not valid TOML: {err}") from None
    for section in ("teacher", "student"):
        spec = raw.get(section)
        if isinstance(spec, dict) and isinstance(spec.get("checkpoint"), str) and not Path(spec["checkpoint"]).is_absolute():
            spec["checkpoint"] = str((path.parent / spec["checkpoint"]).resolve())
    return raw


def load_recipe(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Read a recipe from a TOML file (:func:`read_toml`) or take a parsed one, and check it (:func:`check_recipe`)."""
    return check_recipe(source if isinstance(source, Mapping) else read_toml(source))


def set_value(recipe: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of the raw ``recipe`` with ``key`` set: ``"section.key"`` or ``"<stage kind>.key"``.

    Raises:
        RecipeError: an address that names no table or stage of the recipe.
    """
    out = copy.deepcopy(dict(recipe))
    head, _, leaf = key.partition(".")
    if not leaf:
        raise RecipeError(f"{key!r} is not a setting's address; write table.key, e.g. prune.ratio or data.train_size")
    if head in SECTIONS:
        if out.get(head) is None:
            out[head] = {}
        out[head][leaf] = value
        return out
    stages = [s for s in out.get("stage", []) if isinstance(s, dict) and s.get("kind") == head]
    if not stages:
        kinds = [s.get("kind") for s in out.get("stage", []) if isinstance(s, dict)]
        raise RecipeError(f"{key!r} names no table or stage of this recipe; tables: {', '.join(SECTIONS)}; "
                          f"stages: {', '.join(map(str, kinds))}")
    stages[0][leaf] = value
    return out
