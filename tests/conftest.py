"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


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
