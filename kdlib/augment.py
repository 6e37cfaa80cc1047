"""Augmentations that combine others or mix inputs, for the ``augment`` of a :class:`~kdlib.data.Dataset`.

An augmentation is any callable ``augment(x, generator) -> x`` applied to each training batch on its device
(:class:`~kdlib.data.RandomShift`, :class:`~kdlib.data.RandomCropFlip`). This module adds two:

* :class:`Compose` applies several in turn;
* :class:`MixInputs` mixes each input with another one of the batch, :math:`\\tilde x_i = \\lambda_i x_i +
  (1 - \\lambda_i) x_{\\pi(i)}` with :math:`\\lambda_i \\sim U(0, 1)` and :math:`\\pi` a random permutation: the
  input half of mixup (Zhang et al., 2018). Its labels stay those of :math:`x_i`, so it is meant for *function
  matching* (Beyer et al., 2022, "Knowledge distillation: A good teacher is patient and consistent"): the
  student matches the teacher on the mixed inputs with ``alpha=1`` (no cross-entropy), the teacher run live on
  the same mixed batch. Mixed inputs lie between the training examples, where a teacher's answers say most
  about its function and labels say nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Compose", "MixInputs", "mix_inputs"]

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def mix_inputs(x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mix each sample of a batch with a random other one, with a uniform weight (see the module docstring).

    The permutation and then the weights are drawn from ``generator`` (on its device, CPU by default), so a
    seeded generator gives the same batch on every device.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"mix_inputs needs a floating-point batch (N, ...), got {shape}")
    n = x.shape[0]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    partner = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
    lam = torch.rand(n, generator=generator, device=gen_device).to(x.device, x.dtype)
    lam = lam.reshape(n, *([1] * (x.ndim - 1)))
    return lam * x + (1 - lam) * x[partner]


@dataclass(frozen=True)
class MixInputs:
    """:func:`mix_inputs` as a dataset augmentation (labels are not mixed: use with ``alpha=1``)."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return mix_inputs(x, generator=generator)


class Compose:
    """Apply augmentations in order, each drawing from the same generator: ``Compose(RandomShift(4), MixInputs())``."""

    def __init__(self, *augments: Augment) -> None:
        bad = [type(a).__name__ for a in augments if not callable(a)]
        if not augments or bad:
            raise TypeError(f"Compose needs callables augment(x, generator), got {bad or 'none'}")
        self.augments = augments

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for augment in self.augments:
            x = augment(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.augments))})"
