"""Epoch orders and rank shards: how every rank gets its own equal part of each global batch and of the evaluation."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch

from kdlib import distributed
from kdlib.data import Split

DEFAULT_EVAL_BATCH = 1024


def epoch_order(n: int, world: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch's random order of ``n`` samples, padded with its first samples to a multiple of ``world`` so that
    every rank takes the same number of steps (as :class:`~torch.utils.data.DistributedSampler` pads)."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    pad = (-n) % world
    return torch.cat([order, order[:pad]]) if pad else order


def rank_slice(global_batch: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    """This rank's equal share of a global batch (its length is a multiple of ``world``)."""
    per = global_batch.shape[0] // world
    return global_batch[rank * per : (rank + 1) * per]


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Optimizer steps in one epoch when each of ``world`` ranks takes ``batch_size`` samples per step."""
    return math.ceil((n + (-n) % world) / (batch_size * world))


def eval_share(n: int) -> range:
    """This rank's contiguous share of ``n`` evaluation samples (the shares of all ranks cover each sample once)."""
    world, rank = distributed.world_size(), distributed.rank()
    per = math.ceil(n / world)
    return range(min(rank * per, n), min((rank + 1) * per, n))


def split_batches(split: Split, batch_size: int = DEFAULT_EVAL_BATCH) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, labels)`` of this rank's share of ``split`` in order, ``batch_size`` at a time (for evaluation)."""
    share = eval_share(len(split))
    for start in range(share.start, share.stop, batch_size):
        stop = min(start + batch_size, share.stop)
        yield split.take(slice(start, stop)), split.y[start:stop]


def sample_digest(*tensors: torch.Tensor, rows: int = 256) -> str:
    """A cheap fingerprint of tensors: shapes, dtypes and ``rows`` evenly spaced rows of each (not all of it)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.shape[0]:
            pick = torch.linspace(0, t.shape[0] - 1, min(rows, t.shape[0])).long().to(t.device)
            h.update(t[pick].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
