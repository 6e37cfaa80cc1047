"""Tiny synthetic data and models shared by the kdlib unit tests (fast, deterministic, CPU)."""

from __future__ import annotations

import torch
from torch import nn

from kdlib.data import Dataset, Split


def blobs(n_train: int = 96, n_test: int = 48, features: int = 8, classes: int = 3, seed: int = 0) -> Dataset:
    """Linearly separable Gaussian blobs: any reasonable trainer reaches high accuracy in a few steps."""
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(classes, features, generator=g)

    def split(n: int) -> Split:
        y = torch.arange(n) % classes
        return Split(centers[y] + torch.randn(n, features, generator=g), y)

    return Dataset("blobs", split(n_train), split(n_test), classes)


def mlp(features: int = 8, classes: int = 3, hidden: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the module's state, to check later what changed."""
    return {k: v.clone() for k, v in module.state_dict().items()}
