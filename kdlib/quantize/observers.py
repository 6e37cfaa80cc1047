"""Observers: pick the range ``[lo, hi]`` that a tensor is quantized over, from the values it takes.

The range trades clipping error (values outside it) against rounding error (a wider range means a bigger
step :math:`s`). Four standard choices (cf. Wu et al., "Integer Quantization for Deep Learning Inference:
Principles and Empirical Evaluation", 2020, §4):

* :class:`MinMaxObserver`: the extreme values seen; no clipping, but one outlier widens every step.
* :class:`MovingAverageObserver`: an exponential moving average of each batch's min and max, the usual choice
  for activations during quantization-aware training.
* :class:`PercentileObserver`: the ``p``-th and ``(100-p)``-th percentiles, averaged over batches; clips the
  rare outliers.
* :class:`MSEObserver`: the clipped range :math:`[\\alpha\\, lo, \\alpha\\, hi]` whose quantization error
  :math:`\\lVert x - \\hat x \\rVert^2` on the observed values is smallest (a grid search over
  :math:`\\alpha`); the best :math:`\\alpha` depends on the bit-width, so :meth:`MSEObserver.qparams` searches
  for the bits it is asked for.

Each observer is an ``nn.Module`` whose ``forward`` records and returns its input unchanged, per tensor or per
channel (``axis``).
"""

from __future__ import annotations

import torch
from torch import nn

from kdlib.quantize.affine import channel_rows, check_axis, fake_quantize, qparams

# torch.quantile refuses inputs above 2**24 elements; larger batches are subsampled evenly.
_QUANTILE_LIMIT = 2**24


class Observer(nn.Module):
    """Base class: running ``lo``/``hi`` buffers, per tensor (``axis=None``) or per channel along ``axis``."""

    def __init__(self, axis: int | None = None) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("lo", torch.tensor([]))
        self.register_buffer("hi", torch.tensor([]))
        self.register_buffer("batches", torch.tensor(0))

    @property
    def observed(self) -> bool:
        """Whether any values have been recorded."""
        return int(self.batches) > 0

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"observers record floating-point tensors, got {x.dtype}")
        if x.numel() == 0:
            raise ValueError("an observer cannot record an empty tensor")
        rows = channel_rows(x.detach().float(), check_axis(x, self.axis))
        if self.observed and rows.shape[0] != self.lo.numel():
            raise ValueError(f"observer saw {self.lo.numel()} channels before and {rows.shape[0]} now")
        return rows

    def _batch_range(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows.amin(1), rows.amax(1)

    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record ``x``'s range; return ``x`` unchanged."""
        rows = self._rows(x)
        lo, hi = self._batch_range(rows)
        if not self.observed:
            self.lo, self.hi = lo, hi
        else:
            self._update(lo, hi)
        self.batches += 1
        return x

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen ``(lo, hi)``: shape ``(C,)`` per channel, ``()`` per tensor."""
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__} has seen no data: run calibration batches through it first")
        return (self.lo, self.hi) if self.axis is not None else (self.lo[0], self.hi[0])

    def qparams(self, bits: int, *, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero-point for ``bits`` bits over :meth:`range`."""
        lo, hi = self.range()
        return qparams(lo, hi, bits, symmetric=symmetric)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # The buffers are empty until the first batch, so a calibrated state must resize them when loaded.
        for name, buffer in self.named_buffers(recurse=False):
            if prefix + name in state_dict and buffer.shape != state_dict[prefix + name].shape:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MinMaxObserver(Observer):
    """The smallest and largest value ever seen."""


class MovingAverageObserver(Observer):
    """Exponential moving average of per-batch min and max: ``lo ← (1 − c)·lo + c·lo_batch``.

    ``c = 0.01`` is PyTorch's and Jacob et al.'s choice for activations during QAT. For the first ``1/c``
    batches the weight is ``1/n`` instead (``n`` = batches seen), i.e. the plain mean of the batch ranges, so
    that a short calibration (16 batches) is not dominated by its first batch, as an EMA started at the first
    batch's range would be.
    """

    def __init__(self, averaging_constant: float = 0.01, axis: int | None = None) -> None:
        super().__init__(axis)
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant!r}")
        self.averaging_constant = averaging_constant

    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        c = max(self.averaging_constant, 1 / (int(self.batches) + 1))
        self.lo, self.hi = (1 - c) * self.lo + c * lo, (1 - c) * self.hi + c * hi


def _evenly(rows: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly spaced columns of ``rows`` (all of them when there are no more)."""
    if rows.shape[1] <= count:
        return rows
    return rows[:, torch.linspace(0, rows.shape[1] - 1, count, device=rows.device).round().long()]


class PercentileObserver(Observer):
    """The ``(100 − p)``-th and ``p``-th percentiles of each batch, averaged over batches."""

    def __init__(self, percentile: float = 99.99, axis: int | None = None) -> None:
        super().__init__(axis)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.percentile = percentile

    def _batch_range(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = _evenly(rows, _QUANTILE_LIMIT // rows.shape[0])
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=rows.dtype, device=rows.device)
        lo, hi = torch.quantile(rows, q, dim=1)
        return lo, hi

    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        n = int(self.batches)
        self.lo, self.hi = (self.lo * n + lo) / (n + 1), (self.hi * n + hi) / (n + 1)


class MSEObserver(Observer):
    """The clipping range that minimizes the mean squared quantization error on the values seen.

    Keeps up to ``max_samples`` values per channel besides the min-max range, drawn evenly from every batch
    seen (after ``n`` batches each contributes about ``max_samples / n``, by strided subsampling); :meth:`qparams` tries ``grid`` clipping factors :math:`\\alpha \\in (0, 1]` of that range and keeps,
    per channel, the one with the smallest error at the requested bit-width.
    """

    def __init__(self, grid: int = 100, max_samples: int = 4096, axis: int | None = None) -> None:
        super().__init__(axis)
        if grid < 1 or max_samples < 1:
            raise ValueError(f"grid and max_samples must be >= 1, got {grid} and {max_samples}")
        self.grid, self.max_samples = grid, max_samples
        self.register_buffer("samples", torch.tensor([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record ``x``'s range and a subsample of its values; return ``x`` unchanged."""
        rows = self._rows(x)
        seen = int(self.batches)
        old_share = self.max_samples * seen // (seen + 1)
        new = _evenly(rows, self.max_samples - old_share)
        self.samples = new if not self.observed else torch.cat([_evenly(self.samples, old_share), new], 1)
        return super().forward(x)

    def qparams(self, bits: int, *, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero-point of the error-minimizing clipped range for ``bits`` bits."""
        lo, hi = self.range()
        lo, hi = lo.reshape(-1), hi.reshape(-1)
        best_err = torch.full_like(lo, float("inf"))
        best = qparams(lo, hi, bits, symmetric=symmetric)
        for alpha in torch.linspace(1.0, 1.0 / self.grid, self.grid).tolist():
            scale, zero_point = qparams(alpha * lo, alpha * hi, bits, symmetric=symmetric)
            approx = fake_quantize(self.samples, scale, zero_point, bits, symmetric=symmetric, axis=0)
            err = (approx - self.samples).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = (torch.where(better, scale, best[0]), torch.where(better, zero_point, best[1]))
        if self.axis is None:
            return best[0][0], best[1][0]
        return best


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def make_observer(name: str, axis: int | None = None) -> Observer:
    """An observer by name: one of ``minmax``, ``moving_average``, ``percentile``, ``mse``."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; choose one of {sorted(OBSERVERS)}")
    return OBSERVERS[name](axis=axis)
