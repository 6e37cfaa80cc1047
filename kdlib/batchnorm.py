"""BatchNorm recalibration: re-estimate the running statistics of a trained, pruned or otherwise edited model.

A BatchNorm layer in eval mode computes :math:`y = \\gamma (x - \\mu) / \\sqrt{\\sigma^2 + \\epsilon} + \\beta`
with the running mean :math:`\\mu` and variance :math:`\\sigma^2` collected while the *original* network
trained. Pruning channels changes what every later layer receives: a conv that lost some of its input
channels outputs a differently scaled and shifted signal, so each BatchNorm normalizes with statistics of a
distribution that no longer exists, the errors compound layer after layer, and a pruned network can fall to
chance accuracy even when its remaining weights are good. Re-estimating :math:`\\mu, \\sigma^2` on a few
hundred training images, with no gradient step, repairs most of that. Li et al. (2020, "EagleEye: Fast
Sub-net Evaluation for Efficient Neural Network Pruning", ECCV) call this *adaptive batch normalization* and
use it to rank pruned candidates before fine-tuning them.

Training itself can leave the statistics behind the weights: with a small momentum (torchvision's
MobileNetV3 uses 0.01) the running averages remember weights of many steps ago. ``fit(..., recalibrate_bn=True)``
re-estimates them after the last step (:func:`recalibrate_from_training_data`), and :func:`fit` warns when
a model with BatchNorm scores far worse on its test data than on its training data
(:func:`warn_if_batchnorm_collapsed`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kdlib import distributed
from kdlib.data import Dataset, Split
from kdlib.sources import as_source, steps_per_epoch

__all__ = ["batchnorm_layers", "recalibrate_batchnorm", "recalibrate_from_training_data", "warn_if_batchnorm_collapsed"]

_BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorm layers of ``model`` that keep running statistics, as ``(name, module)`` pairs."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _inputs(data: Any, samples: int) -> Split | torch.Tensor:
    """The inputs of ``data``: a Dataset's training split, a Split, or the tensor of an ``(x, y)`` tuple or ``x``
    itself (a Split is kept as it is, so that batches are read with :meth:`~kdlib.data.Split.take`); from a torch
    dataset or DataLoader, a seeded random sample of ``samples`` training inputs."""
    if isinstance(data, Dataset):
        data = data.train
    if isinstance(data, Split):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0]
    if isinstance(data, torch.Tensor):
        return data
    try:
        return as_source(data).sample(samples)[0]
    except TypeError:
        raise TypeError(
            f"data must be a kdlib Dataset/Split, a torch Dataset or DataLoader, an (x, y) tuple or an input tensor, "
            f"got {type(data).__name__}"
        ) from None


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def recalibrate_batchnorm(
    model: nn.Module,
    data: Dataset | Split | torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    *,
    batches: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them from ``data`` (in place).

    For each BatchNorm layer the running statistics are reset (:math:`\\mu = 0`, :math:`\\sigma^2 = 1`) and
    its momentum is set to ``None``, PyTorch's cumulative average: after :math:`K` batches,

    .. math::
        \\mu = \\frac{1}{K} \\sum_{k=1}^{K} \\bar{x}_k, \\qquad
        \\sigma^2 = \\frac{1}{K} \\sum_{k=1}^{K} s_k^2,

    where :math:`\\bar{x}_k` and :math:`s_k^2` are the per-channel mean and unbiased variance of the layer's
    input in batch :math:`k`. With equal batches :math:`\\mu` is exactly the mean over all the images used.
    Then ``batches`` forward passes run under :func:`torch.no_grad` with only the BatchNorm layers in train
    mode (dropout stays off, so the statistics are those the model sees at test time) on a seeded random
    sample of ``batches * batch_size`` inputs (as many whole batches as ``data`` holds, or a single batch
    of all of it if it holds less than one). No weight changes; afterwards
    every momentum and every module's train/eval mode are restored.

    Why: pruning changes the input distribution of every BatchNorm after the first pruned layer, so the
    stored statistics are stale (see the module docstring; Li et al. 2020, EagleEye, "adaptive BN").

    Args:
        model: the model to recalibrate; modified in place and returned.
        data: a :class:`~kdlib.data.Dataset` (its training split is used), a :class:`~kdlib.data.Split`, an
            ``(x, y)`` tuple or an input tensor. Use training data, never the test set.
        batches: number of forward batches.
        batch_size: inputs per batch.
        seed: seed of the random sample of inputs.
        device: where to run; default: the device of the model's first parameter (CPU if it has none).

    Returns:
        ``model``, with fresh running statistics.

    Raises:
        ValueError: a model with no BatchNorm layer that tracks running statistics, empty data, or
            ``batches``/``batch_size`` that is not a positive integer.
        TypeError: ``data`` of an unsupported type.
    """
    _check_positive("batches", batches)
    _check_positive("batch_size", batch_size)
    layers = [m for _, m in batchnorm_layers(model)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layer with running statistics: nothing to recalibrate"
        )
    x = _inputs(data, batches * batch_size)
    if (isinstance(x, torch.Tensor) and x.ndim == 0) or len(x) == 0:
        raise ValueError("data is empty: BatchNorm statistics need at least one input")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))

    # Whole batches only, so every batch gets the same weight in the cumulative average.
    n = min(batches, len(x) // batch_size) * batch_size or len(x)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)[:n].to(x.device)
    take = x.take if isinstance(x, Split) else x.__getitem__

    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
            m.train()
        with torch.no_grad():
            for start in range(0, n, batch_size):
                model(take(order[start : start + batch_size]).to(device))
    finally:
        for m in layers:
            m.momentum = momenta[m]
        for m, training in modes.items():
            m.training = training
    return model


def warn_if_batchnorm_collapsed(model: nn.Module, record: Mapping[str, float]) -> None:
    """Warn when a model with BatchNorm fits its training data but fails at test time (a gap of over 50 points):
    its running statistics most likely do not describe its weights (a low momentum, or weights that moved fast
    late in training). Called by :func:`kdlib.train.fit` after its last evaluation."""
    norms = [m for _, m in batchnorm_layers(model)]
    train, test = record.get("train_accuracy", math.nan), record.get("test_accuracy", math.nan)
    if norms and train - test > 0.5:
        momenta = sorted({m.momentum for m in norms}, key=lambda m: -1 if m is None else m)
        warnings.warn(
            f"test accuracy {test:.1%} is far below training accuracy {train:.1%} and the model has BatchNorm layers "
            f"(momentum {momenta}): their running statistics may not describe the trained weights. Train with "
            "fit(..., recalibrate_bn=True), or call kdlib.batchnorm.recalibrate_batchnorm(model, training data).",
            RuntimeWarning, stacklevel=3,
        )


def recalibrate_from_training_data(model: nn.Module, source: Any, batch_size: int, seed: int, batches: int = 20) -> None:
    """:func:`recalibrate_batchnorm` on ``batches`` training batches of a :mod:`kdlib.sources` source, as training
    draws them; under ``torchrun`` rank 0's statistics are copied to every rank. What ``fit(recalibrate_bn=True)``
    runs after its last step."""
    if not batchnorm_layers(model):
        return
    stream = source.stream(batch_size, torch.Generator().manual_seed(seed), seed)
    count = min(batches, steps_per_epoch(source.num_train, batch_size, 1))
    inputs = torch.cat([stream.next().x for _ in range(count)])
    recalibrate_batchnorm(model, inputs, batches=count, batch_size=batch_size, device=inputs.device)
    distributed.broadcast_buffers(model)
