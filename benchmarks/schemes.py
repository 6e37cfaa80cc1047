"""Self, reverse, peer and multi-teacher distillation, and the capacity gap, under the protocol (chapters 6–7).

Every student sees the shifts of ``pairs.py``, the teacher live on the same batch, for ``pairs.STUDENT_STEPS``
steps, with the student-alone and KD settings tuned on the validation split by ``kd_protocol.py`` (the MLP
pair) and ``method_zoo.py`` (the 8-channel CNN pair): run those first. Groups of runs per seed:

* ``self`` (chapter 6, MLP): the student alone (born-again generation 0), born-again generations 1–2 and their
  ensemble (Furlanello et al.'s output matching, T = 1, alpha = 1), Tf-KD self (generation 0 as a KD teacher),
  Tf-KD reg (the virtual teacher), and a student distilled from a *defective* teacher (the CNN after 100 steps).
* ``reversed`` (chapter 6): the CNN trained alone vs distilled from a trained MLP (the CNN's own budget).
* ``multi`` (chapter 7, MLP): a student distilled from each of three CNN teachers (seeds 0–2), from their mean
  and from their confidence-weighted mix (CA-MKD), and from two good teachers plus a weak one (a trained MLP).
* ``dml`` (chapter 7, MLP): deep mutual learning of two MLPs, and of an MLP with a CNN.
* ``capacity`` (chapter 7, 8-channel CNN student): distilled from CNN teachers of 8 to 128 channels, from the
  widest stopped at a quarter of its budget, and through a 16-channel teacher assistant (TAKD).

Shared models (teachers, the weak MLP, the width family) are trained once from fixed seeds in the main process;
the seeds vary the students. Results go to ``benchmarks/results/schemes.json``; an interrupted sweep resumes
from ``schemes.partial.jsonl``.

Usage: ``python benchmarks/schemes.py [--seeds 5] [--workers 2] [--groups ...] [--smoke]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import pairs
from kdlib.distill import distill
from kdlib.profile import count_parameters
from kdlib.schemes import (
    born_again, defective_kd, multi_teacher_distill, mutual_learning, reversed_kd, teacher_assistant,
    teacher_free_reg, teacher_free_self,
)
from kdlib.train import fit
from sweep import RunLog, machine

RESULTS = Path(__file__).parent / "results" / "schemes.json"
GROUPS = ("self", "reversed", "multi", "dml", "capacity")
MLP, NARROW = pairs.PAIRS["mlp"], pairs.PAIRS["narrow"]
WIDTHS = (8, 16, 25, 64, 128)  # teacher channels of the capacity study; 25 is the book's teacher
ASSISTANT = 16
DEFECTIVE_STEPS = 100
EARLY_FRACTION = 0.25
WEAK_SEED = 100
EVAL_EVERY = 400


def shared_specs(smoke: bool) -> dict[str, tuple]:
    """name -> (make model, training data view, fit kwargs, seed) of the models every seed shares."""
    teacher_fit = {**pairs.TEACHER_FIT, "steps": 30 if smoke else pairs.TEACHER_FIT["steps"]}
    specs = {f"teacher{k}": (lambda: MLP.make_teacher(), teacher_fit, k) for k in range(3)}
    alone = pairs.tuned_settings("mlp", smoke)["alone"]
    steps = 30 if smoke else pairs.STUDENT_STEPS
    specs["weak"] = (lambda: MLP.make_student(WEAK_SEED), {"steps": steps, "batch_size": pairs.BATCH_SIZE, **alone},
                     WEAK_SEED)
    for width in WIDTHS:
        specs[f"width{width}"] = (lambda w=width: MLP.make_teacher(channels=w), teacher_fit, 0)
    early = {**teacher_fit, "steps": max(1, round(EARLY_FRACTION * teacher_fit["steps"]))}
    specs["early"] = (lambda: MLP.make_teacher(channels=WIDTHS[-1]), early, 0)
    return specs


def train_shared(name: str, folder: str, smoke: bool) -> dict:
    make, fit_kwargs, seed = shared_specs(smoke)[name]
    torch.manual_seed(seed)
    model = make()
    result = fit(model, pairs.view("shifts", smoke), seed=seed, progress=False, **fit_kwargs)
    torch.save(model.state_dict(), Path(folder) / f"{name}.pt")
    return dict(name=name, seed=seed, accuracy=result.final_accuracy, params=count_parameters(model),
                fit={k: v for k, v in fit_kwargs.items()})


def run_group(task: dict) -> dict:
    """All runs of one group for one seed; returns ``{group, seed, runs: [{arm, accuracy, ...}]}``."""
    torch.set_num_threads(1)
    group, seed, smoke, folder = task["group"], task["seed"], task["smoke"], task["folder"]
    data = pairs.view("shifts", smoke)
    steps = 30 if smoke else pairs.STUDENT_STEPS
    common = dict(steps=steps, batch_size=pairs.BATCH_SIZE, progress=False, eval_every=EVAL_EVERY)
    mlp = pairs.tuned_settings("mlp", smoke)
    kd = dict(temperature=mlp["kd"]["temperature"], alpha=mlp["kd"]["alpha"])
    lr = mlp["kd"]["lr"]
    specs = shared_specs(smoke)
    shared = lambda name: pairs.load_model(specs[name][0], Path(folder) / f"{name}.pt")  # noqa: E731
    runs: list[dict] = []

    def add(arm: str, accuracy: float, **extra: object) -> None:
        runs.append(dict(arm=arm, accuracy=accuracy, **extra))

    start = time.perf_counter()
    if group == "self":
        # Generation 0 is the tuned student alone; later generations match their teacher's outputs at KD's rate.
        ban = born_again(lambda: MLP.make_student(seed), data, generations=2, seed=seed, lr=lr,
                         stage_fit=[mlp["alone"], {}, {}], **common)
        add("alone", ban["generation 0"].accuracy)
        for g in (1, 2):
            add(f"born-again {g}", ban[f"generation {g}"].accuracy)
        add("born-again ensemble", ban["ensemble"].accuracy)
        gen0 = ban["generation 0"].model
        self_kd = teacher_free_self(lambda: MLP.make_student(seed), data, teacher=gen0, seed=seed, lr=lr, **kd,
                                    **common)
        add("Tf-KD self", self_kd["generation 1"].accuracy, teacher_accuracy=ban["generation 0"].accuracy)
        reg = teacher_free_reg(MLP.make_student(seed), data, seed=seed, lr=lr, **common)
        add("Tf-KD reg", reg["student"].accuracy)
        de = defective_kd(MLP.make_student(seed), MLP.make_teacher(seed), data, seed=seed, lr=lr,
                          teacher_fit={**pairs.TEACHER_FIT, "steps": DEFECTIVE_STEPS if not smoke else 5}, **kd,
                          **common)
        add("defective teacher", de["student"].accuracy, teacher_accuracy=de["defective teacher"].accuracy)
    elif group == "reversed":
        teacher_fit = {**pairs.TEACHER_FIT, "steps": 30 if smoke else pairs.TEACHER_FIT["steps"]}
        strong = MLP.make_teacher(seed)
        add("strong alone", fit(strong, data, seed=seed, progress=False, **teacher_fit).final_accuracy)
        re = reversed_kd(MLP.make_teacher(seed), MLP.make_student(seed), data, seed=seed,
                         weak_fit={**common, **mlp["alone"]}, **kd, **teacher_fit, progress=False)
        add("strong from weak", re["strong student"].accuracy, teacher_accuracy=re["weak teacher"].accuracy)
    elif group == "multi":
        teachers = [shared(f"teacher{k}") for k in range(3)]
        for k, teacher in enumerate(teachers):
            add(f"single {k}", distill(MLP.make_student(seed), teacher, data, seed=seed, lr=lr, **kd,
                                       **common).final_accuracy)
        for weighting in ("mean", "confidence"):
            r = multi_teacher_distill(MLP.make_student(seed), teachers, data, weighting=weighting, seed=seed, lr=lr,
                                      **kd, **common)
            add(f"ensemble {weighting}", r["student"].accuracy, teacher_accuracy=r["ensemble"].accuracy)
            mixed = [teachers[0], teachers[1], shared("weak")]
            r = multi_teacher_distill(MLP.make_student(seed), mixed, data, weighting=weighting, seed=seed, lr=lr,
                                      **kd, **common)
            add(f"2 good + 1 weak, {weighting}", r["student"].accuracy, teacher_accuracy=r["ensemble"].accuracy)
    elif group == "dml":
        r = mutual_learning([MLP.make_student(seed), MLP.make_student(seed + 1000)], data, seed=seed, lr=lr, **common)
        add("DML peer 0", r["peer 0"].accuracy)
        add("DML peer 1", r["peer 1"].accuracy)
        add("DML ensemble", r["ensemble"].accuracy)
        r = mutual_learning({"student": MLP.make_student(seed), "big": MLP.make_teacher(seed + 1000)}, data,
                            seed=seed, lr=lr, **common)
        add("DML with a CNN peer", r["student"].accuracy, teacher_accuracy=r["big"].accuracy)
    elif group == "capacity":
        narrow = pairs.tuned_settings("narrow", smoke)
        nkd = dict(temperature=narrow["kd"]["temperature"], alpha=narrow["kd"]["alpha"], lr=narrow["kd"]["lr"])
        add("alone", fit(NARROW.make_student(seed), data, seed=seed, **common, **narrow["alone"]).final_accuracy)
        for width in WIDTHS:
            teacher = shared(f"width{width}")
            add(f"teacher {width} channels", distill(NARROW.make_student(seed), teacher, data, seed=seed, **nkd,
                                                     **common).final_accuracy,
                teacher_params=count_parameters(teacher))
        add("early-stopped widest", distill(NARROW.make_student(seed), shared("early"), data, seed=seed, **nkd,
                                            **common).final_accuracy)
        assistant = NARROW.make_teacher(seed, channels=ASSISTANT)
        teacher_fit = {**pairs.TEACHER_FIT, "steps": 30 if smoke else pairs.TEACHER_FIT["steps"]}
        ta = teacher_assistant(shared(f"width{WIDTHS[-1]}"), [assistant], NARROW.make_student(seed), data,
                               assistant_fit=teacher_fit, seed=seed, **nkd, **common)
        add("TAKD assistant", ta["assistant 1"].accuracy)
        add("TAKD", ta["student"].accuracy, teacher_accuracy=ta["assistant 1"].accuracy)
    else:
        raise ValueError(f"unknown group {group!r}")
    return dict(group=group, seed=seed, runs=runs, wall_seconds=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--smoke", action="store_true", help="tiny data and 30 steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    log = RunLog(args.out)
    tasks_of = lambda folder: [dict(group=g, seed=s, smoke=args.smoke, folder=folder)  # noqa: E731
                               for g in args.groups for s in range(args.seeds)]
    with tempfile.TemporaryDirectory() as folder:
        shared = [train_shared(name, folder, args.smoke) for name in shared_specs(args.smoke)]
        for r in shared:
            print(f"shared {r['name']}: {r['accuracy']:.4f} ({r['params']:,} parameters)", flush=True)
        # The capacity and multi-teacher groups are the slowest: first, so the pool does not end on a straggler.
        tasks = sorted(tasks_of(folder), key=lambda t: t["group"] not in ("capacity", "multi"))
        pairs.pool_runs(run_group, tasks, log, ("group", "seed"), args.workers,
                        lambda r: f"{r['group']} seed {r['seed']}: "
                        + ", ".join(f"{x['arm']} {x['accuracy']:.3f}" for x in r["runs"]))
    out = dict(
        machine=machine(args.workers), seeds=args.seeds, smoke=args.smoke,
        wall_seconds=time.perf_counter() - started, run_seconds=sum(r["wall_seconds"] for r in log.records),
        protocol=dict(mlp=dict(title=MLP.title, tuned=pairs.tuned_settings("mlp", args.smoke)),
                      narrow=dict(title=NARROW.title, tuned=pairs.tuned_settings("narrow", args.smoke)),
                      steps=30 if args.smoke else pairs.STUDENT_STEPS, widths=list(WIDTHS), assistant=ASSISTANT,
                      defective_steps=DEFECTIVE_STEPS, early_fraction=EARLY_FRACTION),
        shared=shared,
        results=sorted(({"group": r["group"], "seed": r["seed"], **run} for r in log.records for run in r["runs"]),
                       key=lambda r: (GROUPS.index(r["group"]), r["seed"])),
    )
    log.finish(out)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
