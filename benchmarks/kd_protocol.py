"""Chapter 3's study: when distillation beats the equally tuned student alone on MNIST-1D, and why.

The CNN teacher → MLP student pair of ``pairs.py``, under its protocol. Stages, every run logged as it ends (an
interrupted sweep resumes from ``kd_protocol.partial.jsonl``):

1. **Teachers** (main process, shared through files): the CNN from seeds 0 and 1, trained with shifts; the same
   CNN trained without shifts (the unregularized teacher); an untrained CNN (the random teacher).
2. **Tuning** on the validation split (seed 0, teacher 0, the full budget): the student alone, KD with a
   consistent teacher, and function matching, each over a 9-point grid (``pairs.ALONE_GRID``, ``KD_GRID``,
   ``FM_GRID``).
3. **Arms** on the test set, seeds 0–4, with the tuned settings (see :data:`ARMS`): the two distillation arms
   also with teacher 1; the others are ingredient ablations and controls.
4. **Patience**: the student alone, KD, function matching and the transfer-set arms over budgets from 1,500 to
   48,000 steps (seeds 0–2), with the settings tuned at the full budget.

Usage: ``python benchmarks/kd_protocol.py [--workers 2] [--seeds 5] [--smoke] [--out ...]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import pairs
from kdlib.distill import KDTerm, distill
from kdlib.distiller import Distiller, LogitTerm
from kdlib.losses import hard_label_loss, teacher_log_probs
from kdlib.train import fit, predict
from sweep import RunLog, machine

RESULTS = Path(__file__).parent / "results" / "kd_protocol.json"
PAIR = pairs.PAIRS["mlp"]
PATIENCE_STEPS = (1500, 3000, 6000, 12000, 24000, 48000)
PATIENCE_ARMS = ("alone", "KD", "function matching", "KD + transfer set", "hard labels + transfer set")
EVAL_EVERY = 400
HISTORY_EVERY = 4  # keep every 4th evaluation of seed 0's history, for the fidelity plots


class UniformTeacher(nn.Module):
    """A teacher that answers the uniform distribution for every input (zero logits): KD from it is label
    smoothing, the control that separates a teacher's knowledge from the regularization of a soft target."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("anchor", torch.zeros(()))  # gives the module a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.num_classes) + self.anchor


#: arm -> (data view, teacher, recipe). Recipes: "alone", "kd" or "fm" take the tuned settings; "kd@<lr>" takes
#: KD's tuned temperature at another learning rate; "hard" trains on the teacher's top-1 labels only; "old" is the
#: first edition's setting (T = 4, alpha = 0.9, lr 1e-3, 3,000 steps, cached teacher).
ARMS = {
    "alone": ("shifts", None, "alone"),
    "alone, no shifts": ("clean", None, "alone"),
    "KD": ("shifts", "teacher", "kd"),
    "function matching": ("mixup", "teacher", "fm"),
    "KD, fixed teacher (no shifts)": ("clean", "teacher", "kd"),
    "KD, inconsistent teacher": ("shifts", "teacher", "kd-clean-view"),
    "KD, unregularized teacher": ("shifts", "plain", "kd"),
    "KD, lr 1e-3": ("shifts", "teacher", "kd@0.001"),
    "KD, random teacher": ("shifts", "random", "kd"),
    "KD, uniform teacher": ("shifts", "uniform", "kd"),
    "first edition's KD": ("clean", "plain", "old"),
    "KD + transfer set": ("transfer", "teacher", "kd"),
    "hard labels + transfer set": ("transfer", "teacher", "hard"),
}
HEADLINE = ("KD", "function matching")  # also run with teacher seed 1


def load_teacher(name: str, teacher_seed: int, folder: str) -> nn.Module:
    if name == "uniform":
        return UniformTeacher()
    if name == "random":
        return PAIR.make_teacher(seed=1000 + teacher_seed)
    file = f"{name}{teacher_seed}.pt"
    return pairs.load_model(PAIR.make_teacher, Path(folder) / file)


def run(task: dict) -> dict:
    """One student: ``task`` holds stage, arm, seed, teacher_seed, steps, settings and the teacher folder."""
    torch.set_num_threads(1)
    smoke, seed, steps = task["smoke"], task["seed"], task["steps"]
    view_name, teacher_name, recipe = ARMS[task["arm"]]
    data = pairs.view(view_name + ("/validation" if task["stage"] == "tune" else ""), smoke)
    settings = dict(task["settings"])
    student = PAIR.make_student(seed)
    common = dict(steps=steps, batch_size=pairs.BATCH_SIZE, seed=seed, progress=False, eval_every=EVAL_EVERY)

    def go() -> dict:
        record = {k: task[k] for k in ("stage", "arm", "seed", "teacher_seed", "steps", "settings_key")}
        record["settings"] = settings
        try:
            if recipe == "alone":
                result = fit(student, data, **common, **pairs.regularized(settings))
            else:
                teacher = load_teacher(teacher_name, task["teacher_seed"], task["folder"])
                result = distill_arm(recipe, student, teacher, data, settings, common, smoke)
        except FloatingPointError as err:  # a learning rate too high for this arm: a result, not a crash
            return {**record, "final_accuracy": float("nan"), "diverged": str(err)[:200]}
        record.update(final_accuracy=result.final_accuracy, best_accuracy=result.best_accuracy,
                      train_seconds=result.train_seconds)
        last = result.history[-1]
        record.update({k: v for k, v in last.items() if k.startswith("fidelity/")})
        if task.get("keep_history"):
            record["history"] = [{k: v for k, v in r.items() if k == "step" or k.startswith(("test_", "fidelity/"))}
                                 for r in result.history[::HISTORY_EVERY]]
        return record

    return pairs.timed(go)


def distill_arm(recipe: str, student: nn.Module, teacher: nn.Module, data, settings: dict, common: dict,
                smoke: bool):
    if recipe in ("kd", "fm"):
        alpha = pairs.ALPHA if recipe == "kd" else 1.0
        return distill(student, teacher, data, alpha=alpha, **settings, **common)
    if recipe.startswith("kd@"):
        return distill(student, teacher, data, alpha=pairs.ALPHA, **{**settings, "lr": float(recipe[3:])}, **common)
    if recipe == "kd-clean-view":
        # The student sees shifted signals, the teacher the unshifted ones: its targets are cached once on the
        # clean inputs and looked up by sample index, so they answer a different input than the student's.
        temperature = settings["temperature"]
        clean = predict(teacher, data.train.x)
        cached = teacher_log_probs(clean, temperature)
        term = KDTerm(None, temperature=temperature, weight=pairs.ALPHA, teacher_log_probs=lambda b: cached[b.index])
        return fit(student, data, ce_weight=1 - pairs.ALPHA, loss_terms=[term], lr=settings["lr"], **common)
    if recipe == "hard":
        return Distiller(student, teacher, [LogitTerm(hard_label_loss)], ce_weight=0.0).fit(
            data, lr=settings["lr"], **common)
    if recipe == "old":
        return distill(student, teacher, data, temperature=4.0, alpha=0.9, lr=1e-3,
                       **{**common, "steps": 30 if smoke else 3000})
    raise ValueError(f"unknown recipe {recipe!r}")


def settings_for(arm: str, best: dict) -> dict:
    recipe = ARMS[arm][2]
    if recipe in ("alone", "fm"):
        return best[recipe]
    return best["kd"]  # KD's settings for every KD variant; "hard" and "old" read only what they need


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--patience-seeds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny data and 30 steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = pairs.Settings.make(args.smoke)
    started = time.perf_counter()
    log = RunLog(args.out)
    base = dict(smoke=args.smoke, teacher_seed=0, steps=settings.steps, keep_history=False)
    describe = lambda r: f"{r['stage']} {r['arm']} {r['settings']} seed {r['seed']} steps {r['steps']}: {r['final_accuracy']:.4f}"  # noqa: E731
    keys = ("stage", "arm", "seed", "teacher_seed", "steps", "settings_key")

    with tempfile.TemporaryDirectory() as folder:
        teachers = []
        for name, seed, augment in (("teacher", 0, True), ("teacher", 1, True), ("plain", 0, False)):
            model, record = pairs.train_teacher(PAIR, seed, settings, augment=augment)
            torch.save(model.state_dict(), Path(folder) / f"{name}{seed}.pt")
            teachers.append(dict(name=name, **record))
            print(f"{name} {seed}: test accuracy {record['accuracy']:.4f}", flush=True)
        base["folder"] = folder

        def task(**kw) -> dict:
            t = {**base, **kw}
            t["settings_key"] = pairs.settings_key(t["settings"])
            return t

        grids = {"alone": pairs.ALONE_GRID, "KD": pairs.KD_GRID, "function matching": pairs.FM_GRID}
        tune_tasks = [task(stage="tune", arm=arm, seed=0, settings=c) for arm, g in grids.items() for c in g]
        pairs.pool_runs(run, tune_tasks, log, keys, args.workers, describe)
        tuning = lambda arm: [r for r in log.records if r["stage"] == "tune" and r["arm"] == arm]  # noqa: E731
        best = {key: pairs.best_config(tuning(arm), grids[arm])
                for key, arm in (("alone", "alone"), ("kd", "KD"), ("fm", "function matching"))}
        print(f"tuned: {best}", flush=True)

        seeds = range(args.seeds)
        arm_tasks = [task(stage="arms", arm=arm, seed=s, settings=settings_for(arm, best), keep_history=s == 0)
                     for arm in ARMS for s in seeds]
        arm_tasks += [task(stage="arms", arm=arm, seed=s, teacher_seed=1, settings=settings_for(arm, best))
                      for arm in HEADLINE for s in seeds]
        budgets = [30, 60] if args.smoke else [b for b in PATIENCE_STEPS if b != settings.steps]
        patience = [task(stage="patience", arm=arm, seed=s, steps=b, settings=settings_for(arm, best))
                    for arm in PATIENCE_ARMS for b in budgets for s in range(args.patience_seeds)]
        # Long runs first, so that the pool does not end on one straggler.
        todo = sorted(arm_tasks + patience, key=lambda t: -t["steps"])
        pairs.pool_runs(run, todo, log, keys, args.workers, describe)

    out = dict(
        machine=machine(args.workers), smoke=args.smoke, seeds=args.seeds, patience_seeds=args.patience_seeds,
        wall_seconds=time.perf_counter() - started,
        run_seconds=sum(r["wall_seconds"] for r in log.records),
        protocol=dict(pair=PAIR.title, teacher=PAIR.teacher, student=PAIR.student, teacher_fit=pairs.TEACHER_FIT,
                      steps=settings.steps, batch_size=pairs.BATCH_SIZE, validation_size=pairs.VALIDATION_SIZE,
                      alpha=pairs.ALPHA, grids={k: v for k, v in grids.items()}, regularizers=pairs.REGULARIZERS,
                      patience_steps=list(PATIENCE_STEPS), arms={a: list(v) for a, v in ARMS.items()}),
        teachers=teachers, tuned=best,
        results=sorted(log.records, key=lambda r: (r["stage"], r["arm"], r["teacher_seed"], r["steps"], r["seed"])),
    )
    log.finish(out)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
