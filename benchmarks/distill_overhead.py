"""Time of one distillation epoch relative to one plain student epoch, on the same data, in one process.

For each pair (MNIST-1D: CNN teacher -> MLP student; Fashion-MNIST: CNN teacher -> small MLP student) it
alternates three kinds of epoch, repeated, and reports medians of the training time (evaluation excluded):

* plain: the student alone (cross-entropy);
* cached: distillation with the teacher's logits computed once and looked up by index (the default when
  the data has no augmentation); the one-off cost of building the cache is reported separately;
* live: distillation running the frozen teacher on every batch (what augmentation requires).

The target is cached / plain <= 1.15. Results go to
``benchmarks/results/distill_overhead.json`` for chapter 3.

Usage: ``python benchmarks/distill_overhead.py [--repeats 7] [--threads 2] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from kdlib import data as kdata
from kdlib import models
from kdlib.distill import cached_teacher_logits, distill, frozen
from kdlib.profile import cpu_name
from kdlib.train import fit

RESULTS = Path(__file__).parent / "results" / "distill_overhead.json"


def one_epoch(kind: str, student_factory, teacher, dataset, batch_size: int) -> float:
    student = student_factory()
    common = dict(epochs=1, batch_size=batch_size, seed=0, progress=False)
    if kind == "plain":
        result = fit(student, dataset, **common)
    else:
        result = distill(student, teacher, dataset, cache_teacher=(kind == "cached"), **common)
    return result.train_seconds


def measure_pair(name, dataset, teacher, student_factory, batch_size, repeats) -> dict:
    fit(teacher, dataset, epochs=1, batch_size=batch_size, progress=False)  # a trained-ish teacher
    kinds = ("plain", "cached", "live")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    one_epoch("plain", student_factory, teacher, dataset, batch_size)  # warm-up (allocator, kernels)
    for _ in range(repeats):
        for kind in kinds:  # alternate, so drift on a shared machine hits every kind alike
            times[kind].append(one_epoch(kind, student_factory, teacher, dataset, batch_size))
    cache_seconds = []
    for _ in range(repeats):
        with frozen(teacher):
            start = time.perf_counter()
            cached_teacher_logits(teacher, dataset)
            cache_seconds.append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "pair": name,
        "train_samples": len(dataset.train),
        "batch_size": batch_size,
        "seconds_per_epoch": median,
        "all_seconds": times,
        "cache_build_seconds": statistics.median(cache_seconds),
        "cached_over_plain": median["cached"] / median["plain"],
        "live_over_plain": median["live"] / median["plain"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small subsets, 3 repeats (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    size = {"train_size": 2000, "test_size": 500} if args.quick else {}

    torch.manual_seed(0)
    pairs = [
        measure_pair(
            "MNIST-1D: mnist1d_cnn -> mlp(100, 100)",
            kdata.mnist1d(device="cpu", **size),
            models.create("mnist1d_cnn"),
            lambda: models.create("mlp", hidden=(100, 100)),
            batch_size=100,
            repeats=repeats,
        ),
        measure_pair(
            "Fashion-MNIST: cnn -> mlp(64)",
            kdata.fashion_mnist(device="cpu", **(size or {"train_size": 10000})),
            models.create("cnn"),
            lambda: models.create("mlp", input_shape=(1, 28, 28), hidden=(64,)),
            batch_size=128,
            repeats=repeats,
        ),
    ]
    report = {
        "benchmark": "distillation epoch time relative to a plain student epoch",
        "goal": "cached_over_plain <= 1.15",
        "machine": {"platform": platform.platform(), "processor": cpu_name(),
                    "threads": args.threads, "torch": torch.__version__},
        "repeats": repeats,
        "pairs": pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'pair':45s} {'plain s':>8s} {'cached s':>9s} {'live s':>8s} {'cached/plain':>13s} {'live/plain':>11s}")
    for p in pairs:
        s = p["seconds_per_epoch"]
        print(f"{p['pair']:45s} {s['plain']:8.3f} {s['cached']:9.3f} {s['live']:8.3f} "
              f"{p['cached_over_plain']:13.3f} {p['live_over_plain']:11.3f}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
