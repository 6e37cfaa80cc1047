"""Every distillation method in kdlib on the same teacher/student pairs, over several seeds.

Pairs (CPU scale, chapter 5):

* ``mnist1d``: the MNIST-1D CNN teacher (6,000 steps) → the 40-100-100-10 MLP student (3,000 steps);
* ``fashion``: the "cnn" teacher → LeNet-5, both on a 10,000-image subset of Fashion-MNIST (test: all 10,000).

One teacher per pair (seed 0) is shared by every run, so the seeds vary the student's initialization and
data order only. Each method uses its paper recipe from :data:`kdlib.methods.METHODS`, with the same optimizer
(Adam, cosine schedule) and step budget as the student trained alone. Runs are spread over ``--workers``
processes of one thread each (independent runs; timings here are not comparable between methods, see
``benchmarks/distill_throughput.py`` for that). Results go to ``benchmarks/results/method_zoo.json``; an interrupted sweep resumes from
``method_zoo.partial.jsonl`` (the teachers are retrained identically from seed 0).

Usage: ``python benchmarks/method_zoo.py [--seeds 5] [--workers 2] [--pairs mnist1d fashion] [--smoke]``
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

from kdlib import data as kdata
from kdlib import models
from kdlib.methods import METHODS, NotApplicable, distill_with
from kdlib.train import fit
from sweep import RunLog, machine

RESULTS = Path(__file__).parent / "results" / "method_zoo.json"


@dataclass(frozen=True)
class Pair:
    dataset: str
    teacher: str
    student: str
    teacher_fit: dict
    student_fit: dict
    data_kwargs: dict

    def load(self, smoke: bool) -> kdata.Dataset:
        kwargs = dict(self.data_kwargs)
        if smoke:
            kwargs.update(train_size=512, test_size=256)
        return kdata.load(self.dataset, device="cpu", **kwargs)


PAIRS = {
    "mnist1d": Pair(
        "mnist1d", "mnist1d_cnn", "mlp",
        teacher_fit=dict(steps=6000, batch_size=100, lr=1e-2),
        student_fit=dict(steps=3000, batch_size=100, lr=1e-3),
        data_kwargs={},
    ),
    "fashion": Pair(
        "fashion_mnist", "cnn", "lenet5",
        teacher_fit=dict(epochs=3, batch_size=128, lr=2e-3),
        student_fit=dict(epochs=5, batch_size=128, lr=2e-3),
        data_kwargs=dict(train_size=10_000),
    ),
}


def shrink(fit_kwargs: dict) -> dict:
    """Smoke settings: a handful of steps, enough to exercise every code path."""
    small = {k: v for k, v in fit_kwargs.items() if k not in ("steps", "epochs")}
    return {**small, "steps": 20}


def train_teacher(pair: Pair, smoke: bool, path: Path) -> float:
    dataset = pair.load(smoke)
    teacher = models.create(pair.teacher, dataset.num_classes, seed=0)
    kwargs = shrink(pair.teacher_fit) if smoke else pair.teacher_fit
    result = fit(teacher, dataset, seed=0, progress=False, **kwargs)
    torch.save(teacher.state_dict(), path)
    return result.final_accuracy


@functools.cache
def load_dataset(pair_name: str, smoke: bool) -> kdata.Dataset:
    """The pair's data, read once per worker process (every run only reads it)."""
    return PAIRS[pair_name].load(smoke)


def run_one(task: tuple[str, str, int, str, bool]) -> dict:
    pair_name, method, seed, teacher_path, smoke = task
    torch.set_num_threads(1)
    pair = PAIRS[pair_name]
    dataset = load_dataset(pair_name, smoke)
    teacher = models.create(pair.teacher, dataset.num_classes)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    student = models.create(pair.student, dataset.num_classes, seed=seed)
    kwargs = shrink(pair.student_fit) if smoke else pair.student_fit
    record = dict(pair=pair_name, method=method, seed=seed)
    start = time.perf_counter()
    try:
        result = distill_with(method, student, teacher, dataset, seed=seed, progress=False, **kwargs)
    except NotApplicable as err:
        return {**record, "status": "n/a", "reason": str(err)}
    return {
        **record,
        "status": "ok",
        "final_accuracy": result.final_accuracy,
        "best_accuracy": result.best_accuracy,
        "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--smoke", action="store_true", help="tiny data and 20 steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    started = time.perf_counter()
    protocol, tasks = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.pairs:
            pair = PAIRS[name]
            path = Path(tmp) / f"{name}_teacher.pt"
            teacher_accuracy = train_teacher(pair, args.smoke, path)
            print(f"{name}: teacher {pair.teacher} test accuracy {teacher_accuracy:.4f}", flush=True)
            protocol[name] = dict(
                teacher=pair.teacher, student=pair.student, teacher_accuracy=teacher_accuracy,
                teacher_fit=pair.teacher_fit, student_fit=pair.student_fit, data=pair.data_kwargs,
                optimizer="adam", schedule="cosine",
            )
            # Slow methods first, so the pool does not end on one long straggler.
            order = sorted(args.methods, key=lambda m: m not in ("rkd", "crd"))
            tasks += [(name, method, seed, str(path), args.smoke) for method in order for seed in range(args.seeds)]
        # Every finished run is appended to a log next to the output, so an interrupted sweep resumes.
        log = RunLog(args.out)
        done = log.done("pair", "method", "seed")
        tasks = [t for t in tasks if (t[0], t[1], t[2]) not in done]
        results = log.records
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for record in pool.imap_unordered(run_one, tasks):
                log.add(record)
                acc = f"{record['final_accuracy']:.4f}" if record["status"] == "ok" else record["status"]
                print(f"[{len(results)}/{len(done) + len(tasks)}] {record['pair']} {record['method']} seed {record['seed']}: {acc}",
                      flush=True)
    results.sort(key=lambda r: (r["pair"], list(METHODS).index(r["method"]), r["seed"]))
    out = dict(
        machine=machine(args.workers),
        seeds=args.seeds, smoke=args.smoke, wall_seconds=time.perf_counter() - started,
        protocol=protocol,
        methods={m: dict(title=METHODS[m].title, family=METHODS[m].family, cite=METHODS[m].cite,
                         ce_weight=METHODS[m].ce_weight, recipe=METHODS[m].recipe) for m in args.methods},
        results=results,
    )
    log.finish(out)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
