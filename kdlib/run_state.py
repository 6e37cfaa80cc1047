"""The resumable state of a :func:`kdlib.train.fit` run: what a checkpoint holds and how it is restored.

A step changes the model, optimizer, LR schedule, gradient scaler and loss-term modules (:class:`_Parts`), the
batch stream's position (:class:`_BatchStream`), and the loop's own bookkeeping (:class:`_Loop`, :class:`_Running`).
Saving all of them, plus every RNG (:func:`kdlib.checkpoint.capture_rng_state`), is what makes a resumed run
bit-identical to an uninterrupted one. :func:`_fingerprint` records what must not change between the two.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlib.checkpoint import CheckpointError
from kdlib.data import UNLABELED, Augment, Batch, Dataset, Split

CHECKPOINT_FORMAT = "kdlib.fit/1"

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


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _fingerprint(model: nn.Module, data: Dataset, loss_terms: Sequence[Any], **settings: Any) -> dict[str, Any]:
    """What must be equal for a checkpoint to continue a run: every setting of the trajectory, the model's
    architecture (its repr and tensor shapes), the data (sizes and a hash of its contents) and the loss terms.
    Excluded on purpose: ``device``, ``progress``, ``desc`` and ``checkpoint_every``."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items())
    train, test = data.train, data.test
    return {
        **{k: _plain(v) for k, v in settings.items()},
        "model": f"{type(model).__name__} with {sum(p.numel() for p in model.parameters())} parameters",
        "model_architecture": hashlib.sha256((_stable_repr(model) + shapes).encode()).hexdigest()[:16],
        "data": f"{data.name}: {len(train)} train / {len(test)} test samples of shape {data.input_shape}, "
        f"{data.num_classes} classes",
        "data_contents": _digest(train.x, train.y, test.x, test.y),
        "augment": _stable_repr(data.augment),
        "loss_terms": [f"{t.name} (weight {t.weight!r}): {_stable_repr(t)}" for t in loss_terms],
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


class _BatchStream:
    """Shuffled training batches, epoch after epoch, that can be saved and resumed in the middle of an epoch.

    Draws exactly what ``kdlib.data.batches(split, batch_size, shuffle=True, generator=g, augment=a)`` draws
    epoch after epoch: a permutation from ``g`` when an epoch starts, then per batch whatever ``augment`` draws
    from ``g``. Its state is the generator's state, the current epoch's permutation and the position in it.
    """

    def __init__(self, split: Split, batch_size: int, generator: torch.Generator, augment: Augment | None) -> None:
        self.split, self.batch_size, self.generator, self.augment = split, batch_size, generator, augment
        self.order: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> Batch:
        n = len(self.split)
        if self.order is None or self.pos >= n:
            order = torch.randperm(n, generator=self.generator, device=self.generator.device)
            self.order, self.pos = order.to(self.split.device), 0
        index = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        x = self.split.x[index]
        if self.augment is not None:
            x = self.augment(x, self.generator)
        return Batch(x, self.split.y[index], index)

    def state_dict(self) -> dict[str, Any]:
        order = None if self.order is None else self.order.cpu()
        return {"generator": self.generator.get_state(), "order": order, "pos": int(self.pos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = None if state["order"] is None else state["order"].to(self.split.device)
        self.pos = int(state["pos"])


@dataclass
class _Loop:
    """The loop's own bookkeeping: running averages, history, time, and the rollback counters."""

    running: _Running
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    skipped: list[int] = field(default_factory=list)
    consecutive: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "running": self.running.state_dict(),
            "history": [dict(r) for r in self.history],
            "train_seconds": self.train_seconds,
            "skipped_steps": list(self.skipped),
            "consecutive_rollbacks": self.consecutive,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running.load_state_dict(state["running"])
        self.history = [dict(r) for r in state["history"]]
        self.train_seconds = float(state["train_seconds"])
        self.skipped = [int(s) for s in state["skipped_steps"]]
        self.consecutive = int(state["consecutive_rollbacks"])


class _Running:
    """Running means of the loss, the accuracy, each term and the gradient norm since the last evaluation."""

    def __init__(self, term_names: list[str]) -> None:
        self.names = term_names
        self.loss = 0.0
        self.correct = 0.0
        self.seen = 0
        self.batches = 0
        self.terms = [0.0] * len(term_names)
        self.grad_total = 0.0
        self.grad_count = 0

    def add_grad_norm(self, norm: torch.Tensor | float) -> None:
        """Count an applied step's global gradient norm; a non-finite one (a step the fp16 scaler skips) is left out."""
        value = float(norm)
        if math.isfinite(value):
            self.grad_total += value
            self.grad_count += 1

    def add(self, loss: float, logits: torch.Tensor, y: torch.Tensor, terms: list[torch.Tensor]) -> None:
        self.loss += loss
        labeled = y != UNLABELED
        self.correct += float((logits.argmax(1) == y).sum())
        self.seen += int(labeled.sum())
        self.batches += 1
        for i, value in enumerate(terms):
            self.terms[i] += float(value.detach())

    def summary(self) -> dict[str, float]:
        accuracy = self.correct / self.seen if self.seen else float("nan")
        count = self.batches or float("nan")  # every batch since the last evaluation was skipped (rollback)
        out = {"train_loss": self.loss / count, "train_accuracy": accuracy}
        out.update({f"loss/{n}": v / count for n, v in zip(self.names, self.terms)})
        out["grad_norm"] = self.grad_total / self.grad_count if self.grad_count else float("nan")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "correct": self.correct, "seen": self.seen, "batches": self.batches,
                "terms": list(self.terms), "grad_total": self.grad_total, "grad_count": self.grad_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["terms"]) != len(self.names):
            raise CheckpointError(f"the checkpoint logs {len(state['terms'])} loss terms, this run {len(self.names)}")
        self.loss, self.correct = float(state["loss"]), float(state["correct"])
        self.seen, self.batches = int(state["seen"]), int(state["batches"])
        self.terms = [float(v) for v in state["terms"]]
        self.grad_total, self.grad_count = float(state.get("grad_total", 0.0)), int(state.get("grad_count", 0))
