"""Unstructured magnitude pruning on top of :mod:`torch.nn.utils.prune` masks.

Masks live where PyTorch keeps them: pruning ``layer.weight`` registers a parameter ``weight_orig``, a buffer
``weight_mask`` and a forward pre-hook that sets ``weight = weight_orig * weight_mask`` before each forward
pass, so masks stay applied while the optimizer updates ``weight_orig`` (fine-tuning with
:func:`kdlib.train.fit` needs nothing special). :func:`make_permanent` folds them back with
:func:`torch.nn.utils.prune.remove`.

We compute the masks ourselves and install them with :func:`torch.nn.utils.prune.custom_from_mask`, for two
reasons. (1) *Semantics of compounding*: a float ``amount`` of ``l1_unstructured`` /
``global_unstructured`` on an already-pruned tensor is a fraction of the weights that *remain*; here
``sparsity`` is always the target fraction of zeros of the *total*, counting weights that are already zero
(masked, or zero after :func:`make_permanent`), which is what reports and papers quote. (2) *Exact counts*:
ties (many exact zeros) are broken by a stable sort, so exactly ``round(sparsity * n)`` weights are zero.
``custom_from_mask`` multiplies the new mask into an existing one (a ``PruningContainer``), and since each
new mask keeps every old zero, the product is the new mask.

Magnitude pruning: Han et al., "Learning both Weights and Connections for Efficient Neural Networks" (2015);
layer-wise vs global ranking as compared by Blalock et al., "What is the State of Neural Network Pruning?"
(2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------- helpers


def check_sparsity(sparsity: float) -> float:
    """Return ``float(sparsity)`` or raise ``ValueError`` unless ``0 <= sparsity < 1``."""
    value = float(sparsity)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights set to zero), got {sparsity!r}")
    return value


def prunable_layers(model: nn.Module, layers: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers whose ``weight`` is pruned: Linear and Conv1d/2d/3d by default.

    Biases and normalization layers are never pruned (they are few and pruning them hurts). ``layers``
    selects modules by their name in ``model.named_modules()``; an unknown name or a module that is not
    Linear/Conv raises ``ValueError``.
    """
    named = dict(model.named_modules())
    if layers is None:
        found = [(n, m) for n, m in named.items() if isinstance(m, PRUNABLE_TYPES)]
    else:
        if isinstance(layers, str):
            layers = [layers]
        missing = [n for n in layers if n not in named]
        if missing:
            known = [n for n, m in named.items() if isinstance(m, PRUNABLE_TYPES)]
            raise ValueError(f"no layer named {missing} in {type(model).__name__}; prunable layers: {known}")
        wrong = [n for n in layers if not isinstance(named[n], PRUNABLE_TYPES)]
        if wrong:
            raise ValueError(f"layers {wrong} are not prunable (only Linear and Conv weights are)")
        found = [(n, named[n]) for n in dict.fromkeys(layers)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no prunable layers (Linear or Conv)")
    return found


def is_pruned(module: nn.Module) -> bool:
    """Whether ``module`` or any submodule carries a :mod:`torch.nn.utils.prune` mask."""
    return prune.is_pruned(module)


def _hooks(module: nn.Module) -> list[prune.BasePruningMethod]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def _effective(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses (``weight_orig * weight_mask`` when masked), detached."""
    if hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def _rank_keys(module: nn.Module, weight: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Flattened keys (CPU), smallest pruned first.

    Masked entries get -1 so they stay pruned (compounding); other weights that are exactly zero get at
    most 0, so they are pruned before any nonzero weight (they count as zeros already).
    """
    keys = scores.detach().flatten().float().cpu().clone()
    keys[weight.flatten().cpu() == 0] = keys[weight.flatten().cpu() == 0].clamp(max=0.0)
    if hasattr(module, "weight_mask"):
        keys[module.weight_mask.flatten().cpu() == 0] = -1.0
    return keys


def _target_zeros(sparsity: float, n: int, current: int, where: str) -> int:
    k = int(round(sparsity * n))
    if k < current:
        raise ValueError(
            f"{where} already has {current} of {n} weights at zero (sparsity {current / n:.4f}); pruning cannot "
            f"lower it to {sparsity}"
        )
    return k


def _mask_from_keys(keys: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.ones_like(keys)
    if k > 0:
        order = torch.argsort(keys, stable=True)
        mask[order[:k]] = 0.0
    return mask


def _install(module: nn.Module, mask: torch.Tensor) -> None:
    weight = module.weight_orig if hasattr(module, "weight_orig") else module.weight
    prune.custom_from_mask(module, "weight", mask.view_as(weight).to(weight.device, weight.dtype))


def _layerwise(model: nn.Module, sparsity: float, layers: Sequence[str] | None, scores) -> nn.Module:
    s = check_sparsity(sparsity)
    for name, module in prunable_layers(model, layers):
        weight = _effective(module)
        n = weight.numel()
        k = _target_zeros(s, n, int((weight == 0).sum()), f"layer {name!r}")
        keys = _rank_keys(module, weight, scores(weight))
        _install(module, _mask_from_keys(keys, k))
    return model


# --------------------------------------------------------------------------------------------- pruning


def prune_layerwise(model: nn.Module, sparsity: float, layers: Sequence[str] | None = None) -> nn.Module:
    r"""Magnitude-prune each layer's weight to exactly ``round(sparsity * n_layer)`` zeros (in place).

    In each layer the weights of smallest :math:`|w|` are masked (Han et al., 2015). ``sparsity`` is the
    target fraction of zeros of the layer's *total* weights; weights already zero (masked earlier, or zero
    after :func:`make_permanent`) count, so pruning to 0.5 and then to 0.8 gives 0.8, not
    :math:`1 - 0.5 \cdot 0.2`. Asking for less than the current sparsity raises ``ValueError``.

    Args:
        model: pruned in place; returned for chaining.
        sparsity: target fraction of zeros in ``[0, 1)``.
        layers: names (``model.named_modules()``) of Linear/Conv layers; ``None`` means all of them.
    """
    return _layerwise(model, sparsity, layers, lambda w: w.abs())


def prune_random(
    model: nn.Module,
    sparsity: float,
    *,
    generator: torch.Generator | None = None,
    layers: Sequence[str] | None = None,
) -> nn.Module:
    """Random unstructured pruning, the baseline magnitude pruning must beat (layer-wise, exact counts).

    Same semantics as :func:`prune_layerwise` (target fraction of zeros of the total, already-zero weights
    count), but the weights to mask are drawn uniformly at random with ``generator`` (a CPU generator).
    """

    def scores(w: torch.Tensor) -> torch.Tensor:
        return torch.rand(w.shape, generator=generator) + 1.0  # > 0, so already-zero weights still go first

    return _layerwise(model, sparsity, layers, scores)


def prune_global(model: nn.Module, sparsity: float, layers: Sequence[str] | None = None) -> nn.Module:
    r"""Global magnitude pruning: one ranking of :math:`|w|` across all prunable weights (in place).

    Exactly ``round(sparsity * N)`` weights are zero afterwards, ``N`` being the total number of weights
    of the selected layers; layers whose weights are small in magnitude lose more of them (Han et al.,
    2015; Frankle & Carbin, 2019 prune convolutional networks globally). As in :func:`prune_layerwise`,
    ``sparsity`` is the target fraction of zeros of the total and already-zero weights count. Written here
    rather than with :func:`torch.nn.utils.prune.global_unstructured` for those semantics (see the module
    docstring).

    Args:
        model: pruned in place; returned for chaining.
        sparsity: target overall fraction of zeros in ``[0, 1)``.
        layers: names of Linear/Conv layers to rank together; ``None`` means all of them.
    """
    s = check_sparsity(sparsity)
    selected = prunable_layers(model, layers)
    weights = [_effective(m) for _, m in selected]
    keys = []
    for (_, module), w in zip(selected, weights):
        keys.append(_rank_keys(module, w, w.abs()))
    n = sum(w.numel() for w in weights)
    k = _target_zeros(s, n, sum(int((w == 0).sum()) for w in weights), "the model")
    mask = _mask_from_keys(torch.cat(keys), k)
    for (_, module), part in zip(selected, torch.split(mask, [w.numel() for w in weights])):
        _install(module, part)
    return model


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy that also works for a masked model.

    ``copy.deepcopy`` refuses a module whose ``weight`` is the non-leaf tensor ``weight_orig * weight_mask``
    that the pruning hook left from the last forward pass (or from pruning). We replace that attribute by
    its detached value first (same numbers; the hook recomputes it at the next forward anyway).
    """
    import copy

    for module in model.modules():
        for hook in _hooks(module):
            setattr(module, hook._tensor_name, hook.apply_mask(module).detach())
    return copy.deepcopy(model)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight with :func:`torch.nn.utils.prune.remove` (in place).

    Afterwards ``weight`` is a plain parameter holding zeros where the mask was, ``*_orig``/``*_mask`` are
    gone, and the state dict is as small as the dense model's. Raises ``ValueError`` if the model carries no
    mask (never pruned, or already made permanent).
    """
    pruned = [(m, h._tensor_name) for m in model.modules() for h in _hooks(m)]
    if not pruned:
        raise ValueError("the model has no pruning masks (never pruned, or make_permanent was already called)")
    for module, name in pruned:
        prune.remove(module, name)
    return model


def sparsity_report(model: nn.Module, layers: Sequence[str] | None = None) -> list[dict[str, object]]:
    """Per-layer sparsity of the prunable weights as rows (``pandas.DataFrame(rows)`` makes a table).

    Each row: ``layer`` (module name), ``type``, ``params`` (weights), ``zeros`` (weights equal to zero in
    the forward pass, masked or not) and ``sparsity = zeros / params``; a last row ``layer="overall"`` sums
    them.
    """
    rows: list[dict[str, object]] = []
    for name, module in prunable_layers(model, layers):
        w = _effective(module)
        zeros = int((w == 0).sum())
        rows.append(dict(layer=name, type=type(module).__name__, params=w.numel(), zeros=zeros,
                         sparsity=zeros / w.numel()))
    params = sum(int(r["params"]) for r in rows)
    zeros = sum(int(r["zeros"]) for r in rows)
    rows.append(dict(layer="overall", type="", params=params, zeros=zeros, sparsity=zeros / params))
    return rows
