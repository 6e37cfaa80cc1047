"""Self, reverse, peer and multi-teacher distillation on the chapter-5 pairs, over several seeds (chapters 6–7).

The pairs and their training budgets are those of ``benchmarks/method_zoo.py``: MNIST-1D CNN → MLP, and the
"cnn" teacher → LeNet-5 on 10,000 Fashion-MNIST images. Every student-side run uses the student's budget
(Adam, cosine schedule); every teacher-side model uses the teacher's. Groups of runs per pair and seed:

* ``self`` (chapter 6): the student alone (born-again generation 0), born-again generations 1–3 and their
  ensemble, Tf-KD self (generation 0 as the teacher), Tf-KD reg (virtual teacher), label smoothing, and a
  student distilled from a *defective* teacher (the teacher architecture after a few steps only).
* ``reversed`` (chapter 6): the teacher architecture trained alone vs distilled from a trained student.
* ``multi`` (chapter 7): a student distilled from each of three teachers (seeds 0, 1, 2), from their mean,
  from their per-sample confidence-weighted (CA-MKD) mix, and, with a weak third teacher (a trained
  student), from the mean and confidence mixes of two good teachers and one bad one.
* ``dml`` (chapter 7): deep mutual learning of two students (and, on MNIST-1D, of a student with a CNN).
* ``capacity`` (chapter 7): the student distilled from teachers of increasing width, from the widest one
  trained with a quarter of its budget (early-stopped), and through a teacher assistant (TAKD).

Shared models (teachers 0–2, the weak teacher, the width family, the early-stopped teacher) are trained once
from fixed seeds; the seeds vary the students (and the per-seed teacher-side models of ``self``/``reversed``).
Runs use one thread each, spread over ``--workers`` processes. Results go to ``benchmarks/results/schemes.json``;
an interrupted sweep resumes from ``schemes.partial.jsonl`` (shared models are retrained identically).

Usage: ``python benchmarks/schemes.py [--seeds 5] [--workers 2] [--pairs mnist1d fashion] [--groups ...] [--smoke]``
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdlib import models
from kdlib.distill import distill
from kdlib.profile import count_parameters
from kdlib.schemes import (
    born_again, defective_kd, multi_teacher_distill, mutual_learning, reversed_kd, teacher_assistant,
    teacher_free_reg, teacher_free_self,
)
from kdlib.train import fit
from method_zoo import PAIRS, load_dataset, shrink
from sweep import RunLog, machine

RESULTS = Path(__file__).parent / "results" / "schemes.json"
GROUPS = ("self", "reversed", "multi", "dml", "capacity")


@dataclass(frozen=True)
class Plan:
    """What a pair adds to the chapter-5 protocol: the width family, the assistant and the short budgets."""

    widths: dict[str, dict]  # label -> teacher-architecture kwargs, narrow to wide; "default" is teacher 0
    assistant: str  # a label of ``widths``: the teacher assistant's size
    defective_steps: int  # the defective teacher's budget
    early_fraction: float  # the early-stopped teacher's share of the teacher budget
    dml_with_teacher_arch: bool


PLANS = {
    "mnist1d": Plan(
        widths={"4": dict(channels=4), "8": dict(channels=8), "16": dict(channels=16), "default": {},
                "64": dict(channels=64)},
        assistant="16", defective_steps=100, early_fraction=0.25, dml_with_teacher_arch=True,
    ),
    "fashion": Plan(
        widths={"8-16-32": dict(channels=(8, 16, 32)), "16-32-64": dict(channels=(16, 32, 64)), "default": {},
                "64-128-256": dict(channels=(64, 128, 256))},
        assistant="16-32-64", defective_steps=20, early_fraction=0.25, dml_with_teacher_arch=False,
    ),
}
WEAK_SEED = 100  # the weak (student-architecture) teacher of the heterogeneous ensemble


def budgets(pair_name: str, smoke: bool) -> tuple[dict, dict]:
    pair = PAIRS[pair_name]
    return (shrink(pair.teacher_fit), shrink(pair.student_fit)) if smoke else (pair.teacher_fit, pair.student_fit)


def shared_specs(pair_name: str, smoke: bool) -> dict[str, tuple[str, dict, int, dict]]:
    """name -> (architecture, kwargs, seed, fit kwargs) of the models every seed shares."""
    pair, plan = PAIRS[pair_name], PLANS[pair_name]
    teacher_fit, student_fit = budgets(pair_name, smoke)
    specs = {f"teacher{k}": (pair.teacher, {}, k, teacher_fit) for k in range(3)}
    specs["weak"] = (pair.student, {}, WEAK_SEED, student_fit)
    specs.update({f"width_{label}": (pair.teacher, kw, 0, teacher_fit)
                  for label, kw in plan.widths.items() if label != "default"})
    widest = list(plan.widths)[-1]
    steps = _steps(pair_name, teacher_fit, smoke)
    early_fit = {k: v for k, v in teacher_fit.items() if k not in ("epochs", "steps")}
    early_fit["steps"] = max(1, round(plan.early_fraction * steps))
    specs["early"] = (pair.teacher, plan.widths[widest], 0, early_fit)
    return specs


def _steps(pair_name: str, fit_kwargs: dict, smoke: bool) -> int:
    if "steps" in fit_kwargs:
        return fit_kwargs["steps"]
    n = len(load_dataset(pair_name, smoke).train)
    return fit_kwargs["epochs"] * -(-n // fit_kwargs["batch_size"])


def train_shared(task: tuple[str, str, str, bool]) -> dict:
    pair_name, name, folder, smoke = task
    torch.set_num_threads(1)
    arch, kwargs, seed, fit_kwargs = shared_specs(pair_name, smoke)[name]
    data = load_dataset(pair_name, smoke)
    model = models.create(arch, data.num_classes, seed=seed, **kwargs)
    result = fit(model, data, seed=seed, progress=False, **fit_kwargs)
    torch.save(model.state_dict(), Path(folder) / f"{pair_name}_{name}.pt")
    return dict(pair=pair_name, name=name, arch=arch, kwargs=kwargs, seed=seed, fit=fit_kwargs,
                accuracy=result.final_accuracy, params=count_parameters(model))


def load_shared(pair_name: str, name: str, folder: str, smoke: bool) -> torch.nn.Module:
    arch, kwargs, _, _ = shared_specs(pair_name, smoke)[name]
    model = models.create(arch, load_dataset(pair_name, smoke).num_classes, **kwargs)
    model.load_state_dict(torch.load(Path(folder) / f"{pair_name}_{name}.pt", weights_only=True))
    return model


def run_group(task: tuple[str, str, int, str, bool]) -> list[dict]:
    """All runs of one group for one pair and seed, as records ``{pair, group, arm, seed, accuracy, ...}``."""
    pair_name, group, seed, folder, smoke = task
    torch.set_num_threads(1)
    pair, plan = PAIRS[pair_name], PLANS[pair_name]
    data = load_dataset(pair_name, smoke)
    teacher_fit, student_fit = budgets(pair_name, smoke)
    common = dict(progress=False)
    student = functools.partial(models.create, pair.student, data.num_classes)
    shared = functools.partial(load_shared, pair_name, folder=folder, smoke=smoke)
    records: list[dict] = []

    def add(arm: str, accuracy: float, **extra: object) -> None:
        records.append(dict(pair=pair_name, group=group, arm=arm, seed=seed, accuracy=accuracy, **extra))

    start = time.perf_counter()
    if group == "self":
        ban = born_again(student, data, generations=3, seed=seed, **common, **student_fit)
        add("alone", ban["generation 0"].accuracy)
        for g in (1, 2, 3):
            add(f"born-again {g}", ban[f"generation {g}"].accuracy)
        add("born-again ensemble", ban["ensemble"].accuracy)
        gen0 = ban["generation 0"].model
        add("Tf-KD self", teacher_free_self(student, data, teacher=gen0, seed=seed, **common, **student_fit)[
            "generation 1"].accuracy, teacher_accuracy=ban["generation 0"].accuracy)
        add("Tf-KD reg", teacher_free_reg(student(seed=seed), data, seed=seed, **common, **student_fit)["student"].accuracy)
        add("label smoothing", fit(student(seed=seed), data, label_smoothing=0.1, seed=seed, **common, **student_fit).final_accuracy)
        bad = models.create(pair.teacher, data.num_classes, seed=seed)
        de = defective_kd(student(seed=seed), bad, data, teacher_fit=dict(steps=plan.defective_steps), seed=seed,
                          **common, **student_fit)
        add("defective teacher", de["student"].accuracy, teacher_accuracy=de["defective teacher"].accuracy)
    elif group == "reversed":
        strong = models.create(pair.teacher, data.num_classes, seed=seed)
        add("strong alone", fit(strong, data, seed=seed, **common, **teacher_fit).final_accuracy)
        re = reversed_kd(models.create(pair.teacher, data.num_classes, seed=seed), student(seed=seed), data,
                         weak_fit=student_fit, seed=seed, **common, **teacher_fit)
        add("strong from weak", re["strong student"].accuracy, teacher_accuracy=re["weak teacher"].accuracy)
    elif group == "multi":
        teachers = [shared(f"teacher{k}") for k in range(3)]
        for k, teacher in enumerate(teachers):
            add(f"single {k}", distill(student(seed=seed), teacher, data, seed=seed, **common, **student_fit).final_accuracy)
        for weighting in ("mean", "confidence"):
            r = multi_teacher_distill(student(seed=seed), teachers, data, weighting=weighting, seed=seed, **common, **student_fit)
            add(f"ensemble {weighting}", r["student"].accuracy, teacher_accuracy=r["ensemble"].accuracy)
            mixed = [teachers[0], teachers[1], shared("weak")]
            r = multi_teacher_distill(student(seed=seed), mixed, data, weighting=weighting, seed=seed, **common, **student_fit)
            add(f"2 good + 1 weak, {weighting}", r["student"].accuracy, teacher_accuracy=r["ensemble"].accuracy)
    elif group == "dml":
        r = mutual_learning([student(seed=seed), student(seed=seed + 1000)], data, seed=seed, **common, **student_fit)
        add("DML peer 0", r["peer 0"].accuracy)
        add("DML peer 1", r["peer 1"].accuracy)
        add("DML ensemble", r["ensemble"].accuracy)
        if plan.dml_with_teacher_arch:
            big = models.create(pair.teacher, data.num_classes, seed=seed + 1000)
            r = mutual_learning({"student": student(seed=seed), "big": big}, data, seed=seed, **common, **student_fit)
            add("DML with a CNN peer", r["student"].accuracy, teacher_accuracy=r["big"].accuracy)
    elif group == "capacity":
        for label in plan.widths:
            teacher = shared("teacher0" if label == "default" else f"width_{label}")
            add(f"width {label}", distill(student(seed=seed), teacher, data, seed=seed, **common, **student_fit).final_accuracy,
                teacher_params=count_parameters(teacher))
        widest = shared(f"width_{list(plan.widths)[-1]}")
        add("early-stopped widest", distill(student(seed=seed), shared("early"), data, seed=seed, **common,
                                            **student_fit).final_accuracy)
        assistant = models.create(pair.teacher, data.num_classes, seed=seed, **plan.widths[plan.assistant])
        ta = teacher_assistant(widest, [assistant], student(seed=seed), data, assistant_fit=teacher_fit, seed=seed,
                               **common, **student_fit)
        add("TAKD assistant", ta["assistant 1"].accuracy)
        add("TAKD", ta["student"].accuracy, teacher_accuracy=ta["assistant 1"].accuracy)
    else:
        raise ValueError(f"unknown group {group!r}")
    for r in records:
        r["group_seconds"] = time.perf_counter() - start
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--smoke", action="store_true", help="tiny data and 20 steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    log = RunLog(args.out)
    results = log.records
    done = log.done("pair", "group", "seed")
    tasks = [(p, g, s) for p in args.pairs for g in args.groups for s in range(args.seeds) if (p, g, s) not in done]
    # The slow groups (big models) first, so the pool does not end on one long straggler.
    tasks.sort(key=lambda t: (t[0] != "fashion", t[1] not in ("reversed", "capacity")))
    with tempfile.TemporaryDirectory() as tmp, mp.get_context("spawn").Pool(args.workers) as pool:
        jobs = [(p, name, tmp, args.smoke) for p in args.pairs for name in shared_specs(p, args.smoke)]
        shared = sorted(pool.imap_unordered(train_shared, jobs), key=lambda r: (r["pair"], r["name"]))
        for r in shared:
            print(f"{r['pair']} shared {r['name']}: {r['accuracy']:.4f}", flush=True)
        for records in pool.imap_unordered(run_group, [(p, g, s, tmp, args.smoke) for p, g, s in tasks]):
            log.add(*records)
            r = records[0]
            print(f"{r['pair']} {r['group']} seed {r['seed']}: " + ", ".join(f"{x['arm']} {x['accuracy']:.3f}" for x in records),
                  flush=True)
    results.sort(key=lambda r: (r["pair"], GROUPS.index(r["group"]), r["seed"]))
    protocol = {p: dict(teacher=PAIRS[p].teacher, student=PAIRS[p].student, teacher_fit=PAIRS[p].teacher_fit,
                        student_fit=PAIRS[p].student_fit, data=PAIRS[p].data_kwargs, plan=PLANS[p].__dict__)
                for p in args.pairs}
    out = dict(
        machine=machine(args.workers),
        seeds=args.seeds, smoke=args.smoke, wall_seconds=time.perf_counter() - started, protocol=protocol,
        shared=shared, results=results,
    )
    log.finish(out)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
