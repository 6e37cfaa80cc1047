"""The affine map between real numbers and b-bit integers, and fake quantization with the straight-through estimator.

A real value :math:`x` is stored as an integer code

.. math::  q = \\operatorname{clamp}(\\operatorname{round}(x / s) + z,\\; q_{min},\\; q_{max}),
           \\qquad \\hat x = s\\,(q - z)

with scale :math:`s > 0` and zero-point :math:`z` (Jacob et al., "Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference", CVPR 2018). Inside the representable range
:math:`[s(q_{min}-z),\\, s(q_{max}-z)]` the rounding error is at most :math:`s/2`; outside it the value is
clipped. Two conventions, the ones ONNX Runtime and PyTorch use:

* **symmetric** (weights): signed codes :math:`[-2^{b-1}, 2^{b-1}-1]`, :math:`z = 0`,
  :math:`s = \\max(|lo|, |hi|) / (2^{b-1}-1)`;
* **asymmetric** (activations): unsigned codes :math:`[0, 2^b-1]`, :math:`s = (hi - lo) / (2^b - 1)`,
  :math:`z = \\operatorname{round}(-lo / s)`, with :math:`[lo, hi]` first widened to contain 0 so that zero
  (padding, ReLU outputs) is exact.

**Per-channel** quantization gives every slice along ``axis`` (a conv layer's output channels) its own
:math:`s, z`. ``torch.round`` rounds halves to even, as ONNX Runtime does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: object) -> int:
    """``bits`` as an int in [2, 8], or a ValueError that says what to use instead."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}; for 16-bit floats use "
            "model.half() or model.bfloat16() instead of integer quantization"
        )
    return bits


def integer_range(bits: int, *, symmetric: bool) -> tuple[int, int]:
    """``(q_min, q_max)``: signed codes for symmetric quantization, unsigned codes for asymmetric."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def check_axis(x: torch.Tensor, axis: int | None) -> int | None:
    """A valid non-negative channel axis of ``x`` (or None for per-tensor), else one clear error."""
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(
            f"per-channel axis {axis!r} does not exist for a tensor of shape {tuple(x.shape)}; "
            f"use an axis in [{-x.dim()}, {x.dim() - 1}] (0 = a conv or linear layer's output channels) or None"
        )
    return axis % x.dim()


def _check_float(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{what} must be a floating-point tensor, got {got}")


def channel_rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as a 2-D matrix with one row per channel (one row in all for per-tensor)."""
    axis = check_axis(x, axis)
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def tensor_range(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of ``x``, per channel along ``axis`` (shape ``(C,)``) or overall (shape ``()``)."""
    _check_float(x, "x")
    if x.numel() == 0:
        raise ValueError("cannot compute the range of an empty tensor")
    rows = channel_rows(x.detach(), axis)
    lo, hi = rows.amin(1), rows.amax(1)
    return (lo, hi) if axis is not None else (lo[0], hi[0])


def qparams(
    lo: torch.Tensor | float, hi: torch.Tensor | float, bits: int, *, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point that map ``[lo, hi]`` (tensors of any shape, e.g. per channel) onto ``bits`` bits.

    Returns float32 ``scale`` (> 0, at least the float32 epsilon so a constant tensor does not divide by 0)
    and integer-valued float32 ``zero_point`` of the same shape as ``lo``.
    """
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    if lo.shape != hi.shape:
        raise ValueError(f"lo and hi must have the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    if bool((lo > hi).any()):
        raise ValueError("every lo must be <= its hi")
    qmin, qmax = integer_range(bits, symmetric=symmetric)
    eps = torch.finfo(torch.float32).eps
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        scale = (torch.maximum(-lo, hi) / qmax).clamp_min(eps)
        return scale, torch.zeros_like(scale)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(eps)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero_point


def _broadcast(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if axis is None:
        if t.numel() != 1:
            raise ValueError(f"per-tensor quantization needs one scale and zero-point, got {t.numel()}; pass axis=")
        return t.reshape(())
    if t.numel() != x.shape[axis]:
        raise ValueError(
            f"axis {axis} has {x.shape[axis]} channels but {t.numel()} scales/zero-points were given"
        )
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def _grid(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool, axis: int | None
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Checked inputs of :func:`quantize` and :func:`fake_quantize`: scale and zero-point shaped to broadcast
    against ``x``, and the integer range."""
    _check_float(x, "x")
    axis = check_axis(x, axis)
    qmin, qmax = integer_range(bits, symmetric=symmetric)
    return _broadcast(scale, x, axis), _broadcast(zero_point, x, axis), qmin, qmax


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bits: int,
    *,
    symmetric: bool = True,
    axis: int | None = None,
) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) + zero_point, q_min, q_max)`` as an int32 tensor."""
    s, z, qmin, qmax = _grid(x, scale, zero_point, bits, symmetric, axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch.int32)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, *, axis: int | None = None
) -> torch.Tensor:
    """Real values ``scale * (q - zero_point)`` (float32) of integer codes ``q``."""
    axis = check_axis(q, axis)
    real = q.to(torch.float32)
    return _broadcast(scale, real, axis) * (real - _broadcast(zero_point, real, axis))


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bits: int,
    *,
    symmetric: bool = True,
    axis: int | None = None,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` in ``x``'s dtype, differentiable by the straight-through estimator.

    Rounding has zero gradient almost everywhere, so training through it needs the straight-through
    estimator (Bengio et al. 2013, as used for QAT by Jacob et al. 2018): the backward pass treats rounding as
    the identity. Clipping is kept, so :math:`\\partial \\hat x / \\partial x = 1` inside the representable
    range and 0 outside it. The scale and zero-point get no gradient (they come from observers).
    """
    s, z, qmin, qmax = _grid(x, scale, zero_point, bits, symmetric, axis)
    low, high = (qmin - z) * s, (qmax - z) * s
    # Not clamp(x, low, high): with tensor bounds it splits the gradient 0.5/0.5 on the edges.
    clipped = torch.where((x >= low) & (x <= high), x, torch.clamp(x.detach(), low, high))
    rounded = (torch.round(clipped / s) + z).clamp(qmin, qmax)
    return clipped + ((rounded - z) * s - clipped).detach()


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes with the scale and zero-point that give them meaning; :meth:`dequantize` inverts them."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    axis: int | None

    def dequantize(self) -> torch.Tensor:
        """The real values the codes stand for."""
        return dequantize(self.codes, self.scale, self.zero_point, axis=self.axis)


def quantize_tensor(
    x: torch.Tensor, bits: int = 8, *, symmetric: bool = True, axis: int | None = None
) -> QuantizedTensor:
    """Quantize ``x`` over its own min-max range (per channel along ``axis``, or per tensor)."""
    lo, hi = tensor_range(x, axis)
    scale, zero_point = qparams(lo, hi, bits, symmetric=symmetric)
    codes = quantize(x.detach(), scale, zero_point, bits, symmetric=symmetric, axis=axis)
    return QuantizedTensor(codes, scale, zero_point, bits, symmetric, check_axis(x, axis))
