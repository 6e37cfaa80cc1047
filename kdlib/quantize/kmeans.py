"""k-means weight sharing (Han et al., "Deep Compression", ICLR 2016, §3).

Each layer's weights are clustered into :math:`k = 2^b` values (a *codebook*); the layer then stores a
:math:`b`-bit index per weight plus :math:`k` floats. Unlike the affine grid, the :math:`k` levels sit where the
weights are dense. Han et al. initialise the centroids *linearly* over ``[min, max]`` (better than random or
density-based starts, because the rare large weights matter most) and then fine-tune the codebook: every
weight in cluster :math:`c` shares centroid :math:`C_c`, so

.. math::  \\frac{\\partial L}{\\partial C_c} = \\sum_{i:\\, I_i = c} \\frac{\\partial L}{\\partial W_i},

which is exactly what autograd computes for ``W = codebook[index]``. :func:`share_weights` installs that as a
forward pre-hook (as :mod:`torch.nn.utils.prune` does for masks), so the layer trains through
:func:`kdlib.train.fit` with the codebook as its only weight parameter.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from kdlib.quantize.affine import check_bits
from kdlib.quantize.fake import QUANTIZABLE_TYPES, quantizable_layers


def kmeans_1d(values: torch.Tensor, k: int, *, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on a 1-D set of values with linear initialisation; returns ``(codebook, index)``.

    ``codebook`` has ``k`` sorted centroids (an empty cluster keeps its previous centroid); ``index`` (int64,
    same shape as ``values``) assigns each value to its nearest centroid.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    flat = values.detach().reshape(-1).float()
    if flat.numel() == 0:
        raise ValueError("cannot cluster an empty tensor")
    codebook = torch.linspace(float(flat.min()), float(flat.max()), k, device=flat.device)
    for _ in range(iterations):
        index = torch.bucketize(flat, (codebook[1:] + codebook[:-1]) / 2)
        sums = torch.zeros_like(codebook).index_add_(0, index, flat)
        counts = torch.zeros_like(codebook).index_add_(0, index, torch.ones_like(flat))
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), codebook)
        if torch.equal(updated, codebook):
            break
        codebook = updated.sort().values
    index = torch.bucketize(flat, (codebook[1:] + codebook[:-1]) / 2)
    return codebook, index.reshape(values.shape)


def _gather_weight(module: nn.Module, inputs: object) -> None:
    """Forward pre-hook: ``weight = codebook[weight_index]``, differentiable with respect to the codebook."""
    module.weight = module.codebook[module.weight_index]


def _detach_weight(module: nn.Module, inputs: object, output: object) -> None:
    """Forward hook: keep a detached copy between calls, so the module can still be deep-copied."""
    module.weight = module.weight.detach()


def share_weights(model: nn.Module, bits: int, *, skip: Sequence[str] = (), iterations: int = 30) -> nn.Module:
    """A copy of ``model`` whose Conv/Linear weights are k-means shared with ``2**bits`` values per layer.

    Each layer gets a trainable ``codebook`` parameter and an int64 ``weight_index`` buffer in place of its
    ``weight`` parameter; biases and other layers stay as they are. Train it with :func:`kdlib.train.fit` or
    :func:`kdlib.distill.distill` to fine-tune the codebooks.
    """
    check_bits(bits)
    shared = copy.deepcopy(model)
    for name in quantizable_layers(shared, skip):
        layer = shared.get_submodule(name)
        if hasattr(layer, "codebook"):
            raise ValueError(f"layer {name!r} already shares its weights")
        weight = layer.weight.detach()
        codebook, index = kmeans_1d(weight, 2**bits, iterations=iterations)
        del layer._parameters["weight"]
        layer.register_parameter("codebook", nn.Parameter(codebook.to(weight.dtype)))
        layer.register_buffer("weight_index", index)
        layer.weight = codebook[index].to(weight.dtype)
        layer.register_forward_pre_hook(_gather_weight)
        layer.register_forward_hook(_detach_weight)
    return shared


def shared_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` that :func:`share_weights` turned into codebook + index."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZABLE_TYPES) and hasattr(m, "codebook")}


def codebook_size_bytes(model: nn.Module) -> int:
    """Bytes to store a weight-shared model: packed indices + fp32 codebooks + every other parameter in fp32.

    ``ceil(n·b/8)`` bytes for the ``n`` indices of each shared layer (``b = log2 k``), ``4k`` for its
    codebook; Han et al. additionally Huffman-code the indices, which this does not count. This is the payload
    without any file-format overhead (:func:`~kdlib.quantize.quantized_size_bytes` measures a ``torch.save``
    file instead).
    """
    layers = shared_layers(model)
    if not layers:
        raise ValueError("the model shares no weights: make it with kdlib.quantize.share_weights first")
    total = 0
    for layer in layers.values():
        bits = max(1, (layer.codebook.numel() - 1).bit_length())
        total += -(-layer.weight_index.numel() * bits // 8) + 4 * layer.codebook.numel()
    shared_params = {id(layer.codebook) for layer in layers.values()}
    return total + sum(4 * p.numel() for p in model.parameters() if id(p) not in shared_params)
