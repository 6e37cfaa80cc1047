"""Data-parallel training with ``torch.distributed``: the thin layer around :func:`kdlib.train.fit`.

Launch the same script with ``torchrun`` and :func:`kdlib.train.fit` (and everything built on it: distillation,
pruning fine-tunes, QAT) trains with PyTorch's DistributedDataParallel (DDP)::

    torchrun --nproc_per_node 2 train.py            # 2 CPU processes (gloo), or 2 GPUs (NCCL)
    torchrun --nnodes 2 --nproc_per_node 8 ...      # 16 GPUs on two servers

:func:`setup` reads the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), starts the
process group (NCCL on CUDA, gloo on CPU) and picks this process's GPU; without them it does nothing, so one
script runs unchanged on a laptop. As in nanoGPT's ``train.py``, distribution is a few lines: every rank
builds the same model from the same seed, :func:`fit` wraps it in DDP (which averages the gradients
during ``backward``), each rank draws a disjoint slice of every global batch, evaluation is split across ranks
and summed with ``all_reduce``, and only rank 0 (:func:`is_main`) logs, shows progress and writes files.

Why DDP and not a hand-written gradient average: DDP overlaps the all-reduce with the backward pass bucket by
bucket, which a loop over parameters after ``backward`` cannot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["all_reduce_sum", "barrier", "cleanup", "is_distributed", "is_main", "rank", "setup", "unwrap", "world_size"]


def is_distributed() -> bool:
    """Whether a process group is running with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process logs and writes files (rank 0, or the only process)."""
    return rank() == 0


def setup(backend: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes and return this process's device.

    Without ``torchrun``'s variables (``WORLD_SIZE`` unset or 1) nothing is started and the best device is
    returned (``"auto"``). Under ``torchrun`` the backend is NCCL when CUDA is available (each rank takes the GPU
    ``LOCAL_RANK``) and gloo otherwise; ``backend=`` overrides it. Calling it twice is harmless.
    """
    from kdlib.device import resolve

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return resolve("auto")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return torch.device("cuda", local) if cuda else torch.device("cpu")


def cleanup() -> None:
    """Leave the process group (call at the end of a ``torchrun`` script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (``values`` itself when not distributed)."""
    if is_distributed():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP (or ``torch.compile``) wrapper; ``model`` itself otherwise."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DDP when distributed (gradients averaged over ranks during backward), else itself."""
    if not is_distributed():
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks (for trainable loss terms that live outside the DDP model)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def check_same_on_all_ranks(value: str, what: str) -> None:
    """Raise on every rank when ``value`` differs between ranks (e.g. a checkpoint found by one rank only)."""
    if not is_distributed():
        return
    values: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise RuntimeError(f"{what} differs between ranks: {values}; every rank must see the same")
