"""Device resolution: one code path for CPU, CUDA and MPS.

Every public kdlib function takes ``device=`` (``"auto"``, a string or a :class:`torch.device`) or follows
the device of its inputs. Nothing in kdlib hard-codes CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

DeviceLike = str | torch.device | None


def resolve(device: DeviceLike = "auto") -> torch.device:
    """Turn ``"auto"`` into the best available device: CUDA, then MPS, then CPU.

    Any other value is passed to :class:`torch.device`; asking for a device that is not available raises a
    ``RuntimeError`` that says which devices are.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here; {_available()}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {device!r} does not exist; {_available()}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {device!r} requested but MPS is not available here; {_available()}")
    return dev


def _available() -> str:
    names = ["cpu"]
    names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return "available: " + ", ".join(names) + " (or 'auto')"


def module_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (a no-op on CPU); needed for honest GPU timings."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
