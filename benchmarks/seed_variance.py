"""Run-to-run variance of small students, alone and distilled, over many seeds (chapter 13).

Two seeds drive a kdlib run: ``models.create(name, seed=init_seed)`` draws the initial weights and
``fit(..., seed=order_seed)`` the batch order (and dropout or augmentation, which these students do not use).
Arms, each over ``--seeds`` seeds ``s = 0, 1, ...``:

* ``mnist1d`` (the 40-100-100-10 MLP, 6,000 steps of batch 100, Adam lr 1e-3, cosine, as in chapter 3):

  - ``init``: init seed ``s``, order seed 0: only the initialization varies;
  - ``order``: init seed 0, order seed ``s``: only the data order varies;
  - ``alone``: both equal to ``s``: the usual "seed";
  - ``kd``: as ``alone``, distilled from the CNN teacher on the training set (T = 4, alpha = 0.9);
  - ``kd_transfer``: as ``kd``, with chapter 3's transfer set of 20,000 fresh unlabeled MNIST-1D inputs.

* ``fashion`` (LeNet-5 on 10,000 Fashion-MNIST images, 5 epochs of batch 128, Adam lr 2e-3, cosine, as in
  ``method_zoo.py``): ``alone`` and ``kd`` (the ``"cnn"`` teacher, T = 4, alpha = 0.9), ``--fashion-seeds`` seeds.

One teacher per pair (seed 0) is shared by every run. Each run records its test accuracy and its predicted
test labels, so that the chapter can compute how often two seeds disagree and how often a student agrees with
the teacher. The KD runs are exactly :func:`kdlib.distill.distill` with a cached teacher (same loss term, same
arithmetic), except that each worker computes the teacher's log-probabilities once instead of once per run.
Runs use one thread each, spread over ``--workers`` spawned processes; the ``(0, 0)`` run of ``init``,
``order`` and ``alone`` is the same run repeated in different processes, a check of bit-reproducibility.
Results go to ``benchmarks/results/seed_variance.json``; an interrupted sweep resumes from
``seed_variance.partial.jsonl`` (the teachers are retrained identically).

Usage: ``python benchmarks/seed_variance.py [--seeds 20] [--fashion-seeds 20] [--workers 2] [--smoke]``
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import re
import tempfile
import time
from pathlib import Path

import torch

from kdlib import data as kdata
from kdlib import models
from kdlib.distill import KDTerm, cached_teacher_logits
from kdlib.losses import teacher_log_probs
from kdlib.train import fit, predict
from sweep import RunLog, machine

RESULTS = Path(__file__).parent / "results" / "seed_variance.json"
TEMPERATURE, ALPHA = 4.0, 0.9
TRANSFER_SIZE = 20_000  # chapter 3's transfer set: fresh MNIST-1D inputs generated with seed 7

PROTOCOL = {
    "mnist1d": dict(
        dataset="mnist1d", teacher="mnist1d_cnn", student="mlp", data={},
        teacher_fit=dict(steps=6000, batch_size=100, lr=1e-2),
        student_fit=dict(steps=6000, batch_size=100, lr=1e-3),
        arms=["init", "order", "alone", "kd", "kd_transfer"],
    ),
    "fashion": dict(
        dataset="fashion_mnist", teacher="cnn", student="lenet5", data=dict(train_size=10_000),
        teacher_fit=dict(epochs=3, batch_size=128, lr=2e-3),
        student_fit=dict(epochs=5, batch_size=128, lr=2e-3),
        arms=["alone", "kd"],
    ),
}
TEACHER_ARMS = {"kd", "kd_transfer"}


def fit_kwargs(pair: str, role: str, smoke: bool) -> dict:
    kwargs = dict(PROTOCOL[pair][f"{role}_fit"])
    if smoke:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("steps", "epochs")} | {"steps": 20}
    # Only the final weights are scored: evaluate once, at the end (evaluation draws no random numbers).
    return kwargs | {"eval_every": 10**9, "progress": False}


def seeds_of(arm: str, seed: int) -> tuple[int, int]:
    """(init seed, order seed) of run ``seed`` of an arm."""
    return {"init": (seed, 0), "order": (0, seed)}.get(arm, (seed, seed))


@functools.cache
def load_dataset(pair: str, smoke: bool) -> kdata.Dataset:
    """The pair's data, read once per worker process (every run only reads it)."""
    kwargs = dict(PROTOCOL[pair]["data"])
    if smoke:
        kwargs.update(train_size=512, test_size=256)
    return kdata.load(PROTOCOL[pair]["dataset"], device="cpu", **kwargs)


@functools.cache
def transfer_dataset(smoke: bool) -> kdata.Dataset:
    """MNIST-1D plus chapter 3's transfer set, appended as unlabeled inputs."""
    size = 1000 if smoke else TRANSFER_SIZE
    fresh = kdata.mnist1d(device="cpu", num_samples=size * 5 // 4 + 10, seed=7).train.x[:size]
    return kdata.with_unlabeled(load_dataset("mnist1d", smoke), fresh)


@functools.cache
def teacher_model(pair: str, path: str) -> torch.nn.Module:
    teacher = models.create(PROTOCOL[pair]["teacher"], 10)
    teacher.load_state_dict(torch.load(path, weights_only=True))
    return teacher.eval()


@functools.cache
def teacher_targets(pair: str, path: str, transfer: bool, smoke: bool) -> torch.Tensor:
    """The teacher's log-probabilities at T on every training input, as :func:`kdlib.distill.distill` caches them."""
    dataset = transfer_dataset(smoke) if transfer else load_dataset(pair, smoke)
    return teacher_log_probs(cached_teacher_logits(teacher_model(pair, path), dataset), TEMPERATURE)


def train_teacher(task: tuple[str, bool, str]) -> dict:
    pair, smoke, path = task
    torch.set_num_threads(1)
    dataset = load_dataset(pair, smoke)
    teacher = models.create(PROTOCOL[pair]["teacher"], dataset.num_classes, seed=0)
    start = time.perf_counter()
    result = fit(teacher, dataset, seed=0, **fit_kwargs(pair, "teacher", smoke))
    torch.save(teacher.state_dict(), path)
    return dict(pair=pair, accuracy=result.final_accuracy, seconds=time.perf_counter() - start,
                predictions=predict(teacher, dataset.test).argmax(1).tolist(), test_labels=dataset.test.y.tolist())


def run_one(task: tuple[str, str, int, str, bool]) -> dict:
    pair, arm, seed, teacher_path, smoke = task
    torch.set_num_threads(1)
    init_seed, order_seed = seeds_of(arm, seed)
    dataset = transfer_dataset(smoke) if arm == "kd_transfer" else load_dataset(pair, smoke)
    student = models.create(PROTOCOL[pair]["student"], dataset.num_classes, seed=init_seed)
    kwargs = fit_kwargs(pair, "student", smoke)
    start = time.perf_counter()
    if arm in TEACHER_ARMS:
        cached = teacher_targets(pair, teacher_path, arm == "kd_transfer", smoke)
        term = KDTerm(None, temperature=TEMPERATURE, weight=ALPHA, teacher_log_probs=lambda batch: cached[batch.index])
        result = fit(student, dataset, seed=order_seed, ce_weight=1.0 - ALPHA, loss_terms=[term], **kwargs)
    else:
        result = fit(student, dataset, seed=order_seed, **kwargs)
    return dict(
        pair=pair, arm=arm, seed=seed, init_seed=init_seed, order_seed=order_seed,
        accuracy=result.final_accuracy, train_seconds=result.train_seconds, wall_seconds=time.perf_counter() - start,
        predictions=predict(student, dataset.test).argmax(1).tolist(),
    )


def dump(out: dict) -> str:
    """Indented JSON with every list of numbers (seeds, predicted labels) kept on one line."""
    text = json.dumps(out, indent=1)
    return re.sub(r"\[[-\d.,eE\s]*\]", lambda m: re.sub(r"\s+", "", m.group(0)), text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds per MNIST-1D arm")
    parser.add_argument("--fashion-seeds", type=int, default=20, help="seeds per Fashion-MNIST arm (0 skips the pair)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny data and 20 steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_seeds = {"mnist1d": args.seeds, "fashion": args.fashion_seeds}
    pairs = [p for p in PROTOCOL if n_seeds[p] > 0]

    started = time.perf_counter()
    log = RunLog(args.out)
    results = log.records
    done = log.done("pair", "arm", "seed")
    teachers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, mp.get_context("spawn").Pool(args.workers) as pool:
        paths = {p: str(Path(tmp) / f"{p}_teacher.pt") for p in pairs}
        # The long Fashion-MNIST teacher starts first; runs that need no teacher fill the other worker meanwhile,
        # and each pair's KD runs are queued as soon as its teacher is saved.
        waiting = {p: pool.apply_async(train_teacher, ((p, args.smoke, paths[p]),)) for p in reversed(pairs)}
        todo = {p: [(p, arm, s, paths[p], args.smoke) for arm in PROTOCOL[p]["arms"] for s in range(n_seeds[p])
                    if (p, arm, s) not in done] for p in pairs}
        total = len(done) + sum(map(len, todo.values()))
        running = [pool.apply_async(run_one, (t,)) for p in reversed(pairs) for t in todo[p] if t[1] not in TEACHER_ARMS]
        while waiting or running:
            for p, job in list(waiting.items()):
                if job.ready():
                    teachers[p] = job.get()
                    del waiting[p]
                    print(f"{p}: teacher {PROTOCOL[p]['teacher']} test accuracy {teachers[p]['accuracy']:.4f} "
                          f"({teachers[p]['seconds']:.0f} s)", flush=True)
                    running += [pool.apply_async(run_one, (t,)) for t in todo[p] if t[1] in TEACHER_ARMS]
            for job in [j for j in running if j.ready()]:
                running.remove(job)
                record = job.get()
                log.add(record)
                print(f"[{len(results)}/{total}] {record['pair']} {record['arm']} seed {record['seed']}: "
                      f"{record['accuracy']:.4f} ({record['wall_seconds']:.1f} s)", flush=True)
            time.sleep(0.05)
    results.sort(key=lambda r: (list(PROTOCOL).index(r["pair"]), PROTOCOL[r["pair"]]["arms"].index(r["arm"]), r["seed"]))
    protocol = {}
    for p in pairs:
        spec = PROTOCOL[p]
        protocol[p] = dict(
            dataset=spec["dataset"], data=spec["data"], teacher=spec["teacher"], student=spec["student"],
            teacher_fit=spec["teacher_fit"], student_fit=spec["student_fit"], optimizer="adam", schedule="cosine",
            temperature=TEMPERATURE, alpha=ALPHA, arms=spec["arms"], seeds=list(range(n_seeds[p])),
            teacher_seed=0, teacher_accuracy=teachers[p]["accuracy"], teacher_predictions=teachers[p]["predictions"],
            test_labels=teachers[p]["test_labels"],
            **({"transfer_size": 1000 if args.smoke else TRANSFER_SIZE, "transfer_seed": 7} if p == "mnist1d" else {}),
        )
    out = dict(
        machine=machine(args.workers),
        smoke=args.smoke, wall_seconds=time.perf_counter() - started,
        seed_roles={"init": "init seed varies, order seed 0", "order": "init seed 0, order seed varies",
                    "alone/kd/kd_transfer": "init seed = order seed = seed"},
        protocol=protocol, results=results,
    )
    log.finish(out, dump(out))
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s, {args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
