"""Reproducibility: seed every random number generator, optionally force deterministic kernels."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = False) -> torch.Generator:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) with ``seed``.

    Args:
        seed: a non-negative integer.
        deterministic: also call :func:`set_deterministic` so that kernels with nondeterministic
            implementations (some CUDA reductions and scatters) are replaced or raise.

    Returns:
        A fresh CPU :class:`torch.Generator` seeded with ``seed``, for code that wants its own stream
        (kdlib's trainer draws batch order and augmentation from such a generator).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices
    if deterministic:
        set_deterministic(True)
    return torch.Generator().manual_seed(seed)


def set_deterministic(enabled: bool = True) -> None:
    """Switch PyTorch's deterministic mode on or off.

    On CPU kdlib's training is already bit-reproducible for a fixed seed and thread count. On CUDA this
    selects deterministic algorithms (``torch.use_deterministic_algorithms``), turns off cuDNN
    benchmarking, and sets ``CUBLAS_WORKSPACE_CONFIG`` as cuBLAS requires; operations with no
    deterministic implementation then raise instead of silently varying.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled and torch.backends.cudnn.benchmark


def summarize(values: list[float] | tuple[float, ...]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1), count and a 95 % t-interval half-width of ``values``.

    The interval uses Student's t with ``n - 1`` degrees of freedom, which is what a handful of seeds
    calls for; with one value the spread is reported as NaN rather than a misleading 0.
    """
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"need a non-empty 1-D list of values, got shape {v.shape}")
    n = v.size
    std = float(v.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(v.mean()), "std": std, "n": n, "ci95": half}


def paired_difference(values: list[float] | tuple[float, ...], baseline: list[float] | tuple[float, ...]) -> dict[str, object]:
    """Seed-paired difference ``values[i] - baseline[i]``: its mean, 95 % t-interval and a verdict.

    The verdict is ``"better"`` or ``"worse"`` only when the interval excludes 0, else ``"n.s."`` (not
    significant): the rule the book applies to every comparison of two methods over the same seeds.

    Returns:
        ``{"diff", "low", "high", "n", "verdict"}``.
    """
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds: got {a.shape} and {b.shape}")
    d = summarize((a - b).tolist())
    low, high = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
    verdict = "better" if low > 0 else "worse" if high < 0 else "n.s."
    return {"diff": d["mean"], "low": low, "high": high, "n": d["n"], "verdict": verdict}
