"""Optimizers and learning-rate schedules by name, for :func:`kdlib.train.fit`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["OptimizerSpec", "ScheduleSpec", "lr_factor", "make_optimizer"]

OptimizerSpec = str | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
ScheduleSpec = str | Callable[[int], float] | None

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("constant", "cosine", "multistep")


def make_optimizer(
    spec: OptimizerSpec, params: list[nn.Parameter], *, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """Build the optimizer named by ``spec`` ("adam", "adamw", "sgd") or call ``spec(params)``."""
    if callable(spec):
        return spec(params)
    if spec == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if spec == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if spec == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {spec!r}; use one of {_OPTIMIZERS} or a callable params -> optimizer")


def lr_factor(
    schedule: ScheduleSpec, total_steps: int, steps_per_epoch: int, milestones: Sequence[int], gamma: float
) -> Callable[[int], float]:
    """Multiplier of the base learning rate as a function of the optimizer step.

    ``"cosine"`` anneals to 0 over ``total_steps``; ``"multistep"`` multiplies by ``gamma`` at each epoch in
    ``milestones`` (the RepDistiller protocol uses 150/180/210 of 240); ``"constant"``/``None`` keeps it.
    """
    if schedule is None or schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule == "multistep":
        bounds = sorted(m * steps_per_epoch for m in milestones)
        return lambda step: gamma ** sum(step >= b for b in bounds)
    if callable(schedule):
        return schedule
    raise ValueError(f"unknown schedule {schedule!r}; use one of {_SCHEDULES}, None, or a callable step -> factor")
