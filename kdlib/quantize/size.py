"""What quantization saves on disk: sub-byte codes packed densely, plus their scales.

``torch.save`` has no 4-bit or 2-bit dtype, so a b-bit model only shrinks when its codes are packed
``8 // b`` to a byte (b = 3, 5, 6, 7 are stored in b-bit fields across byte boundaries). :func:`packed_state`
builds that representation for a :func:`~kdlib.quantize.prepare`-d model and :func:`quantized_size_bytes`
measures it serialized, the same way :func:`kdlib.profile.serialized_size` measures the fp32 state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlib.profile import serialized_bytes
from kdlib.quantize.affine import check_bits, integer_range, quantize
from kdlib.quantize.fake import fake_quant_layers


def pack_codes(codes: torch.Tensor, bits: int, *, symmetric: bool = True) -> torch.Tensor:
    """Integer codes (in the ``bits``-bit range) packed into ``ceil(n·bits/8)`` uint8 bytes, row-major."""
    check_bits(bits)
    qmin, qmax = integer_range(bits, symmetric=symmetric)
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < qmin or int(flat.max()) > qmax):
        raise ValueError(f"codes outside the {bits}-bit range [{qmin}, {qmax}] cannot be packed")
    unsigned = flat - qmin
    shifts = torch.arange(bits - 1, -1, -1, device=flat.device)
    bit_stream = ((unsigned.unsqueeze(1) >> shifts) & 1).reshape(-1)
    bit_stream = torch.cat([bit_stream, bit_stream.new_zeros((-bit_stream.numel()) % 8)])
    weights = 2 ** torch.arange(7, -1, -1, device=flat.device)
    return (bit_stream.reshape(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int, *, symmetric: bool = True) -> torch.Tensor:
    """The first ``n`` codes of :func:`pack_codes` output, as int32."""
    check_bits(bits)
    qmin, _ = integer_range(bits, symmetric=symmetric)
    bit_stream = ((packed.to(torch.int64).unsqueeze(1) >> torch.arange(7, -1, -1, device=packed.device)) & 1).reshape(-1)
    if bit_stream.numel() < n * bits:
        raise ValueError(f"{packed.numel()} bytes hold fewer than {n} codes of {bits} bits")
    fields = bit_stream[: n * bits].reshape(n, bits)
    values = (fields * 2 ** torch.arange(bits - 1, -1, -1, device=packed.device)).sum(1)
    return (values + qmin).to(torch.int32)


def packed_state(model: nn.Module) -> dict[str, Any]:
    """The state of a prepared model with every fake-quantized weight as packed codes + fp32 scales.

    Each quantized layer's weight becomes ``{"shape", "bits", "codes", "scale"}`` (symmetric weights have no
    zero-point to store); every other tensor (biases, float layers, observer ranges) is kept as it is.
    """
    layers = fake_quant_layers(model)
    if not layers:
        raise ValueError("packed_state needs a model from kdlib.quantize.prepare (it has no FakeQuantLayer)")
    state: dict[str, Any] = dict(model.state_dict())
    for name, layer in layers.items():
        key = f"{name}.layer.weight" if name else "layer.weight"
        weight = state.pop(key).detach()
        scale, zero_point = layer.weight_qparams()
        bits = layer.config.weight_bits
        codes = quantize(weight, scale, zero_point, bits, symmetric=True, axis=layer.weight_axis)
        state[key] = {"shape": tuple(weight.shape), "bits": bits, "codes": pack_codes(codes, bits), "scale": scale}
    return state


def quantized_size_bytes(model: nn.Module) -> int:
    """Serialized bytes of :func:`packed_state`: what a b-bit model costs on disk as a ``torch.save`` file.

    This includes ``torch.save``'s overhead of roughly half a kilobyte per tensor, which matters for small
    models; :func:`~kdlib.quantize.codebook_size_bytes` counts the payload only.
    """
    return serialized_bytes(packed_state(model))
