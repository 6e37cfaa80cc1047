"""Training throughput (samples/s) of every distillation method relative to the student trained alone.

Two pairs: MNIST-1D's CNN → the MLP student (chapter 3's pair) and Fashion-MNIST's "cnn" → LeNet-5 on 10,000
training images. Throughput does not depend on how well the models are trained, so each teacher gets only
``--steps`` steps. For each pair, every method trains a fresh student
for ``--steps`` optimizer steps; the methods are run in turn, ``--repeats`` times round-robin so that drift
on a shared machine hits them all alike, in one process with a fixed number of threads. The time counted is
``FitResult.train_seconds`` (the optimizer steps, without evaluation or the one-off teacher cache), and the
ratio to the plain student is taken per repeat, then the median. With ``Distiller``'s defaults the teacher's
logits and features are cached when they fit in memory, so the ratio is the cost of the loss terms
themselves (plus the teacher's forward pass where the cache is off: ``--live``).

Results go to ``benchmarks/results/distill_throughput.json`` for chapter 5.

Usage: ``python benchmarks/distill_throughput.py [--steps 60] [--repeats 5] [--threads 1] [--live] [--pairs ...] [--smoke]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdlib import data, models
from kdlib.methods import METHODS, NotApplicable, distill_with
from kdlib.profile import cpu_name
from kdlib.train import fit

RESULTS = Path(__file__).parent / "results" / "distill_throughput.json"


@dataclass(frozen=True)
class Pair:
    dataset: str
    teacher: str
    student: str
    batch_size: int
    data_kwargs: dict

    def load(self, smoke: bool) -> data.Dataset:
        kwargs = {**self.data_kwargs, **(dict(train_size=512, test_size=256) if smoke else {})}
        return data.load(self.dataset, device="cpu", **kwargs)


PAIRS = {
    "mnist1d": Pair("mnist1d", "mnist1d_cnn", "mlp", batch_size=100, data_kwargs={}),
    "fashion": Pair("fashion_mnist", "cnn", "lenet5", batch_size=128, data_kwargs=dict(train_size=10_000)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--live", action="store_true", help="run the teacher on every batch (no cache)")
    parser.add_argument("--smoke", action="store_true", help="tiny data, 2 steps, 1 repeat")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.repeats = 2, 1
    torch.set_num_threads(args.threads)

    report = {}
    for name in args.pairs:
        pair = PAIRS[name]
        dataset = pair.load(args.smoke)
        teacher = models.create(pair.teacher, dataset.num_classes, seed=0)
        batch = pair.batch_size
        fit(teacher, dataset, steps=args.steps, batch_size=batch, progress=False)
        seconds: dict[str, list[float]] = {m: [] for m in METHODS}
        skipped = {}
        for repeat in range(args.repeats + 1):  # repeat 0 warms up allocator and kernels and is discarded
            for method in METHODS:
                if method in skipped:
                    continue
                student = models.create(pair.student, dataset.num_classes, seed=0)
                try:
                    result = distill_with(method, student, teacher, dataset, steps=args.steps, batch_size=batch,
                                          seed=0, progress=False, eval_every=10**9,
                                          cache_teacher=False if args.live else None)
                except NotApplicable as err:
                    skipped[method] = str(err)
                    continue
                if repeat > 0:
                    seconds[method].append(result.train_seconds)
        rows = {}
        for method, times in seconds.items():
            if method in skipped:
                rows[method] = dict(status="n/a", reason=skipped[method])
                continue
            ratios = [t / base for t, base in zip(times, seconds["student"])]
            rows[method] = dict(
                status="ok",
                samples_per_second=args.steps * batch / statistics.median(times),
                time_ratio=statistics.median(ratios),
                time_ratio_min=min(ratios),
                time_ratio_max=max(ratios),
            )
            print(f"{name:8s} {method:8s} {rows[method]['samples_per_second']:9.0f} samples/s  "
                  f"{rows[method]['time_ratio']:5.2f}x the student alone", flush=True)
        report[name] = dict(teacher=pair.teacher, student=pair.student, batch_size=batch, methods=rows)

    out = dict(
        machine=dict(cpu=cpu_name(), threads=args.threads, python=platform.python_version(), torch=torch.__version__),
        steps=args.steps, repeats=args.repeats, live_teacher=args.live, smoke=args.smoke,
        measured=time.strftime("%Y-%m-%d"), pairs=report,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
