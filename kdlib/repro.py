"""Reproducibility: seed every random number generator, optionally force deterministic kernels, record how a
result was produced (:func:`run_record`), and repeat a run over seeds (:func:`run_seeds`)."""

from __future__ import annotations

import math
import os
import platform
import random
import subprocess
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd


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
    significant). For one comparison; a table of many uses :func:`kdlib.protocol.compare`, which corrects
    for their number with :func:`holm`.

    Returns:
        ``{"diff", "low", "high", "n", "p", "verdict"}`` (see :func:`paired_test`).
    """
    out: dict[str, object] = dict(paired_test(values, baseline))
    low, high = out["low"], out["high"]
    out["verdict"] = "better" if low > 0 else "worse" if high < 0 else "n.s."
    return out


def paired_test(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Paired t-test of ``values[i] - baseline[i]`` (the same seed ``i`` in both).

    Returns ``{"diff", "low", "high", "p", "n"}``: the mean difference, its 95 % t-interval and the two-sided
    p-value of "mean difference = 0". With fewer than two pairs the interval and p are NaN; with zero spread
    the p-value is 0 for a non-zero difference and 1 for none.
    """
    from scipy import stats

    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired values need the same seeds, one value per seed on each side: got shapes {a.shape} and {b.shape}")
    d = a - b
    n, mean = d.size, float(d.mean())
    if n < 2:
        return {"diff": mean, "low": math.nan, "high": math.nan, "p": math.nan, "n": n}
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        return {"diff": mean, "low": mean, "high": mean, "p": 0.0 if mean != 0 else 1.0, "n": n}
    half = float(stats.t.ppf(0.975, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return {"diff": mean, "low": mean - half, "high": mean + half, "p": p, "n": n}


def holm(pvalues: Sequence[float]) -> list[float]:
    r"""Holm-Bonferroni adjusted p-values (Holm, 1979), in the input order.

    Sort the :math:`m` p-values, :math:`p_{(1)} \le \dots \le p_{(m)}`; the adjusted value of the :math:`k`-th is
    :math:`\max_{j \le k} \min\big(1, (m - j + 1)\,p_{(j)}\big)`. Rejecting where the adjusted value is below
    0.05 keeps the chance of *any* false rejection among the :math:`m` at most 5 %, with no assumption about how
    the tests depend on each other. NaN p-values stay NaN and do not count in :math:`m`.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


# --------------------------------------------------------------------------------------------- run records


def _git_commit(directory: Path) -> dict[str, object] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``directory``; ``None`` without git."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty} if commit else None


def _headline(result: Any) -> dict[str, float]:
    """The headline numbers of a :class:`~kdlib.train.FitResult` (duck-typed, so repro imports no trainer)."""
    keys = ("final_accuracy", "best_accuracy", "best_epoch", "train_seconds", "steps")
    return {k: getattr(result, k) for k in keys}


def run_record(
    result: Any = None,
    *,
    config: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    seed: int | None = None,
    device: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything needed to tell later which code, machine and settings produced a result.

    Args:
        result: a :class:`~kdlib.train.FitResult` (optional): its ``config`` and headline numbers
            (``final_accuracy``, ``best_accuracy``, ``best_epoch``, ``train_seconds``, ``steps``) are recorded.
        config: settings to record (merged over ``result.config``).
        metrics: numbers to record (merged over the result's headline numbers).
        seed: the run's seed (default: ``result.config["seed"]`` when there is one).
        device: where it ran (default: ``result.config["device"]``, else ``"cpu"``).
        **extra: anything else to keep beside it (a label, a data set name, ...).

    Returns:
        A JSON-friendly ``dict`` with ``timestamp`` (UTC, ISO 8601), ``python``, ``torch``, ``numpy``,
        ``kdlib`` versions, ``platform``, ``cpu``, ``torch_threads``, ``device`` (and ``gpu``, its name, on
        CUDA), ``seed``, ``config``, ``metrics``, ``git`` (``{"commit", "dirty"}`` of the kdlib checkout, or
        ``None`` where git or the repository is absent) and the ``extra`` keys.
    """
    import kdlib
    from kdlib.profile import cpu_name

    result_config = dict(getattr(result, "config", None) or {}) if result is not None else {}
    merged_config = {**result_config, **(config or {})}
    merged_metrics = {**(_headline(result) if result is not None else {}), **(metrics or {})}
    if seed is None:
        seed = merged_config.get("seed")
    dev = str(device) if device is not None else str(merged_config.get("device", "cpu"))
    record: dict[str, Any] = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "kdlib": kdlib.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "device": dev,
    }
    if dev.startswith("cuda") and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(torch.device(dev))
    record.update(seed=seed, config=merged_config, metrics=merged_metrics,
                  git=_git_commit(Path(__file__).resolve().parent))
    record.update(extra)
    return record


def _jsonable(value: Any) -> Any:
    """Plain JSON types: tuples to lists, NumPy/torch scalars and small tensors to numbers, paths and other
    objects to strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    return str(value)


def save_run_record(path: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write ``record`` (from :func:`run_record`) as indented JSON to ``path``, atomically; return the path.

    Readers see the old file or the complete new one, never half of it (:func:`kdlib.checkpoint.atomic_write`).
    Put it beside the result it describes, e.g. ``results/kd_seed0.json`` next to ``results/kd_seed0.pt``.
    """
    from kdlib.checkpoint import write_json

    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict (see run_record), got {type(record).__name__}")
    target = Path(path)
    write_json(target, _jsonable(record))
    return target


# --------------------------------------------------------------------------------------------- seeds


def _as_metrics(value: Any, metric: str | None) -> dict[str, float]:
    if hasattr(value, "history") and hasattr(value, "final_accuracy"):  # a FitResult
        out = {k: float(v) for k, v in _headline(value).items()}
    elif isinstance(value, dict):
        out = {str(k): float(v) for k, v in value.items()}
    elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return {metric or "value": float(value)}
    else:
        raise TypeError(
            f"fn(seed) must return a number, a dict of numbers or a FitResult, got {type(value).__name__}"
        )
    if metric is not None:
        if metric not in out:
            raise KeyError(f"metric {metric!r} is not among the returned metrics {sorted(out)}")
        return {metric: out[metric]}
    return out


def run_seeds(fn: Callable[[int], Any], seeds: Iterable[int], *, metric: str | None = None) -> pd.DataFrame:
    """Call ``fn(seed)`` for each seed and collect the results in a tidy frame, one row per seed.

    Args:
        fn: ``fn(seed)`` returns a number, a ``dict`` of numbers, or a :class:`~kdlib.train.FitResult`
            (recorded as its headline numbers: ``final_accuracy``, ``best_accuracy``, ``best_epoch``,
            ``train_seconds``, ``steps``).
        seeds: distinct non-negative ints.
        metric: keep only this metric (the column's name when ``fn`` returns a bare number; default ``"value"``).

    Returns:
        A :class:`pandas.DataFrame` with a ``seed`` column and one column per metric.
        ``frame.attrs["summary"]`` maps each metric to :func:`summarize` of its column (``mean``, ``std``
        with ddof=1, ``n``, ``ci95`` half-width of a Student-t interval); :func:`seed_summary` gives the same
        as a frame.
    """
    import pandas as pd

    seeds = list(seeds)
    if not seeds:
        raise ValueError("need at least one seed")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"seeds must be non-negative ints, got {bad}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (a repeated seed repeats the same run), got {seeds}")
    rows = []
    for seed in seeds:
        row = _as_metrics(fn(seed), metric)
        if rows and set(row) != set(rows[0]) - {"seed"}:
            raise ValueError(f"fn returned metrics {sorted(row)} for seed {seed} but {sorted(set(rows[0]) - {'seed'})} before")
        rows.append({"seed": seed, **row})
    frame = pd.DataFrame(rows)
    frame.attrs["summary"] = {name: summarize(frame[name].tolist()) for name in frame.columns if name != "seed"}
    return frame


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per metric of a :func:`run_seeds` frame: ``mean``, ``std`` (ddof=1), ``n`` and ``ci95``."""
    import pandas as pd

    if "seed" not in frame.columns:
        raise ValueError("expected a frame from run_seeds, with a 'seed' column")
    stats = {name: summarize(frame[name].tolist()) for name in frame.columns if name != "seed"}
    return pd.DataFrame.from_dict(stats, orient="index")[["mean", "std", "n", "ci95"]]
