"""Run a recipe stage by stage into an output folder, resuming after the last finished stage.

Layout of the output folder::

    recipe.json           the recipe as run, every default filled in
    run.json              the run record: versions, machine, seed, device, the recipe, seconds per stage
    00_teacher/           (when the teacher is trained) model.pt, stage.json
    01_distill/ ...       one folder per stage: its model file(s) and stage.json
    NN_evaluate/          stage.json with every model's accuracy, size and latency
    report.json, report.md, accuracy_latency.png, accuracy_size.png

A stage works in ``NN_kind.partial/`` and the folder is renamed to ``NN_kind/`` only when its ``stage.json`` is
written, so a killed run loses at most the stage in progress (and its training resumes from the checkpoint in
the partial folder). Each ``stage.json`` holds a fingerprint of everything the stage depends on (data, models,
seed, its own and earlier stages' settings); a folder whose fingerprint differs from the recipe's is never
overwritten unless ``restart=True``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from kdlib import data as kdata
from kdlib.checkpoint import write_json
from kdlib.device import resolve
from kdlib.pipeline import measure, stages
from kdlib.pipeline.recipe import RecipeError, load_recipe
from kdlib.pipeline.report import write_report
from kdlib.protocol import holdout
from kdlib.repro import run_record, save_run_record
from kdlib.train import check_model_fits_data

#: What ``smoke=True`` shrinks: data sizes and budgets, so that any recipe runs end to end in seconds.
SMOKE = {"train_size": 600, "test_size": 200, "validation": 100, "epochs": 1, "calibration_batches": 2, "repeats": 3}


class OutputConflict(RecipeError):
    """The output folder holds finished stages of a different recipe."""


@dataclass(frozen=True)
class Step:
    index: int
    kind: str
    spec: dict[str, Any]
    fingerprint: str

    @property
    def name(self) -> str:
        return f"{self.index:02d}_{self.kind}"


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shrink(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` at smoke scale (:data:`SMOKE`): tiny data and one epoch per training."""
    out = copy.deepcopy(recipe)
    data = out["data"]
    for key in ("train_size", "test_size", "validation"):
        data[key] = min(data[key] or SMOKE[key], SMOKE[key])
    if out["teacher"] and out["teacher"]["epochs"]:
        out["teacher"]["epochs"] = 1
    for spec in out["stage"]:
        for key in ("epochs", "calibration_batches", "repeats"):
            if spec.get(key):
                spec[key] = min(spec[key], SMOKE[key])
    return out


def plan(recipe: dict[str, Any]) -> list[Step]:
    """The steps of a checked recipe, each with the fingerprint of everything it depends on."""
    base = (recipe["data"], recipe["teacher"])
    steps = []
    if recipe["teacher"] and recipe["teacher"]["checkpoint"] is None:
        steps.append(Step(0, "teacher", recipe["teacher"], _digest(*base)))
    for i, spec in enumerate(recipe["stage"]):
        key = _digest(*base, recipe["student"], recipe["run"]["seed"], recipe["stage"][: i + 1])
        steps.append(Step(i + 1, spec["kind"], spec, key))
    return steps


def _finished(folder: Path) -> dict[str, Any] | None:
    path = folder / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_output(out: Path, steps: list[Step], *, restart: bool = False) -> None:
    """Refuse (or, with ``restart``, remove) stage folders in ``out`` that another recipe wrote."""
    for step in steps:
        for folder in (out / step.name, out / f"{step.name}.partial"):
            record = _finished(folder) or _partial_record(folder)
            if record is None or record["fingerprint"] == step.fingerprint:
                continue
            if not restart:
                raise OutputConflict(
                    f"{folder} holds a {step.kind} stage of a different recipe (its settings, an earlier stage's, "
                    "the data, the models or the seed differ). Nothing was changed: choose another output folder, "
                    "or restart to replace this stage and the ones after it")
            for later in steps[steps.index(step):]:
                for stale in (out / later.name, out / f"{later.name}.partial"):
                    shutil.rmtree(stale, ignore_errors=True)
            return


def _partial_record(folder: Path) -> dict[str, Any] | None:
    path = folder / "fingerprint"
    return {"fingerprint": path.read_text().strip()} if path.is_file() else None


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (a reused stage costs no disk), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_context(recipe: dict[str, Any], log: Callable[[str], None]) -> stages.Context:
    """Load the data and check that the models build and fit it, before any training."""
    spec = recipe["data"]
    device = resolve(recipe["run"]["device"])
    full = kdata.load(spec["name"], augment=spec["augment"], train_size=spec["train_size"],
                      test_size=spec["test_size"], device=device, **({"root": spec["root"]} if spec["root"] else {}))
    train = holdout(full, spec["validation"], seed=0)
    ctx = stages.Context(recipe, device, train, replace(full, train=train.train), log)
    for role in ("student", "teacher"):
        if recipe[role] is None:
            continue
        model = stages.build_model(recipe[role], full.num_classes, 0).to(device)
        if recipe[role]["checkpoint"] is not None:
            stages.load_weights(model, recipe[role]["checkpoint"])
        check_model_fits_data(model, full, role=role)
        ctx.cache[role] = model
    if recipe["teacher"] is not None and recipe["teacher"]["checkpoint"] is not None:
        ctx.teacher = ctx.cache["teacher"]
    return ctx


def _label(step: Step) -> str:
    spec = step.spec
    return {
        "teacher": "teacher",
        "distill": "student (alone)" if spec.get("method") == "student" else f"student ({spec.get('method')})",
        "prune": f"pruned {spec.get('ratio', 0):.0%}",
        "quantize": f"int8 {str(spec.get('mode')).upper()}",
        "export": "exported",
    }[step.kind]


def _run_step(ctx: stages.Context, step: Step, model: nn.Module | None, work: Path) -> nn.Module:
    if step.kind == "teacher":
        return stages.train_teacher(ctx, work)
    return stages.RUNNERS[step.kind](ctx, step.spec, model, work)


def _evaluate(ctx: stages.Context, out: Path, step: Step, done: list[tuple[Step, dict[str, Any]]],
              work: Path) -> dict[str, Any]:
    """Reload every model of the run from its file and measure it (the evaluate stage)."""
    # After a quantize stage the exported file is a copy of its int8 file (export after PT2E is refused): time it once.
    quantized = any(s.kind == "quantize" for s, _ in done)
    entries = [(s.name, s.kind, rec["label"], out / s.name / rec["artifact"]) for s, rec in done
               if not (s.kind == "export" and quantized)]
    if not any(s.kind == "distill" for s, _ in done):  # no distill stage: the student as given is the reference
        stages.save_model(work / "student.pt", ctx.cache["student"])
        after_teacher = 1 if entries and entries[0][1] == "teacher" else 0
        entries.insert(after_teacher, ("start", "distill", "student", work / "student.pt"))
    loaded, engines, rows = {}, {}, []
    for stage, kind, label, file in entries:
        model = stages.load_stage_model(ctx, kind, file.parent) if stage != "start" else ctx.cache["student"]
        row = {"stage": stage, "label": label, **measure.describe(model, file), **measure.score(model, ctx.train, ctx.test)}
        loaded[label], engines[label] = model, row["engine"]
        rows.append(row)
    spec = step.spec
    ctx.log(f"[{step.name}] timing {len(loaded)} models at batch sizes {spec['batch_sizes']}, threads {spec['threads']}")
    times = measure.latency(loaded, engines, ctx.test.test.take(slice(0, max(spec["batch_sizes"]))),
                            batch_sizes=spec["batch_sizes"], threads=spec["threads"], repeats=spec["repeats"])
    for row in rows:
        row["latency"] = times[row["label"]]
    return {"models": rows}


def run(
    recipe: str | os.PathLike[str] | Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    smoke: bool = False,
    restart: bool = False,
    reuse: Mapping[str, Path] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the pipeline ``recipe`` (a TOML file or a parsed recipe) into the folder ``out``; return the report.

    Finished stages found in ``out`` with the same fingerprint are kept and skipped, so re-running a killed run
    resumes it. ``reuse`` maps fingerprints to finished stage folders elsewhere (a sweep's other runs), which are
    copied instead of re-run. ``smoke`` shrinks data and budgets (:data:`SMOKE`).

    Raises:
        RecipeError: a recipe that cannot run, found before any training.
        OutputConflict: ``out`` holds finished stages of another recipe (``restart=True`` replaces them).
    """
    checked = load_recipe(recipe)
    if smoke:
        checked = shrink(checked)
    out = Path(out)
    steps = plan(checked)
    check_output(out, steps, restart=restart)
    ctx = make_context(checked, log)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "recipe.json", checked)
    seconds: dict[str, float] = {}
    done: list[tuple[Step, dict[str, Any]]] = []
    model: nn.Module | None = ctx.cache["student"]
    for step in steps:
        final, work = out / step.name, out / f"{step.name}.partial"
        source = (reuse or {}).get(step.fingerprint)
        if _finished(final) is None and source is not None and _finished(Path(source)) is not None:
            shutil.copytree(source, final, copy_function=_link_or_copy)
        record = _finished(final)
        if record is None:
            log(f"[{step.name}] running")
            work.mkdir(exist_ok=True)
            (work / "fingerprint").write_text(step.fingerprint + "\n")
            start = time.perf_counter()
            if step.kind == "evaluate":
                record = _evaluate(ctx, out, step, done, work)
            else:
                if model is None:
                    model = stages.load_stage_model(ctx, done[-1][0].kind, out / done[-1][0].name)
                if step.kind != "teacher" and ctx.teacher is None and ctx.recipe["teacher"] is not None:
                    ctx.teacher = stages.load_stage_model(ctx, "teacher", out / steps[0].name)
                produced = _run_step(ctx, step, model, work)
                record = {"label": _label(step), "artifact": stages.artifact(step.kind, work).name,
                          **measure.score(produced, ctx.train, ctx.test)}
                if step.kind == "teacher":
                    ctx.teacher = produced
            record.update(kind=step.kind, fingerprint=step.fingerprint, spec=step.spec,
                          seconds=time.perf_counter() - start)
            for state in work.glob("train_state.pt*"):  # the stage's resumable training state, no longer needed
                state.unlink()
            write_json(work / "stage.json", record)
            os.replace(work, final)
            log(f"[{step.name}] done in {record['seconds']:.0f} s"
                + (f": test accuracy {100 * record['test_accuracy']:.2f} %" if "test_accuracy" in record else ""))
        else:
            log(f"[{step.name}] finished earlier, kept")
        if step.kind not in ("teacher", "evaluate"):
            model = None  # the next stage loads it from the file this one wrote
        seconds[step.name] = record["seconds"]
        if step.kind != "evaluate":
            done.append((step, record))
    save_run_record(out / "run.json", run_record(config=checked, seed=checked["run"]["seed"], device=ctx.device,
                                                 metrics={"stage_seconds": seconds}, smoke=smoke))
    return write_report(out, checked, [(s.name, _finished(out / s.name)) for s in steps])
