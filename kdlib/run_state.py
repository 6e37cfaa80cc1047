"""The resumable state of a :func:`kdlib.train.fit` run: what a checkpoint holds and how it is restored.

A step changes the model, optimizer, LR schedule, gradient scaler and loss-term modules (:class:`_Parts`), the
batch stream's position (:class:`kdlib.sources.TensorStream` or :class:`~kdlib.sources.LoaderStream`), and the loop's own bookkeeping (:class:`_Loop`, :class:`_Running`).
Saving all of them, plus every RNG (:func:`kdlib.checkpoint.capture_rng_state`), is what makes a resumed run
bit-identical to an uninterrupted one. :func:`_fingerprint` records what must not change between the two.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlib import distributed
from kdlib.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from kdlib.data import UNLABELED

CHECKPOINT_FORMAT = "kdlib.fit/2"

class ResumeMismatchError(CheckpointError):
    """``fit(..., resume=True)`` found a checkpoint written by a run with other settings, model, data or terms."""


def _check_checkpoint_args(checkpoint: object, checkpoint_every: object, resume: object) -> Path | None:
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if checkpoint is None:
        if checkpoint_every is not None:
            raise ValueError("checkpoint_every= needs checkpoint=<file path> to save to")
        if resume:
            raise ValueError("resume=True needs checkpoint=<file path> to resume from")
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got {type(checkpoint).__name__}")
    if checkpoint_every is not None and (
        isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise ValueError(f"checkpoint_every must be a positive int (steps), got {checkpoint_every!r}")
    path = Path(checkpoint)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint={str(path)!r} is a directory; give a file name such as {path / 'last.pt'}")
    return path


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable_repr(obj: object) -> str | None:
    """``repr(obj)`` without memory addresses (``<function f at 0x7f..>`` -> ``<function f>``), the same in
    every process; ``None`` and strings as they are."""
    if obj is None or isinstance(obj, str):
        return obj
    return _ADDRESS.sub("", repr(obj))


def weights_digest(model: nn.Module, samples: int = 64) -> str:
    """A cheap fingerprint of a model's weights: each tensor's name, shape, sum and ``samples`` evenly spaced
    entries. Two different trainings (or a random model and a trained one) differ in it; hashing every byte of a
    large teacher at every call would cost seconds."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        if flat.numel():
            pick = torch.linspace(0, flat.numel() - 1, min(samples, flat.numel()), device=flat.device).long()
            h.update(repr(flat[pick].double().tolist()).encode())
            h.update(repr(float(flat.double().sum())).encode())
    return h.hexdigest()[:16]


def _fingerprint(model: nn.Module, source: Any, loss_terms: Sequence[Any], frozen: Sequence[nn.Module],
                 **settings: Any) -> dict[str, Any]:
    """What must be equal for a checkpoint to continue a run: every setting of the trajectory, the model's
    architecture (its repr and tensor shapes), the data (sizes and a sample of its contents), the loss terms and
    the weights of the frozen models they read (the teacher). Excluded on purpose: ``device``, ``progress``,
    ``desc`` and ``checkpoint_every``."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items())
    augment = getattr(getattr(source, "data", None), "augment", None)
    return {
        **{k: _plain(v) for k, v in settings.items()},
        "model": f"{type(model).__name__} with {sum(p.numel() for p in model.parameters())} parameters",
        "model_architecture": hashlib.sha256((_stable_repr(model) + shapes).encode()).hexdigest()[:16],
        **source.fingerprint(),
        "augment": _stable_repr(augment),
        "loss_terms": [f"{t.name} (weight {t.weight!r}): {_stable_repr(t)}" for t in loss_terms],
        "frozen_models": [f"{type(m).__name__}: {weights_digest(m)}" for m in frozen],
    }


def _plain(value: Any) -> Any:
    """A setting as a value ``torch.load(weights_only=True)`` accepts: numbers (NumPy's too) as Python numbers,
    sequences as lists, anything else as its stable repr."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return _stable_repr(value)


def _check_resumable(state: dict[str, Any], fingerprint: dict[str, Any], path: Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a checkpoint of kdlib.train.fit (format {state.get('format')!r}, expected "
            f"{CHECKPOINT_FORMAT!r}); pass another checkpoint= path, or resume=False to overwrite it"
        )
    saved = state.get("fingerprint", {})
    missing = object()
    differ = [k for k in [*fingerprint, *(k for k in saved if k not in fingerprint)]
              if saved.get(k, missing) != fingerprint.get(k, missing)]
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k, '(absent)')!r} in the checkpoint, {fingerprint.get(k, '(absent)')!r} "
                          "in this call" for k in differ[:4])
        more = f" (and {len(differ) - 4} more: {', '.join(differ[4:])})" if len(differ) > 4 else ""
        raise ResumeMismatchError(
            f"cannot resume from {path}: it was written by a run with different settings, so continuing it would "
            f"not reproduce either run. {len(differ)} setting(s) differ: {shown}{more}. Call fit with the same "
            "settings, or start afresh with resume=False (which overwrites the file) or another checkpoint= path"
        )


def _clone(obj: Any) -> Any:
    """A deep copy of tensors inside dicts, lists and tuples (other values are immutable here)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        out = type(obj)((k, _clone(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module's state_dict keeps its version metadata
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients, computed as ``clip_grad_norm_`` computes it (without clipping)."""
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


@dataclass
class _Parts:
    """The objects whose state a step changes: model, optimizer, schedule, gradient scaler, loss-term modules."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    terms: list[nn.Module]

    def state_dict(self) -> dict[str, Any]:
        sched = dict(self.sched.state_dict())
        sched.pop("lr_lambdas", None)  # the schedule itself is code: rebuilt from the call's arguments
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": sched,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "terms": [t.state_dict() for t in self.terms],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(self.sched.lr_lambdas)})
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        for term, term_state in zip(self.terms, state["terms"], strict=True):
            term.load_state_dict(term_state)

    def snapshot(self) -> dict[str, Any]:
        """A copy of the state (tensors cloned), for :meth:`restore` after a non-finite step."""
        return _clone(self.state_dict())

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.load_state_dict(_clone(snapshot))


@dataclass
class _Loop:
    """The loop's own bookkeeping: running averages, history and time."""

    running: _Running
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running.state_dict(), "history": [dict(r) for r in self.history],
                "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running.load_state_dict(state["running"])
        self.history = [dict(r) for r in state["history"]]
        self.train_seconds = float(state["train_seconds"])


class _Running:
    """Running sums of the loss, the accuracy, each term and the gradient norm since the last evaluation.

    They stay on the training device and are read once per evaluation: reading a GPU value on the host every
    step (``float(loss)``) would wait for the step's kernels and stall the queue.
    """

    # positions in the vector of sums; the loss terms follow
    LOSS, CORRECT, SEEN, GRAD_TOTAL, GRAD_COUNT = range(5)

    def __init__(self, term_names: list[str], device: torch.device) -> None:
        self.names = term_names
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sums = torch.zeros(5 + len(term_names), dtype=dtype, device=device)
        self.batches = 0

    def add_grad_norm(self, norm: torch.Tensor) -> None:
        """Count an applied step's global gradient norm; a non-finite one (a step the fp16 scaler skips) is left out."""
        finite = torch.isfinite(norm)
        self.sums[self.GRAD_TOTAL] += torch.where(finite, norm, 0.0).to(self.sums.dtype)
        self.sums[self.GRAD_COUNT] += finite.to(self.sums.dtype)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, terms: list[torch.Tensor]) -> None:
        values = [loss.detach(), (logits.argmax(1) == y).sum(), (y != UNLABELED).sum()]
        values += [t.detach() for t in terms]
        stacked = torch.stack([v.to(self.sums.dtype) for v in values])
        self.sums[: 3] += stacked[:3]
        self.sums[5:] += stacked[3:]
        self.batches += 1

    def summary(self) -> dict[str, float]:
        sums = distributed.all_reduce_sum(self.sums).tolist()
        batches = self.batches * distributed.world_size()
        seen, grad_count = sums[self.SEEN], sums[self.GRAD_COUNT]
        count = batches or float("nan")  # every batch since the last evaluation was skipped (rollback)
        out = {"train_loss": sums[self.LOSS] / count, "train_accuracy": sums[self.CORRECT] / seen if seen else float("nan")}
        out.update({f"loss/{n}": v / count for n, v in zip(self.names, sums[5:])})
        out["grad_norm"] = sums[self.GRAD_TOTAL] / grad_count if grad_count else float("nan")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.cpu(), "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sums = state["sums"]
        if sums.shape != self.sums.shape:
            raise CheckpointError(f"the checkpoint logs {sums.shape[0] - 5} loss terms, this run {len(self.names)}")
        self.sums = sums.to(self.sums.device, self.sums.dtype)
        self.batches = int(state["batches"])


def resume_run(path: Path, fingerprint: dict[str, Any], parts: _Parts, stream: Any, loop: _Loop, guard: Any) -> int:
    """Load the run saved at ``path`` (when the file exists on every rank) and return its step; 0 for a fresh start.

    Raises :class:`ResumeMismatchError` when the checkpoint comes from a run with other settings, data, model,
    loss terms or teacher.
    """
    found = path.exists()
    distributed.check_same_on_all_ranks(str(found), f"whether {path} exists")
    if not found:
        return 0
    state = load_checkpoint(path, map_location="cpu")
    _check_resumable(state, fingerprint, path)
    parts.load_state_dict(state)
    stream.load_state_dict(state["stream"])
    loop.load_state_dict(state)
    guard.load_state_dict(state)
    restore_rng_state(state["rng"])  # last: nothing may draw random numbers between this and the next step
    return int(state["step"])


def save_run(path: Path, fingerprint: dict[str, Any], step: int, parts: _Parts, stream: Any, loop: _Loop,
             guard: Any) -> None:
    """Save everything :func:`resume_run` needs (rank 0 writes; every rank waits until the file is complete)."""
    if distributed.is_main():
        save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": step, **parts.state_dict(),
            "stream": stream.state_dict(), "rng": capture_rng_state(), **loop.state_dict(), **guard.state_dict(),
        })
    distributed.barrier()
