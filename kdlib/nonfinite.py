"""What :func:`kdlib.train.fit` does when a step's loss or gradients are NaN or infinite.

``on_nonfinite="raise"`` raises ``FloatingPointError`` naming the step and the loss term that overflowed. On a
GPU, reading the loss on the host every step would stall the device (each ``float(loss)`` waits for all queued
kernels), so the check is recorded on the device and read every :data:`CHECK_EVERY` steps, before every
evaluation and checkpoint, and at the end: the error still names the first bad step, and no checkpoint is
written from weights that a non-finite step touched. On the CPU reading a value costs nothing and the check
runs every step.

``on_nonfinite="rollback"`` must decide before the optimizer step, so it reads the loss (and the gradient
norm) every step: it restores the state of the start of the step and skips that batch (see :func:`fit`).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from kdlib import distributed

MAX_ROLLBACKS = 3  # consecutive non-finite steps that on_nonfinite="rollback" skips before it gives up
CHECK_EVERY = 50  # steps between host reads of the deferred check (GPUs)
MODES = ("raise", "rollback")

__all__ = ["CHECK_EVERY", "MAX_ROLLBACKS", "NonFiniteGuard", "nonfinite_message"]


def nonfinite_message(step: int, names: Sequence[str], values: Sequence[float]) -> str:
    parts = [f"{name}={value:.4g}" for name, value in zip(names, values)]
    bad = [part for part, value in zip(parts, values) if not math.isfinite(value)]
    return (
        f"loss became non-finite at step {step} ({', '.join(bad) or 'the weighted sum overflowed'}; all terms: "
        f"{', '.join(parts)}). Lower the learning rate, set grad_clip=, or check the inputs for NaN."
    )


class NonFiniteGuard:
    """Checks each step's loss (and, for rollback, gradients); raises, or rolls the step back.

    Args:
        mode: ``"raise"`` or ``"rollback"``.
        parts: the training state (:class:`kdlib.run_state._Parts`) a rollback restores.
        names: the names of the loss parts, cross-entropy first, for the message.
        deferred: record the check on the device and read it every :data:`CHECK_EVERY` steps (mode ``"raise"``).
    """

    def __init__(self, mode: str, parts: Any, names: Sequence[str], *, deferred: bool) -> None:
        self.mode, self.parts, self.names = mode, parts, list(names)
        self.deferred = deferred and mode == "raise"
        self.snapshot: dict[str, Any] | None = None
        self.skipped: list[int] = []
        self.consecutive = 0
        self._bad: torch.Tensor | None = None  # deferred: [flag, first bad step, its loss parts...]

    def start_step(self) -> None:
        if self.mode == "rollback":
            self.snapshot = self.parts.snapshot()

    def loss_problem(self, step: int, loss: torch.Tensor, values: Sequence[torch.Tensor]) -> str | None:
        """``None`` when the step may go on; otherwise the message (the deferred check always says go on)."""
        if self.deferred:
            bad = ~torch.isfinite(loss.detach())
            dtype = torch.float32 if loss.device.type == "mps" else torch.float64  # MPS has no float64
            row = torch.cat([bad.to(dtype).view(1), torch.full((1,), float(step), dtype=dtype, device=loss.device),
                             torch.stack([v.detach().to(dtype) for v in values])])
            if self._bad is None:
                self._bad = torch.zeros_like(row)
            first = bad & (self._bad[0] == 0)
            self._bad = torch.where(first, row, self._bad)
            if step % CHECK_EVERY == 0:
                self.flush()
            return None
        finite = math.isfinite(float(loss.detach()))
        if distributed.is_distributed():  # every rank must skip the step, or none: DDP's backward waits for all
            bad_ranks = int(distributed.all_reduce_sum(torch.tensor([0.0 if finite else 1.0], device=loss.device)))
            if finite and bad_ranks:
                return f"the loss became non-finite at step {step} on another rank ({bad_ranks} of them)"
        if finite:
            return None
        return nonfinite_message(step, self.names, [float(v.detach()) for v in values])

    def gradient_problem(self, step: int, norm: torch.Tensor, loss: torch.Tensor) -> str | None:
        """For rollback: a finite loss can still give non-finite gradients."""
        if self.mode != "rollback" or math.isfinite(float(norm)):
            return None
        return (
            f"gradients became non-finite at step {step} (norm {float(norm):.4g}) although the loss "
            f"{float(loss.detach()):.4g} was finite. Lower the learning rate, set grad_clip=, or check the inputs."
        )

    def flush(self) -> None:
        """Raise now if a deferred check recorded a non-finite step (on any rank: all raise together)."""
        if self._bad is None:
            return
        row = self._bad.tolist()
        anywhere = float(distributed.all_reduce_sum(self._bad[:1])) if distributed.is_distributed() else row[0]
        if row[0]:
            raise FloatingPointError(nonfinite_message(int(row[1]), self.names, row[2:]))
        if anywhere:
            raise FloatingPointError("the loss became non-finite on another rank; its message has the details")

    def handle(self, step: int, problem: str, sched: torch.optim.lr_scheduler.LRScheduler) -> None:
        """Raise, or (rollback) restore the state of the start of the step and count the skipped step."""
        if self.mode == "raise":
            raise FloatingPointError(problem)
        if self.consecutive >= MAX_ROLLBACKS:
            raise FloatingPointError(
                f"{problem} on_nonfinite='rollback' gave up after {MAX_ROLLBACKS} consecutive rollbacks (it "
                f"skipped steps {step - MAX_ROLLBACKS}-{step - 1} too): skipping batches does not cure this run."
            )
        self.consecutive += 1
        self.skipped.append(step)
        self.parts.restore(self.snapshot)
        self.parts.opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the first step may be skipped before any optimizer step
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"), UserWarning)
            sched.step()  # the skipped step still counts: the schedule stays aligned with the step number

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": list(self.skipped), "consecutive_rollbacks": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = [int(s) for s in state["skipped_steps"]]
        self.consecutive = int(state["consecutive_rollbacks"])
