"""Chapter 3 on Fashion-MNIST: Hinton et al.'s compression pair of one family, and distillation with few labels.

* **Teacher**: an MLP with two hidden layers of 1,200 units, dropout 0.3, trained with random crops (2-pixel
  jitter) and flips for :data:`TEACHER_EPOCHS` epochs: Hinton et al.'s regularized MNIST teacher, on clothes.
* **Students**: MLPs of the same family, two hidden layers of :data:`WIDTHS` units. Each is trained alone and
  distilled (teacher live on the same augmented batch), :data:`EPOCHS` epochs of batch 128 (Adam, cosine).
  Tuning on a validation split of 5,000 training images, seed 0, 4 configurations per arm: learning rate ×
  label smoothing for the student alone, learning rate × temperature for KD (alpha = 0.9).
* **Few labels**: the student of width :data:`LOW_LABEL_WIDTH` with :data:`LABELS` labeled images, alone, or
  distilled on those plus the other 59,000 training images as an unlabeled transfer set; the same number of
  steps for both (that of :data:`EPOCHS` epochs over 60,000 images) and the settings tuned above.

Seeds 0–4 for every final arm, paired. Results go to ``benchmarks/results/kd_fashion.json``; an interrupted sweep
resumes from ``kd_fashion.partial.jsonl``.

Usage: ``python benchmarks/kd_fashion.py [--workers 2] [--seeds 5] [--smoke]``
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import pairs
from kdlib import data as kdata
from kdlib import models
from kdlib.distill import distill
from kdlib.profile import count_parameters
from kdlib.protocol import grid, holdout
from kdlib.train import fit
from sweep import RunLog, machine

RESULTS = Path(__file__).parent / "results" / "kd_fashion.json"
TEACHER = dict(hidden=(1200, 1200), dropout=0.3)
TEACHER_EPOCHS = 30
WIDTHS = (30, 300)
EPOCHS = 20
BATCH_SIZE = 128
LABELS = 1000
LOW_LABEL_WIDTH = 300
VALIDATION = 5000
ALONE_GRID = grid(lr=[1e-3, 3e-3], label_smoothing=[0.0, 0.1])
KD_GRID = grid(lr=[1e-3, 3e-3], temperature=[4.0, 20.0])
EVAL_EVERY = 1000


@functools.cache
def fashion(smoke: bool) -> kdata.Dataset:
    sizes = dict(train_size=2000, test_size=500) if smoke else {}
    return kdata.fashion_mnist(augment=True, device="cpu", **sizes)


def view(name: str, smoke: bool) -> kdata.Dataset:
    """``"full"``, ``"full/validation"``, or ``"few"``/``"few+transfer"``: :data:`LABELS` labels (without/with the
    remaining training images as unlabeled inputs)."""
    data = fashion(smoke)
    if name == "full":
        return data
    if name == "full/validation":
        return holdout(data, 500 if smoke else VALIDATION, seed=0)
    labels = 100 if smoke else LABELS
    few = holdout(data, labels, seed=1)  # a stratified draw of `labels` images (its "test"), and the rest
    labeled = replace(data, train=few.test)
    if name == "few":
        return labeled
    if name == "few+transfer":
        return kdata.with_unlabeled(labeled, few.train.x)
    raise ValueError(f"unknown view {name!r}")


def student(width: int, seed: int) -> torch.nn.Module:
    return models.create("mlp", 10, seed=seed, input_shape=(1, 28, 28), hidden=(width, width))


def make_teacher() -> torch.nn.Module:
    return models.create("mlp", 10, input_shape=(1, 28, 28), **TEACHER)


def run(task: dict) -> dict:
    torch.set_num_threads(1)
    smoke, seed, width = task["smoke"], task["seed"], task["width"]
    data = view(task["view"], smoke)
    settings = dict(task["settings"])
    steps = (5 if smoke else EPOCHS) * math.ceil(len(fashion(smoke).train) / BATCH_SIZE)
    common = dict(steps=steps, batch_size=BATCH_SIZE, seed=seed, progress=False, eval_every=EVAL_EVERY)
    record = {k: task[k] for k in ("stage", "arm", "width", "seed", "view", "settings_key")}
    record["settings"] = settings

    def go() -> dict:
        model = student(width, seed)
        if task["arm"] == "alone":
            result = fit(model, data, **common, **settings)
        else:
            teacher = pairs.load_model(make_teacher, Path(task["folder"]) / "teacher.pt")
            result = distill(model, teacher, data, alpha=pairs.ALPHA, **common, **settings)
        record.update(final_accuracy=result.final_accuracy, best_accuracy=result.best_accuracy,
                      params=count_parameters(model), steps=steps,
                      **{k: v for k, v in result.history[-1].items() if k.startswith("fidelity/")})
        return record

    return pairs.timed(go)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny data and a few epochs: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    log = RunLog(args.out)
    keys = ("stage", "arm", "width", "seed", "view", "settings_key")
    describe = lambda r: (f"{r['stage']} {r['arm']} 2x{r['width']} {r['view']} {r['settings']} seed {r['seed']}: "  # noqa: E731
                          f"{r['final_accuracy']:.4f}")
    with tempfile.TemporaryDirectory() as folder:
        torch.set_num_threads(args.workers)
        torch.manual_seed(0)
        teacher = make_teacher()
        teacher_fit = fit(teacher, fashion(args.smoke), epochs=1 if args.smoke else TEACHER_EPOCHS,
                          batch_size=BATCH_SIZE, lr=1e-3, seed=0, progress=False)
        torch.save(teacher.state_dict(), Path(folder) / "teacher.pt")
        torch.set_num_threads(1)
        teacher_record = dict(accuracy=teacher_fit.final_accuracy, params=count_parameters(teacher), **TEACHER,
                              epochs=TEACHER_EPOCHS, train_seconds=teacher_fit.train_seconds)
        print(f"teacher: {teacher_record}", flush=True)

        def task(**kw) -> dict:
            t = dict(smoke=args.smoke, folder=folder, **kw)
            t["settings_key"] = pairs.settings_key(t["settings"])
            return t

        grids = {"alone": ALONE_GRID, "KD": KD_GRID}
        tune = [task(stage="tune", arm=a, width=w, seed=0, view="full/validation", settings=c)
                for w in WIDTHS for a, g in grids.items() for c in g]
        pairs.pool_runs(run, tune, log, keys, args.workers, describe)
        tuning = lambda a, w: [r for r in log.records if r["stage"] == "tune" and r["arm"] == a and r["width"] == w]  # noqa: E731
        tuned = {f"{a} 2x{w}": pairs.best_config(tuning(a, w), g) for w in WIDTHS for a, g in grids.items()}
        print(f"tuned: {tuned}", flush=True)
        seeds = range(args.seeds)
        final = [task(stage="test", arm=a, width=w, seed=s, view="full", settings=tuned[f"{a} 2x{w}"])
                 for w in WIDTHS for a in grids for s in seeds]
        final += [task(stage="few labels", arm=a, width=LOW_LABEL_WIDTH, seed=s, view=v,
                       settings=tuned[f"{a} 2x{LOW_LABEL_WIDTH}"])
                  for a, v in (("alone", "few"), ("KD", "few+transfer")) for s in seeds]
        pairs.pool_runs(run, sorted(final, key=lambda t: (t["arm"] != "KD", -t["width"])), log, keys, args.workers,
                        describe)
    out = dict(
        machine=machine(args.workers), smoke=args.smoke, seeds=args.seeds,
        wall_seconds=time.perf_counter() - started, run_seconds=sum(r["wall_seconds"] for r in log.records),
        protocol=dict(teacher=TEACHER, teacher_epochs=TEACHER_EPOCHS, widths=list(WIDTHS), epochs=EPOCHS,
                      batch_size=BATCH_SIZE, labels=LABELS, low_label_width=LOW_LABEL_WIDTH, validation=VALIDATION,
                      alpha=pairs.ALPHA, grids=grids, augment="random crop (2-pixel padding) and horizontal flip"),
        teacher=teacher_record, tuned=tuned,
        results=sorted(log.records, key=lambda r: (r["stage"], r["arm"], r["width"], r["seed"])),
    )
    log.finish(out)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
