"""Every distillation method in kdlib on one compression pair, under the book's protocol (chapter 5).

The pair is ``pairs.PAIRS["narrow"]``: the MNIST-1D CNN teacher (25 channels, trained with shifts) and the same
CNN with 8 channels, 6× fewer parameters, so every method applies, attention transfer included. Every run sees
the shifts, the teacher live on the same shifted batch. Stages, each run logged as it ends (an interrupted
sweep resumes from ``method_zoo.partial.jsonl``):

1. **Tuning** (validation split, seed 0, :data:`TUNE_STEPS` steps, half the final budget to halve the cost):
   the student alone over ``pairs.ALONE_GRID`` and
   KD over ``pairs.KD_GRID`` (learning rate × temperature, 9 each); then every other method at KD's learning rate
   over 3 values of its main knob (:data:`GRIDS`: a loss weight at 0.1, 1 and 10 times the paper's; DKD's beta
   with the ImageNet and CIFAR recipes; the cross-entropy weight where the recipe sets it).
2. **Methods** on the test set, seeds 0–4, at the tuned settings, at :data:`TUNE_STEPS` and :data:`STEPS` steps
   (the two budgets show whether the results have converged); a random-teacher control (an untrained CNN as
   the teacher, the method's tuned settings) for KD and the relation and contrastive methods.

Runs spread over ``--workers`` processes of one thread each. RKD's O(b³) angle term costs ~35 ms per step on a
CPU core (17 minutes per run of 24,000 steps) and CRD's memory bank ~15 ms: the methods of ``--short-methods``
run at :data:`TUNE_STEPS` only, with :data:`SHORT_CONTROL_SEEDS` seeds for their random-teacher control, and on
CUDA (``--gpu-workers`` processes) when a GPU is present. The committed results come from two machines: the
tuning and the :data:`TUNE_STEPS` runs from a lent GPU machine (16 Xeon cores, H200; torch 2.11), the
:data:`STEPS` runs and the runs it did not finish from this book's 2-core machine; each record names its host.

Usage: ``python benchmarks/method_zoo.py [--workers 2] [--seeds 5] [--gpu-methods rkd crd] [--smoke]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

import torch

import pairs
from kdlib.methods import METHODS, NotApplicable, distill_with, standardized_dkd
from kdlib.profile import cpu_name
from kdlib.train import fit
from sweep import RunLog, machine

RESULTS = Path(__file__).parent / "results" / "method_zoo.json"
PAIR = pairs.PAIRS["narrow"]
TUNE_STEPS = 12_000
STEPS = 24_000
SHORT_CONTROL_SEEDS = 3
EVAL_EVERY = 400


def _scaled(method: str, key: str, factors=(0.1, 1.0, 10.0)) -> list[dict]:
    return [{key: METHODS[method].recipe[key] * f} for f in factors]


#: Each method's tuning grid (3 configurations), recipe overrides for ``distill_with``.
GRIDS: dict[str, list[dict]] = {
    "kd": [{"weight": a, "ce_weight": round(1 - a, 4)} for a in (0.5, 0.9, 1.0)],
    "mse": [{"weight": a, "ce_weight": round(1 - a, 4)} for a in (0.5, 0.9, 1.0)],
    "dkd": [{"beta": 0.5, "T": 1.0}, {"beta": 2.0, "T": 4.0}, {"beta": 8.0, "T": 4.0}],  # ImageNet ... CIFAR recipe
    "dist": [{"beta": b, "gamma": b} for b in (0.2, 2.0, 20.0)],
    "kd_ls": _scaled("kd_ls", "weight"),
    "dkd_ls": [standardized_dkd(beta=b) for b in (0.5, 2.0, 8.0)],
    "fitnet": _scaled("fitnet", "weight"),
    "at": _scaled("at", "weight"),
    "sp": _scaled("sp", "weight"),
    "rkd": _scaled("rkd", "weight"),
    "pkt": _scaled("pkt", "weight"),
    "crd": _scaled("crd", "weight"),
}
RANDOM_TEACHER = ("kd", "sp", "rkd", "pkt", "crd")


def run(task: dict) -> dict:
    torch.set_num_threads(1)
    smoke, seed, method = task["smoke"], task["seed"], task["method"]
    data = pairs.view("shifts" + ("/validation" if task["stage"] == "tune" else ""), smoke)
    settings = dict(task["settings"])
    record = {k: task[k] for k in ("stage", "method", "seed", "steps", "teacher", "settings_key")}
    record["settings"] = settings
    common = dict(steps=task["steps"], batch_size=pairs.BATCH_SIZE, seed=seed, progress=False,
                  eval_every=EVAL_EVERY, device=task["device"])
    student = PAIR.make_student(seed)
    start = time.perf_counter()
    try:
        if method == "student":
            result = fit(student, data, **common, **pairs.regularized(settings))
        else:
            if task["teacher"] == "random":
                teacher = PAIR.make_teacher(seed=1000)
            else:
                teacher = pairs.load_model(PAIR.make_teacher, Path(task["folder"]) / "teacher0.pt")
            recipe = {k: v for k, v in settings.items() if k != "lr"}
            if method == "kd" and "temperature" in recipe:  # KD's first-stage grid speaks of T, the recipe of T
                recipe["T"] = recipe.pop("temperature")
            result = distill_with(method, student, teacher, data, recipe=recipe, lr=settings["lr"], **common)
    except NotApplicable as err:
        return {**record, "status": "n/a", "reason": str(err)}
    except FloatingPointError as err:
        return {**record, "status": "diverged", "final_accuracy": float("nan"), "reason": str(err)[:200]}
    record.update(status="ok", final_accuracy=result.final_accuracy, best_accuracy=result.best_accuracy,
                  train_seconds=result.train_seconds, wall_seconds=time.perf_counter() - start,
                  device=str(task["device"]), host=f"{cpu_name()}, torch {torch.__version__}")
    record.update({k: v for k, v in result.history[-1].items() if k.startswith("fidelity/")})
    return record


def run_all(tasks: list[dict], log: RunLog, args: argparse.Namespace) -> None:
    """CPU tasks in one pool, GPU tasks (``--gpu-methods``, when CUDA is there) in another, at the same time."""
    keys = ("stage", "method", "seed", "steps", "teacher", "settings_key")
    describe = lambda r: (f"{r['stage']} {r['method']} {r['settings']} teacher {r['teacher']} seed {r['seed']} "  # noqa: E731
                          f"steps {r['steps']} ({r.get('device')}): {r.get('final_accuracy', r['status'])}")
    gpu = torch.cuda.is_available() and not args.smoke
    on_gpu = [t for t in tasks if gpu and t["method"] in args.short_methods]
    on_cpu = [t for t in tasks if t not in on_gpu]
    for t in on_gpu:
        t["device"] = "cuda"
    lock = threading.Lock()

    class Locked:  # both pools append to one log from two threads
        def done(self, *k):
            with lock:
                return log.done(*k)

        def add(self, *records):
            with lock:
                log.add(*records)

    threads = [threading.Thread(target=pairs.pool_runs, args=(run, part, Locked(), keys, n, describe))
               for part, n in ((on_cpu, args.workers), (on_gpu, args.gpu_workers)) if part]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu-workers", type=int, default=4)
    parser.add_argument("--short-methods", nargs="*", default=["rkd", "crd"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--smoke", action="store_true", help="tiny data and 30 steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tune_steps, steps = (30, 60) if args.smoke else (TUNE_STEPS, STEPS)
    settings = pairs.Settings.make(args.smoke, tune_steps)
    started = time.perf_counter()
    log = RunLog(args.out)
    with tempfile.TemporaryDirectory() as folder:
        model, teacher = pairs.train_teacher(PAIR, 0, settings)
        torch.save(model.state_dict(), Path(folder) / "teacher0.pt")
        print(f"teacher: test accuracy {teacher['accuracy']:.4f}", flush=True)

        def task(**kw) -> dict:
            t = {**dict(smoke=args.smoke, steps=tune_steps, teacher="trained", folder=folder, device="cpu"), **kw}
            t["settings_key"] = pairs.settings_key(t["settings"])
            return t

        first = {"student": pairs.ALONE_GRID, "kd": pairs.KD_GRID}
        run_all([task(stage="tune", method=m, seed=0, settings=c) for m, g in first.items() for c in g], log, args)
        tuned_runs = lambda stage, m: [r for r in log.records if r["stage"] == stage and r["method"] == m  # noqa: E731
                                       and r["status"] == "ok"]
        best = {m: pairs.best_config(tuned_runs("tune", m), g) for m, g in first.items()}
        lr, temperature = best["kd"]["lr"], best["kd"]["temperature"]
        grids = {m: [{"lr": lr, **({"T": temperature} if m == "kd" else {}), **c} for c in GRIDS[m]]
                 for m in args.methods if m in GRIDS}
        run_all([task(stage="tune2", method=m, seed=0, settings=c) for m, g in grids.items() for c in g], log, args)
        for m, g in grids.items():
            tune2 = [r for r in log.records if r["stage"] == "tune2" and r["method"] == m]
            if all(r["status"] == "n/a" for r in tune2):
                best[m] = g[1]  # not applicable to this pair: keep the paper's recipe for the record
                continue
            best[m] = pairs.best_config(tune2, g)
        print(f"tuned: {best}", flush=True)

        methods = ["student", *[m for m in args.methods if m in GRIDS]]
        long = [m for m in methods if m not in args.short_methods]
        seeds = range(args.seeds)
        tasks = [task(stage="test", method=m, seed=s, settings=best[m], steps=b)
                 for m in methods for b in ((tune_steps, steps) if m in long else (tune_steps,)) for s in seeds]
        tasks += [task(stage="test", method=m, seed=s, settings=best[m], teacher="random",
                       steps=steps if m in long else tune_steps)
                  for m in RANDOM_TEACHER if m in methods
                  for s in (seeds if m in long else range(min(args.seeds, SHORT_CONTROL_SEEDS)))]
        run_all(sorted(tasks, key=lambda t: -t["steps"]), log, args)

    out = dict(
        machine={**machine(args.workers), "hosts": sorted({r.get("host", "?") for r in log.records})},
        smoke=args.smoke, seeds=args.seeds, wall_seconds=time.perf_counter() - started,
        run_seconds=sum(r.get("wall_seconds", 0.0) for r in log.records),
        protocol=dict(pair=PAIR.title, teacher=PAIR.teacher, student=PAIR.student, teacher_fit=pairs.TEACHER_FIT,
                      tune_steps=tune_steps, steps=steps, short_methods=args.short_methods, batch_size=pairs.BATCH_SIZE, validation_size=pairs.VALIDATION_SIZE,
                      first_grids=first, grids=GRIDS, regularizers=pairs.REGULARIZERS),
        teacher=teacher, tuned=best,
        methods={m: dict(title=METHODS[m].title, family=METHODS[m].family, cite=METHODS[m].cite,
                         ce_weight=METHODS[m].ce_weight, recipe=METHODS[m].recipe, main=METHODS[m].main)
                 for m in methods},
        results=sorted(log.records, key=lambda r: (r["stage"], r["method"], r["teacher"], r["steps"], r["seed"])),
    )
    log.finish(out)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    main()
