"""Model cost in one record: parameters, serialized bytes, FLOPs, measured latency and accuracy.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (PyTorch's own counter: it counts the
matmuls and convolutions actually dispatched, so it works for any model). Latency is wall-clock time with
warm-up, the median of repeats, a fixed number of threads, and device synchronization, because fewer FLOPs
do not always mean less time.
"""

from __future__ import annotations

import io
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdlib.data import Dataset, Split
from kdlib.device import DeviceLike, module_device, resolve, synchronize
from kdlib.train import evaluate


def cpu_name() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux), for labelling measurements with their machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class ProfileRecord:
    """One model's costs.

    Attributes:
        name: a label for tables.
        params: number of parameters (trainable or not).
        size_bytes: bytes of the ``torch.save``-serialized ``state_dict``.
        flops: floating-point operations for ONE sample's forward pass (a multiply-add counts as 2).
        latency_ms: median wall-clock milliseconds of one forward pass of ``batch_size`` samples.
        latency_iqr_ms: interquartile range of those timings, a measure of the noise.
        batch_size: the batch size the latency was measured at.
        threads: ``torch.get_num_threads()`` during the measurement.
        device: where it was measured.
        accuracy: test accuracy in [0, 1] if data was given, else ``None``.
    """

    name: str
    params: int
    size_bytes: int
    flops: int
    latency_ms: float
    latency_iqr_ms: float
    batch_size: int
    threads: int
    device: str
    accuracy: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def serialized_bytes(obj: object) -> int:
    """Bytes of ``torch.save(obj)`` (written to memory, not to disk)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a checkpoint of the weights costs on disk."""
    return serialized_bytes(model.state_dict())


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example`` divided by its batch size (FLOPs per sample).

    Counted by :class:`~torch.utils.flop_counter.FlopCounterMode`, which covers matmuls, convolutions and
    attention (the operations that dominate); elementwise operations are not counted.
    """
    if example.dim() == 0 or example.shape[0] == 0:
        raise ValueError("example must be a batch with at least one sample")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example.to(module_device(model)))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // example.shape[0]


def quartiles(samples: Sequence[float]) -> dict[str, float]:
    """Median, interquartile range and quartiles of latency samples, in milliseconds (one sample: all equal)."""
    q1, median, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (samples[0],) * 3
    return {"median_ms": median, "iqr_ms": q3 - q1, "q1_ms": q1, "q3_ms": q3}


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = None,
) -> tuple[float, float]:
    """Median and interquartile range (ms) of ``model(example)`` in eval mode under ``torch.no_grad``.

    ``threads`` fixes ``torch.set_num_threads`` for the measurement (restored afterwards); CUDA/MPS work is
    synchronized before each clock read.
    """
    if repeats < 5:
        raise ValueError(f"repeats must be >= 5 for a meaningful median, got {repeats}")
    device = module_device(model)
    example = example.to(device)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(example)
            synchronize(device)
            for _ in range(repeats):
                start = time.perf_counter()
                model(example)
                synchronize(device)
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
        torch.set_num_threads(previous_threads)
    stats = quartiles(times)
    return stats["median_ms"], stats["iqr_ms"]


def latency_side_by_side(
    models: Mapping[str, nn.Module],
    example: torch.Tensor,
    *,
    warmup: int = 5,
    repeats: int = 21,
    inner: int = 1,
    threads: int | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each model, sampled round-robin in a rotating order.

    Interleaving the models makes whatever else the machine is doing slow all of them alike, so their
    ratios hold even where absolute times do not; the order rotates each repeat so no model always runs
    first. Each sample is the mean of ``inner`` calls. Eval mode and ``torch.no_grad``; modes and the thread
    count are restored afterwards. Returns the samples, for medians and spreads.
    """
    if repeats < 1 or inner < 1:
        raise ValueError(f"repeats and inner must be >= 1, got {repeats} and {inner}")
    names = list(models)
    devices = {n: module_device(m) for n, m in models.items()}
    inputs = {n: example.to(devices[n]) for n in names}
    modes = {n: m.training for n, m in models.items()}
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    times: dict[str, list[float]] = {n: [] for n in names}
    try:
        with torch.no_grad():
            for n, m in models.items():
                m.eval()
                for _ in range(warmup):
                    m(inputs[n])
                synchronize(devices[n])
            for r in range(repeats):
                for n in names[r % len(names):] + names[: r % len(names)]:
                    start = time.perf_counter()
                    for _ in range(inner):
                        models[n](inputs[n])
                    synchronize(devices[n])
                    times[n].append((time.perf_counter() - start) * 1e3 / inner)
    finally:
        for n, m in models.items():
            m.train(modes[n])
        torch.set_num_threads(previous_threads)
    return times


def profile(
    model: nn.Module,
    data: Dataset | Split | torch.Tensor,
    *,
    name: str | None = None,
    batch_size: int = 64,
    device: DeviceLike = None,
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
) -> ProfileRecord:
    """Measure everything about ``model`` in one call.

    Args:
        model: the model (moved to ``device`` if given, else measured where it is).
        data: a :class:`~kdlib.data.Dataset` (accuracy on its test split, inputs from it), a
            :class:`~kdlib.data.Split` (same), or an example input batch (no accuracy).
        name: label for the record (default: the class name).
        batch_size: batch size for the latency measurement.
        threads: CPU threads during the latency measurement (default: leave as is).
        warmup, repeats: latency protocol.
    """
    if device is not None:
        model.to(resolve(device))
    split = data.test if isinstance(data, Dataset) else data if isinstance(data, Split) else None
    # Only the first batch_size inputs are used below, so a uint8 split normalizes no more than those.
    inputs = split.take(slice(0, batch_size)) if split is not None else data
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"data must be a Dataset, Split or tensor, got {type(data).__name__}")
    if inputs.shape[0] == 0:
        raise ValueError("cannot profile on an empty batch")
    # Tile a small input set up to batch_size so the latency is always measured at the stated batch size.
    reps = -(-batch_size // inputs.shape[0])
    example = inputs.repeat(reps, *[1] * (inputs.dim() - 1))[:batch_size]
    median, iqr = measure_latency(model, example, warmup=warmup, repeats=repeats, threads=threads)
    return ProfileRecord(
        name=name or type(model).__name__,
        params=count_parameters(model),
        size_bytes=serialized_size(model),
        flops=count_flops(model, example[:1]),
        latency_ms=median,
        latency_iqr_ms=iqr,
        batch_size=batch_size,
        threads=threads or torch.get_num_threads(),
        device=str(module_device(model)),
        accuracy=evaluate(model, split)["accuracy"] if split is not None else None,
    )
