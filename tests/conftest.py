"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tiny import blobs, mlp

from kdlib import data
from kdlib.train import fit


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Unit tests use tiny batches that gain nothing from threads, and on a busy machine OpenMP threads spin:
    # one thread is several times faster. Notebook kernels are separate processes and keep their settings.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    """An MLP trained on the blobs, the teacher of the distillation tests."""
    model = mlp(hidden=32, seed=1)
    fit(model, blobs(), epochs=5, batch_size=16, lr=1e-2)
    return model


@pytest.fixture(scope="session")
def digits() -> data.Dataset:
    """scikit-learn's 8x8 digits as a kdlib Dataset on the CPU, loaded once (tests read it, none modifies it)."""
    return data.digits(device="cpu")
