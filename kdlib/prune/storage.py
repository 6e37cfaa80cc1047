"""What pruning saves on disk: dense vs masked vs sparse-encoded state dicts.

A masked model (:mod:`torch.nn.utils.prune`) stores ``weight_orig`` *and* ``weight_mask``, so its checkpoint
is about twice the dense one; zeros alone do not shrink a dense file either (``torch.save`` does not
compress). Only a sparse encoding does: :func:`encode_sparse` stores each mostly-zero tensor as its nonzero
values plus a bitmap of their positions (1 bit per weight), which beats dense fp32 once more than
:math:`1/32 + ` a little of the weights are zero; :func:`storage_sizes` also reports PyTorch's CSR format,
whose 64-bit column indices (12 bytes per nonzero fp32 weight) only win above about 2/3 sparsity.
Han et al., "Deep Compression" (2016) store sparse weights with relative indices in the same spirit.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from kdlib.profile import serialized_bytes
from kdlib.prune.unstructured import copy_model, is_pruned, make_permanent

_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with masks folded in (as after :func:`~kdlib.prune.make_permanent`); the model is untouched."""
    if not is_pruned(model):
        return model.state_dict()
    return make_permanent(copy_model(model)).state_dict()


def _pack(bits: torch.Tensor) -> torch.Tensor:
    flat = bits.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return (flat.view(-1, 8) << _SHIFTS.to(flat.device)).sum(1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    bits = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1
    return bits.flatten()[:n].bool()


def encode_sparse(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Encode a dense state dict: a floating tensor becomes ``{"shape", "values", "bitmap"}`` when smaller.

    ``values`` are the nonzero entries in row-major order, ``bitmap`` packs ``t != 0`` into ``ceil(n/8)``
    bytes. Other tensors are kept as they are. :func:`decode_sparse` inverts it exactly.
    """
    out: dict[str, Any] = {}
    for key, t in state.items():
        t = t.detach().cpu()
        nonzero = t != 0
        nnz = int(nonzero.sum())
        if t.is_floating_point() and nnz * t.element_size() + (t.numel() + 7) // 8 < t.numel() * t.element_size():
            out[key] = {"shape": list(t.shape), "values": t[nonzero].clone(), "bitmap": _pack(nonzero)}
        else:
            out[key] = t.clone()
    return out


def decode_sparse(encoded: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The dense state dict back from :func:`encode_sparse` (bit for bit)."""
    state = {}
    for key, item in encoded.items():
        if isinstance(item, dict):
            n = 1
            for d in item["shape"]:
                n *= d
            flat = item["values"].new_zeros(n)
            flat[_unpack(item["bitmap"], n)] = item["values"]
            state[key] = flat.view(item["shape"])
        else:
            state[key] = item
    return state


def _csr(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return {
            k: t.detach().cpu().reshape(t.shape[0], -1).to_sparse_csr() if t.is_floating_point() and t.dim() >= 2 else t
            for k, t in state.items()
        }


def storage_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's weights saved with ``torch.save`` in four ways.

    * ``masked``: the state dict as it is (with masks: ``weight_orig`` + ``weight_mask``, about 2x dense);
    * ``dense``: masks folded in (:func:`dense_state_dict`); zeros still cost 4 bytes each in fp32;
    * ``sparse``: :func:`encode_sparse` of the dense state dict (values + 1-bit-per-weight bitmap);
    * ``csr``: weight matrices (conv kernels flattened per output channel) as ``torch.sparse_csr`` tensors,
      int64 indices.

    For an unpruned model ``masked == dense``.
    """
    dense = dense_state_dict(model)
    return {
        "masked": serialized_bytes(model.state_dict()),
        "dense": serialized_bytes(dense),
        "sparse": serialized_bytes(encode_sparse(dense)),
        "csr": serialized_bytes(_csr(dense)),
    }
