"""Save a structurally pruned model and load it again, without re-running the pruning.

A channel-pruned model's ``state_dict`` no longer fits its original architecture (every pruned layer has
fewer channels), and :mod:`kdlib.checkpoint` stores tensors and plain containers only, never a pickled module.
So a pruned model is saved as its *plan*, the kept output channels of every pruned layer
(:attr:`~kdlib.prune.PruneResult.kept`), beside its weights. Loading builds the original architecture from your
own code, re-applies the plan with Torch-Pruning's dependency graph (which shrinks every coupled layer, the
BatchNorms and the next layers' inputs, exactly as :func:`~kdlib.prune.prune_channels` did), and then loads the
weights, whose shapes must now match one for one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from kdlib.checkpoint import PathLike, load_checkpoint, save_checkpoint
from kdlib.prune.structured import PruneResult, channels

__all__ = ["apply_plan", "load_pruned", "save_pruned"]

_FORMAT = "kdlib.pruned/1"


def apply_plan(model: nn.Module, example_inputs: torch.Tensor, kept: dict[str, Sequence[int]]) -> nn.Module:
    """Prune ``model`` in place to the channels ``kept`` names, layer by layer; return it.

    ``kept`` maps a Conv/Linear layer's name (as in ``model.named_modules()``) to the sorted indices of the
    output channels to keep, counted in the unpruned layer: :attr:`PruneResult.kept`. Every layer that depends
    on a pruned one (its BatchNorm, the next layer's inputs, a residual partner) shrinks with it.

    Raises:
        ValueError: a name that is not a Conv/Linear layer of ``model``, or indices outside the layer.
    """
    modules = dict(model.named_modules())
    sizes = channels(model)  # out channels of every Conv/Linear, before any pruning
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    for name, keep in kept.items():
        if name not in sizes:
            raise ValueError(f"the plan prunes {name!r}, which is not a Conv/Linear layer of this model "
                             f"(its layers: {', '.join(sizes)}); is it the architecture that was pruned?")
        size, keep = sizes[name], sorted(int(i) for i in keep)
        if not keep or keep[0] < 0 or keep[-1] >= size or len(set(keep)) != len(keep):
            raise ValueError(f"the plan keeps channels {keep[:5]}... of {name!r}, which has {size}: indices must "
                             "be distinct and in [0, size); is this the architecture that was pruned?")
        removed = sorted(set(range(size)) - set(keep))
        if removed:
            layer = modules[name]
            prune = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
            graph.get_pruning_group(layer, prune, idxs=removed).prune()
    return model


def save_pruned(path: PathLike, result: PruneResult, example_inputs: torch.Tensor) -> str:
    """Save ``result.model`` as its plan and weights in a safe :mod:`kdlib.checkpoint`; return its SHA-256.

    ``example_inputs`` (one batch, as given to :func:`prune_channels`) records the input shape the dependency
    graph is traced with when loading.
    """
    state: dict[str, Any] = {
        "format": _FORMAT,
        "kept": {name: [int(i) for i in keep] for name, keep in result.kept.items()},
        "input_shape": [int(s) for s in example_inputs.shape[1:]],
        "input_dtype": str(example_inputs.dtype).removeprefix("torch."),
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
    }
    return save_checkpoint(path, state)


def load_pruned(path: PathLike, model: nn.Module, *, map_location: Any = "cpu") -> nn.Module:
    """Load a model saved by :func:`save_pruned` into ``model``, a fresh *unpruned* instance of its architecture.

    The plan is re-applied to ``model`` (in place), then the saved weights are loaded strictly. Returns
    ``model``, in evaluation mode.

    Raises:
        ValueError: the file is not a saved pruned model, or ``model`` is not the architecture that was
            pruned (a layer of the plan is missing, or a weight's shape differs after the plan).
    """
    state = load_checkpoint(path, map_location=map_location)
    if state.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a pruned model saved by kdlib.prune.save_pruned (format "
                         f"{state.get('format')!r}); for a plain checkpoint use kdlib.checkpoint.load_checkpoint")
    device = next(model.parameters()).device
    example = torch.zeros(1, *state["input_shape"], dtype=getattr(torch, state["input_dtype"]), device=device)
    apply_plan(model.eval(), example, state["kept"])
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    mismatched = [k for k, v in state["state_dict"].items() if k in shapes and shapes[k] != v.shape]
    missing = sorted(set(state["state_dict"]) ^ set(shapes))
    if mismatched or missing:
        raise ValueError(f"the model does not match the saved pruned model after its plan was applied "
                         f"(different shapes: {mismatched[:5]}, names in only one of them: {missing[:5]}); "
                         "pass a fresh instance of the architecture that was pruned")
    model.load_state_dict(state["state_dict"])
    return model
