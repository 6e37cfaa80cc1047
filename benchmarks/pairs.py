"""The teacher/student pairs of the distillation chapters and the protocol every one of their benchmarks follows.

Chapters 3, 5, 6 and 7 measure distillation on the same pairs, under the same rules (``kdlib.protocol``):

* **Data**: MNIST-1D (4,000 training / 1,000 test signals) with random shifts of up to 4 steps, applied to every
  training batch of every arm, the student trained alone included.
* **Teacher**: the MNIST-1D CNN (25 channels), trained with the same shifts, 6,000 steps of batch 100, Adam at
  1e-2, cosine schedule. ``augment=False`` gives the unregularized teacher of the book's first edition.
* **Students**: the 40-100-100-10 MLP (``"mlp"``: a different family, the CNN's shift invariance must be taught)
  and the same CNN with 8 channels (``"narrow"``: one family, 6× fewer parameters than the teacher).
* **Budget**: :data:`STUDENT_STEPS` steps of batch 100 (Adam, cosine), chosen from chapter 3's patience curve.
* **Tuning**: on a validation split of 500 training signals (``holdout``), one seed, the same number of
  configurations for every arm: the learning rate (:data:`LEARNING_RATES`) times three values of the arm's
  own main knob (:data:`ALONE_GRID`, :data:`KD_GRID`, :data:`FM_GRID`).
* **Reporting**: final-step test accuracy, seeds paired across arms, Holm-corrected verdicts.

The pool helpers run independent runs in worker processes of one thread each and log every finished run
(``sweep.RunLog``), so an interrupted sweep resumes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing as mp
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kdlib import data as kdata
from kdlib import models
from kdlib.augment import Compose, MixInputs
from kdlib.profile import count_parameters
from kdlib.protocol import grid, holdout
from kdlib.train import fit
from sweep import RunLog

STUDENT_STEPS = 24_000
BATCH_SIZE = 100
VALIDATION_SIZE = 500
TEACHER_FIT = dict(steps=6000, batch_size=BATCH_SIZE, lr=1e-2)
LEARNING_RATES = (3e-3, 1e-2, 3e-2)
ALPHA = 0.9  # Hinton et al.: "a considerably lower weight on the second objective" (the labels' cross-entropy)
REGULARIZERS = {
    "none": {},
    "label smoothing": {"label_smoothing": 0.1},
    "weight decay": {"optimizer": "adamw", "weight_decay": 1e-2},
}
#: The student trained alone: learning rate x regularizer.
ALONE_GRID = grid(lr=LEARNING_RATES, regularizer=list(REGULARIZERS))
#: Hinton's KD with a consistent teacher: learning rate x temperature (alpha = 0.9).
KD_GRID = grid(lr=LEARNING_RATES, temperature=[1.0, 4.0, 20.0])
#: Function matching on mixed inputs (alpha = 1): learning rate x temperature.
FM_GRID = grid(lr=LEARNING_RATES, temperature=[1.0, 4.0, 20.0])


@dataclass(frozen=True)
class Pair:
    """A teacher architecture and a student architecture (``(name, kwargs)`` for :func:`kdlib.models.create`)."""

    title: str
    teacher: tuple[str, dict]
    student: tuple[str, dict]

    def make_student(self, seed: int) -> torch.nn.Module:
        return models.create(self.student[0], 10, seed=seed, **self.student[1])

    def make_teacher(self, seed: int | None = None, **overrides: object) -> torch.nn.Module:
        return models.create(self.teacher[0], 10, seed=seed, **{**self.teacher[1], **overrides})


PAIRS = {
    "mlp": Pair("MNIST-1D: CNN → MLP", ("mnist1d_cnn", {}), ("mlp", {})),
    "narrow": Pair("MNIST-1D: CNN → 8-channel CNN", ("mnist1d_cnn", {}), ("mnist1d_cnn", {"channels": 8})),
}


@dataclass(frozen=True)
class Settings:
    """What smoke mode shrinks: the data and the budgets."""

    smoke: bool = False
    steps: int = STUDENT_STEPS
    teacher_steps: int = TEACHER_FIT["steps"]

    @staticmethod
    def make(smoke: bool, steps: int = STUDENT_STEPS) -> Settings:
        return Settings(True, 30, 30) if smoke else Settings(False, steps)


@functools.cache
def mnist1d(smoke: bool, augment: bool = True) -> kdata.Dataset:
    """MNIST-1D (with shifts unless ``augment=False``), built once per process."""
    return kdata.mnist1d(augment=augment, device="cpu", **({"num_samples": 500} if smoke else {}))


def view(name: str, smoke: bool) -> kdata.Dataset:
    """The named variant of the data: ``"shifts"`` (default), ``"clean"``, ``"mixup"`` (shifts, then mixed inputs),
    ``"transfer"`` (shifts, plus 20,000 unlabeled signals), and each with ``"/validation"`` for tuning."""
    base, _, split = name.partition("/")
    if base == "clean":
        out = mnist1d(smoke, augment=False)
    elif base in ("shifts", "mixup", "transfer"):
        out = mnist1d(smoke)
        if base == "mixup":
            out = replace(out, augment=Compose(out.augment, MixInputs()))
        if base == "transfer":
            out = kdata.with_unlabeled(out, transfer_inputs(smoke))
    else:
        raise ValueError(f"unknown data view {name!r}")
    if split == "validation":
        out = holdout(out, 50 if smoke else VALIDATION_SIZE, seed=0)
    return out


@functools.cache
def transfer_inputs(smoke: bool, size: int = 20_000) -> torch.Tensor:
    """Fresh MNIST-1D signals from another generator seed: an unlabeled transfer set."""
    size = 200 if smoke else size
    return kdata.mnist1d(num_samples=size * 5 // 4 + 10, seed=7, device="cpu").train.x[:size]


def train_teacher(pair: Pair, seed: int, settings: Settings, *, augment: bool = True) -> tuple[torch.nn.Module, dict]:
    """The pair's teacher from ``seed`` (with the data's shifts unless ``augment=False``) and its record."""
    model = pair.make_teacher(seed)
    data = mnist1d(settings.smoke, augment)
    fit_kwargs = {**TEACHER_FIT, "steps": settings.teacher_steps}
    result = fit(model, data, seed=seed, progress=False, **fit_kwargs)
    return model, dict(seed=seed, augment=augment, accuracy=result.final_accuracy, params=count_parameters(model),
                       fit=fit_kwargs)


def load_model(make: Callable[[], torch.nn.Module], path: Path) -> torch.nn.Module:
    model = make()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def regularized(config: dict) -> dict:
    """A configuration of :data:`ALONE_GRID` as ``fit`` keyword arguments."""
    out = {k: v for k, v in config.items() if k != "regularizer"}
    return {**out, **REGULARIZERS[config.get("regularizer", "none")]}


def settings_key(config: dict) -> str:
    """How a run record names its configuration, so that the tuning runs of a grid can be looked up."""
    return repr(sorted(config.items()))


def best_config(records: Iterable[dict], grid: list[dict]) -> dict:
    """The configuration of ``grid`` whose run in ``records`` (tuning runs of one arm) has the best final accuracy.

    The first one wins a tie; a configuration that diverged (NaN) or has no run counts as -1.
    """
    scores = {r["settings_key"]: r.get("final_accuracy") for r in records}
    return max(grid, key=lambda c: _score(scores.get(settings_key(c))))


def _score(value: float | None) -> float:
    return -1.0 if value is None or value != value else value


def pool_runs(run: Callable[[dict], dict], tasks: Iterable[dict], log: RunLog, keys: tuple[str, ...], workers: int,
              describe: Callable[[dict], str]) -> None:
    """Run every task not yet in ``log`` (matched on ``keys``) in ``workers`` processes; log each as it ends.

    With one worker the runs happen in this process (the same results, without a process to start).
    """
    done = log.done(*keys)
    todo = [t for t in tasks if tuple(t[k] for k in keys) not in done]
    if not todo:
        return
    with contextlib.ExitStack() as stack:
        if workers > 1:
            records = stack.enter_context(mp.get_context("spawn").Pool(workers)).imap_unordered(run, todo)
        else:
            records = map(run, todo)
        for i, record in enumerate(records, start=1):
            log.add(record)
            print(f"[{i}/{len(todo)}] {describe(record)}", flush=True)


def timed(fn: Callable[[], dict]) -> dict:
    start = time.perf_counter()
    record = fn()
    record["wall_seconds"] = time.perf_counter() - start
    return record


RESULTS = Path(__file__).parent / "results"
#: Which benchmark tuned each pair's student-alone and KD settings on the validation split.
TUNED_BY = {"mlp": "kd_protocol.json", "narrow": "method_zoo.json"}


def tuned_settings(pair_name: str, smoke: bool) -> dict[str, dict]:
    """``{"alone": fit kwargs, "kd": distill kwargs}`` as chosen on the validation split for a pair.

    They are read from the results of the benchmark that tuned them (:data:`TUNED_BY`), so later chapters reuse
    chapter 3's and chapter 5's choices instead of copies of them; run those benchmarks first.
    """
    if smoke:
        return {"alone": {"lr": 1e-2}, "kd": {"lr": 1e-2, "temperature": 4.0, "alpha": ALPHA}}
    file = RESULTS / TUNED_BY[pair_name]
    if not file.exists():
        raise SystemExit(f"{file} is missing: run benchmarks/{file.stem}.py first (it tunes the {pair_name} pair)")
    tuned = json.loads(file.read_text())["tuned"]
    alone = tuned["alone"] if "alone" in tuned else tuned["student"]
    kd = dict(tuned["kd"])
    # A recipe with separate weights, ce_weight * CE + weight * KD, is alpha = weight / (weight + ce_weight) up to scale.
    alpha = kd["weight"] / (kd["weight"] + kd["ce_weight"]) if "ce_weight" in kd else ALPHA
    out_kd = {"lr": kd["lr"], "temperature": kd.get("temperature", kd.get("T")), "alpha": alpha}
    return {"alone": regularized(alone), "kd": out_kd}
