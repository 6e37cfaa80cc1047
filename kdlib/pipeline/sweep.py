"""A grid of pipeline settings over seeds, and the accuracy–latency and accuracy–size Pareto fronts.

The grid is the recipe's ``[sweep]`` table (or ``axes=``): ``seeds`` and, for each setting to vary, its
address and values, e.g. ``"prune.ratio" = [0.25, 0.5, 0.75]`` or ``"quantize.enabled" = [true, false]``.
Every combination runs as its own pipeline in its own folder; stages that two combinations share (the same
teacher, the same distilled student) run once and are copied (hard links), so a sweep costs the sum of its
distinct stages, not of its runs.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlib.checkpoint import write_json
from kdlib.pipeline.recipe import RecipeError, check_recipe, read_toml, set_value


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_axes(raw: Mapping[str, Any], table: Mapping[str, Any]) -> dict[str, Any]:
    """``{"seeds": [...], "axes": {address: values}}`` from a ``[sweep]`` table; every value is checked by
    building the recipe it gives (:class:`RecipeError` names the address and the value)."""
    flat = _flatten(table)
    seeds = flat.pop("seeds", [raw.get("run", {}).get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise RecipeError(f"sweep.seeds must be a non-empty list of integers, got {seeds!r}")
    base = {k: v for k, v in raw.items() if k != "sweep"}
    for key, values in flat.items():
        if not isinstance(values, list) or not values:
            raise RecipeError(f"sweep.{key} must be a non-empty list of values to try, got {values!r}")
        for value in values:
            try:
                check_recipe(set_value(base, key, value))
            except RecipeError as err:
                raise RecipeError(f"sweep.{key} = {value!r}: {err}") from None
    return {"seeds": seeds, "axes": flat}


def combinations(axes: Mapping[str, Sequence[Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, for each seed (seed varies fastest)."""
    keys = list(axes)
    return [{**dict(zip(keys, values)), "run.seed": seed}
            for values in itertools.product(*(axes[k] for k in keys)) for seed in seeds]


def _slug(combo: Mapping[str, Any]) -> str:
    return "__".join(f"{k}={json.dumps(v)}" for k, v in combo.items()).replace('"', "").replace("/", "_")


def pareto_front(points: Sequence[Mapping[str, Any]], *, cost: str, value: str = "test_accuracy") -> list[dict[str, Any]]:
    """The points no other point beats: none has a cost as low and a value as high, one of them strictly.

    Returned in increasing cost.
    """
    front = [p for p in points if not any(
        q[cost] <= p[cost] and q[value] >= p[value] and (q[cost] < p[cost] or q[value] > p[value]) for q in points)]
    return [dict(p) for p in sorted(front, key=lambda p: p[cost])]


def finished_stages(folder: Path) -> dict[str, Path]:
    """Fingerprint → folder of every finished stage under ``folder``."""
    return {json.loads(record.read_text())["fingerprint"]: record.parent
            for record in folder.rglob("stage.json") if not record.parent.name.endswith(".partial")}


def _final_row(report: Mapping[str, Any]) -> dict[str, Any]:
    """The last model's accuracy, and (with an evaluate stage) its size and latency."""
    if report.get("models"):
        return _costs(report["models"][-1])
    last = [s for s in report["stages"] if "test_accuracy" in s][-1]
    return {k: last[k] for k in ("label", "val_accuracy", "test_accuracy")}


def _costs(model: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: model[k] for k in ("label", "val_accuracy", "test_accuracy", "disk_bytes")}
    row.update({f"latency_{k}": v["median_ms"] for k, v in model.get("latency", {}).items()})
    return row


def summarize(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One point per setting: mean and standard deviation over seeds of the accuracies, median of the costs."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(json.dumps(row[k]) for k in keys), []).append(row)
    points = []
    for members in groups.values():
        point: dict[str, Any] = {k: members[0][k] for k in (*keys, "label")}
        point["seeds"] = len(members)
        for key in members[0]:
            values = [m[key] for m in members]
            if key.endswith("accuracy"):
                point[key] = statistics.fmean(values)
                point[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            elif key == "disk_bytes" or key.startswith("latency_"):
                point[key] = statistics.median(values)
        points.append(point)
    return points


def sweep(
    recipe: str | os.PathLike[str] | Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    axes: Mapping[str, Sequence[Any]] | None = None,
    seeds: Sequence[int] | None = None,
    smoke: bool = False,
    restart: bool = False,
    shared: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every combination of ``axes`` (default: the recipe's ``[sweep]`` table) for each seed; write and
    return ``sweep.json`` (the runs, one point per setting, the Pareto fronts, the teacher and the student)
    and the Pareto plots.

    Finished stages anywhere under ``shared`` (default: ``out``) with the fingerprint a run needs are copied
    instead of re-run, so several sweeps (or an interrupted one) share their common stages.
    """
    from kdlib.pipeline.runner import run

    raw = dict(recipe) if isinstance(recipe, Mapping) else read_toml(recipe)
    table = dict(axes) if axes is not None else dict(raw.get("sweep") or {})
    if seeds is not None:
        table["seeds"] = list(seeds)
    grid = check_axes(raw, table)
    base = {k: v for k, v in raw.items() if k != "sweep"}
    out = Path(out)
    rows, references = [], {}
    reuse = finished_stages(Path(shared or out))
    combos = combinations(grid["axes"], grid["seeds"])
    for i, combo in enumerate(combos, 1):
        settings = base
        for key, value in combo.items():
            settings = set_value(settings, key, value)
        folder = out / _slug(combo)
        log(f"sweep {i}/{len(combos)}: {folder.name}")
        report = run(settings, folder, smoke=smoke, restart=restart, reuse=reuse, log=lambda m: log(f"  {m}"))
        reuse.update(finished_stages(folder))
        rows.append({**combo, "folder": folder.name, **_final_row(report)})
        for model in report.get("models", []):
            if model["label"] == "teacher" or model["label"].startswith("student"):
                references.setdefault(model["label"], {})[combo["run.seed"]] = _costs(model)  # one per seed
    keys = list(grid["axes"])
    points = summarize(rows, keys)
    marks = {label: summarize(list(by_seed.values()), [])[0] for label, by_seed in references.items()}
    cost_keys = [k for k in points[0] if k.startswith("latency_") or k == "disk_bytes"]
    result = {"grid": grid, "runs": rows, "points": points, "references": marks,
              "fronts": {k: pareto_front(points, cost=k) for k in cost_keys}}
    write_json(out / "sweep.json", result)
    _plots(out, result)
    return result


def _plots(out: Path, result: Mapping[str, Any]) -> None:
    from matplotlib.figure import Figure  # no pyplot: saving must not change the backend of a notebook

    from kdlib.plot import pareto

    for key, front in result["fronts"].items():
        fig = Figure(figsize=(6, 4), layout="constrained")
        label = "file size (bytes)" if key == "disk_bytes" else f"CPU latency, {key.removeprefix('latency_')} (ms)"
        pareto(result["points"], front, cost=key, marks=result["references"], xlabel=label, ax=fig.subplots())
        fig.savefig(out / f"pareto_{key}.png", dpi=100)
