"""Structured pruning: physically remove channels and neurons, so the model gets smaller *and* faster.

Unstructured pruning zeroes single weights; the tensors keep their dense shapes and a dense kernel does the
same work. Structured pruning removes whole output channels of a convolution (whole neurons of a
linear layer) together with everything that depends on them: the matching BatchNorm entries and the input
channels of the next layer. Keeping a fraction :math:`1 - r` of the channels of two consecutive layers
leaves :math:`(1-r)^2` of the weights (and FLOPs) of the second one.

Two entry points:

* :func:`prune_channels` works on any model that Torch-Pruning can trace. Torch-Pruning's DepGraph
  (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning", ``fang2023depgraph``) finds the groups of
  coupled layers (a conv, its BatchNorm, the next conv's inputs, residual additions, flattens into a linear
  layer) and removes a channel from all of them at once.
* :func:`prune_conv_chain_l1` is the same idea from scratch for a plain chain of conv blocks: rank each
  convolution's filters by their L1 norm (Li et al. 2017, "Pruning Filters for Efficient ConvNets",
  ``li2017pruning``), keep the largest, and rebuild the next layer's inputs. It agrees with
  ``prune_channels(..., importance="l1")`` channel for channel.

Both leave their input model untouched and return a pruned copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from kdlib.data import Dataset, Split
from kdlib.profile import count_flops, count_parameters
from kdlib.sources import as_source

__all__ = ["PruneResult", "IMPORTANCES", "prune_channels", "prune_conv_chain_l1", "channels"]

IMPORTANCES = ("l1", "bn_scale", "taylor")
_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class PruneResult:
    """A structurally pruned model and what pruning it changed.

    Attributes:
        model: the pruned model (a new object; the input model is unchanged).
        ratio: the fraction of channels removed from every pruned layer.
        importance: the criterion that ranked the channels (``"l1"``, ``"bn_scale"`` or ``"taylor"``).
        params_before, params_after: :func:`kdlib.profile.count_parameters` of the model before and after.
        flops_before, flops_after: :func:`kdlib.profile.count_flops` per sample on the example inputs.
        channels_before, channels_after: output channels (conv) or features (linear) of every Conv/Linear
            layer, by module name.
        kept: for every layer whose outputs were pruned, the sorted indices (into the original layer) of
            the output channels that were kept.
    """

    model: nn.Module
    ratio: float
    importance: str
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    channels_before: dict[str, int]
    channels_after: dict[str, int]
    kept: dict[str, list[int]] = field(default_factory=dict)

    @property
    def params_ratio(self) -> float:
        """``params_after / params_before``."""
        return self.params_after / self.params_before

    @property
    def flops_ratio(self) -> float:
        """``flops_after / flops_before`` (1.0 for a model with no counted FLOPs)."""
        return self.flops_after / self.flops_before if self.flops_before else 1.0

    def as_dict(self) -> dict:
        """Everything but the model, as plain data for tables."""
        return {
            "ratio": self.ratio,
            "importance": self.importance,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "channels_before": dict(self.channels_before),
            "channels_after": dict(self.channels_after),
        }


def channels(model: nn.Module) -> dict[str, int]:
    """Output channels (Conv) or output features (Linear) of every Conv/Linear layer of ``model``, by name."""
    return {
        name: (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
        for name, m in model.named_modules()
        if isinstance(m, _PRUNABLE)
    }


def _check_ratio(ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be a number in [0, 1) (the fraction of channels to remove), got {ratio!r}")
    return float(ratio)


def _kept_count(channels: int, ratio: float, round_to: int | None) -> int:
    """Channels Torch-Pruning keeps in a layer: ``int(C (1 - r))``, rounded down to a multiple of ``round_to``."""
    keep = int(channels * (1.0 - ratio))
    if round_to:
        keep -= keep % round_to
    return keep


def _importance(name: str) -> tp.importance.Importance:
    if name == "l1":
        # Li et al. 2017: L1 norm of the root layer's own filters (not the group-averaged default).
        return tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()  # |gamma| of the BatchNorm after the layer (Liu et al. 2017)
    if name == "taylor":
        return tp.importance.TaylorImportance()  # |w * dL/dw| summed per channel (Molchanov et al. 2019)
    raise ValueError(f"importance must be one of {', '.join(map(repr, IMPORTANCES))}, got {name!r}")


TAYLOR_SAMPLES = 1024  # samples of a torch dataset whose gradients Taylor importance reads


def _as_batch(data: Split | Dataset | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, Dataset):
        data = data.train
    if isinstance(data, Split):
        return data.inputs, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    try:
        return as_source(data).sample(TAYLOR_SAMPLES)
    except TypeError:
        raise TypeError(
            f"data must be a kdlib Split/Dataset, a torch Dataset or DataLoader, or an (x, y) tuple of tensors, got "
            f"{type(data).__name__}"
        ) from None


def _default_ignored(model: nn.Module) -> list[nn.Module]:
    """The final classifier: the last Linear registered in the model (the last Conv/Linear if there is none)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return [linears[-1]]
    layers = [m for m in model.modules() if isinstance(m, _PRUNABLE)]
    return layers[-1:]


def prune_channels(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratio: float,
    importance: str = "l1",
    ignored_layers: Sequence[nn.Module] | None = None,
    round_to: int | None = None,
    data: Split | Dataset | tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PruneResult:
    """Remove the fraction ``ratio`` of output channels from every prunable layer, with Torch-Pruning.

    Torch-Pruning's DepGraph (Fang et al. 2023, ``fang2023depgraph``) traces ``model`` on ``example_inputs``
    and groups the parameters that must shrink together; each group rooted at a Conv/Linear layer keeps
    ``int(C (1 - ratio))`` of its ``C`` channels (rounded down to a multiple of ``round_to``), those with the
    highest importance, ranked per layer on the unpruned weights:

    * ``"l1"``: :math:`I_c = \\sum |W_{c,\\cdot}|`, the L1 norm of the layer's own filter ``c``
      (Li et al. 2017, ``li2017pruning``);
    * ``"bn_scale"``: :math:`I_c = |\\gamma_c|` of the BatchNorm that follows the layer (Liu et al. 2017,
      network slimming); layers not followed by a BatchNorm are not pruned;
    * ``"taylor"``: :math:`I_c = \\sum_{w \\in c} |w\\, \\partial L / \\partial w|` per layer, averaged over the
      layers of the group (the conv's filter, its BatchNorm, the next layer's input slice), a first-order
      Taylor estimate of the loss change when channel ``c`` is removed (Molchanov et al. 2019). Needs
      ``data``: one batch's cross-entropy gradients are computed (in eval mode).

    The final classifier (by default the last ``nn.Linear`` registered in the model) is in
    ``ignored_layers``, so the number of logits is kept; its *inputs* still shrink.

    Args:
        model: any traceable model; it is deep-copied, never modified.
        example_inputs: a batch for tracing and for counting FLOPs (on the model's device).
        ratio: fraction of channels to remove from each layer, in [0, 1).
        importance: ``"l1"``, ``"bn_scale"`` or ``"taylor"``.
        ignored_layers: layers (of ``model``) whose outputs must not be pruned; default: the last Linear.
            Given explicitly, the list replaces the default, so include the classifier yourself.
        round_to: keep a multiple of this many channels per layer (hardware-friendly widths).
        data: for ``"taylor"``: an ``(x, y)`` batch, a :class:`~kdlib.data.Split`, or a
            :class:`~kdlib.data.Dataset` (its training split) for the gradient.

    Returns:
        A :class:`PruneResult` with the pruned copy, parameter/FLOP counts and per-layer channels.

    Raises:
        ValueError: for a ratio outside [0, 1), an unknown importance, ``"taylor"`` without ``data``, a model
            with no prunable Conv/Linear layer, a ``round_to`` < 1, or a ratio that would remove every
            channel of a layer (the message names the layer).
    """
    ratio = _check_ratio(ratio)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(map(repr, IMPORTANCES))}, got {importance!r}")
    if importance == "taylor" and data is None:
        raise ValueError("taylor importance needs data=(x, y) (a batch) to compute the loss gradients")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive integer or None, got {round_to!r}")

    # Deep-copy the model and map the user's ignored layers to their copies.
    memo: dict[int, object] = {}
    pruned = copy.deepcopy(model, memo)
    if ignored_layers is None:
        ignored = _default_ignored(pruned)
    else:
        ignored = [memo.get(id(m), m) for m in ignored_layers]
    names = {m: n for n, m in pruned.named_modules()}
    prunable = [m for m in pruned.modules() if isinstance(m, _PRUNABLE) and m not in ignored]
    if not prunable:
        raise ValueError(
            f"{type(model).__name__} has no prunable Conv/Linear layer (besides the ignored final classifier)"
        )

    was_training = pruned.training
    pruned.eval()
    params_before, flops_before = count_parameters(pruned), count_flops(pruned, example_inputs)
    channels_before = channels(pruned)

    pruner = tp.pruner.MetaPruner(
        pruned,
        example_inputs,
        importance=_importance(importance),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        round_to=round_to,
        global_pruning=False,
    )
    if ratio > 0:
        importance_is_bn = importance == "bn_scale"
        emptied: dict[nn.Module, int] = {}
        for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=_PRUNABLE):
            if importance_is_bn and not any(isinstance(dep.layer, nn.modules.batchnorm._BatchNorm) for dep, _ in group):
                continue  # BNScaleImportance gives no score: Torch-Pruning leaves this layer alone
            root = group[0].dep.target.module
            size = pruner.DG.get_out_channels(root)
            if size is not None and _kept_count(size, ratio, round_to) < 1:
                emptied[root] = size
        if emptied:
            listed = ", ".join(
                f"{name!r} ({emptied[m]} channel{'s' if emptied[m] != 1 else ''})"
                for m, name in names.items()
                if m in emptied
            )
            raise ValueError(
                f"pruning ratio {ratio}{f' with round_to={round_to}' if round_to else ''} would remove every "
                f"channel of layer{'s' if len(emptied) > 1 else ''} {listed}; use a smaller ratio or add "
                f"{'them' if len(emptied) > 1 else 'it'} to ignored_layers"
            )

    if importance == "taylor":
        x, y = _as_batch(data)
        device = next(pruned.parameters()).device
        pruned.zero_grad(set_to_none=True)
        F.cross_entropy(pruned(x.to(device)), y.to(device)).backward()

    kept: dict[str, list[int]] = {}
    if ratio > 0:
        for group in pruner.step(interactive=True):
            root = group[0].dep.target.module
            size = pruner.DG.get_out_channels(root)
            removed = {int(i) for i in group[0].idxs}
            kept[names[root]] = [i for i in range(size) if i not in removed]
            group.prune()
    kept = {name: kept[name] for name in names.values() if name in kept}  # in module order
    pruned.zero_grad(set_to_none=True)
    pruned.train(was_training)

    return PruneResult(
        model=pruned,
        ratio=ratio,
        importance=importance,
        params_before=params_before,
        params_after=count_parameters(pruned),
        flops_before=flops_before,
        flops_after=count_flops(pruned, example_inputs),
        channels_before=channels_before,
        channels_after=channels(pruned),
        kept=kept,
    )


# --------------------------------------------------------------------------------- from scratch: a conv chain

_CHAIN_PASSTHROUGH = (
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules of a (possibly nested) ``nn.Sequential`` in execution order, with their qualified names."""
    out = []
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            out.extend(_leaves(child, qualified + "."))
        else:
            out.append((qualified, child))
    return out


def prune_conv_chain_l1(model: nn.Sequential, ratio: float) -> tuple[nn.Sequential, dict[str, list[int]]]:
    """L1 filter pruning (Li et al. 2017, ``li2017pruning``) of a plain conv chain, from scratch.

    Supported models: an ``nn.Sequential`` (nested ``nn.Sequential`` blocks are fine) of ``Conv2d``
    (``groups=1``), ``BatchNorm2d`` right after a conv, ``ReLU``, max/average pooling (also adaptive),
    ``Dropout``, ``Identity`` and ``Flatten``, ending in exactly one ``nn.Linear`` classifier after global
    pooling or a flatten (``in_features = C·H·W``). Anything else (residuals, hidden Linear layers, functional
    code in ``forward``) raises ``ValueError``; use :func:`prune_channels` for those. kdlib's ``"cnn"`` is such
    a chain: ``nn.Sequential(m.stem, m.block1, m.block2, m.block3, m.pool, nn.Flatten(), m.fc)``.

    For every conv with weights :math:`W \\in \\mathbb{R}^{C_{out} \\times C_{in} \\times k \\times k}`, the
    importance of output channel :math:`c` is :math:`\\|W_c\\|_1 = \\sum_{i,u,v} |W_{c,i,u,v}|`, computed on
    the *unpruned* weights. The ``int(C_{out}(1 - r))`` largest are kept; the conv's bias and the following
    BatchNorm keep the same entries, and the next conv (or the Linear, one block of ``H·W`` columns per
    channel) keeps the matching input channels. This matches Torch-Pruning with
    ``MagnitudeImportance(p=1, group_reduction="first")``, i.e. ``prune_channels(..., importance="l1")``.

    Args:
        model: the chain; it is not modified.
        ratio: fraction of each conv's output channels to remove, in [0, 1).

    Returns:
        ``(pruned, kept)``: a new ``nn.Sequential`` with the same nesting and module names, and for every
        conv (by qualified name, as in ``model.named_modules()``) the sorted indices of the kept channels.

    Raises:
        ValueError: for a ratio outside [0, 1), an unsupported structure, or a conv that would lose every
            channel (the message names it).
    """
    ratio = _check_ratio(ratio)
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"prune_conv_chain_l1 needs an nn.Sequential conv chain, got {type(model).__name__}")
    leaves = _leaves(model)
    layers = [(n, m) for n, m in leaves if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not any(isinstance(m, nn.Conv2d) for _, m in layers):
        raise ValueError("the chain has no Conv2d layer to prune")
    if not isinstance(leaves[-1][1], nn.Linear) or sum(isinstance(m, nn.Linear) for _, m in layers) != 1:
        raise ValueError("the chain must end in exactly one nn.Linear (the classifier) and have no other Linear")
    for i, (name, m) in enumerate(leaves):
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise ValueError(f"layer {name!r}: grouped/depthwise convolutions are not supported")
        if isinstance(m, nn.BatchNorm2d) and (i == 0 or not isinstance(leaves[i - 1][1], nn.Conv2d)):
            raise ValueError(f"layer {name!r}: a BatchNorm2d must directly follow a Conv2d")
        if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear, *_CHAIN_PASSTHROUGH)):
            raise ValueError(f"layer {name!r}: {type(m).__name__} is not supported in a plain conv chain")

    # 1. Rank every conv's filters on the original weights and choose the channels to keep.
    kept: dict[str, list[int]] = {}
    for name, m in layers:
        if isinstance(m, nn.Conv2d):
            keep = _kept_count(m.out_channels, ratio, None)
            if keep < 1:
                raise ValueError(
                    f"pruning ratio {ratio} would remove every channel of layer {name!r} "
                    f"({m.out_channels} channel{'s' if m.out_channels != 1 else ''})"
                )
            importance = m.weight.detach().abs().sum(dim=(1, 2, 3))
            n_pruned = m.out_channels - keep
            removed = set(torch.topk(importance, n_pruned, largest=False).indices.tolist()) if n_pruned else set()
            kept[name] = [c for c in range(m.out_channels) if c not in removed]

    # 2. Rebuild: slice outputs by this conv's kept channels, inputs by the previous conv's.
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    previous: list[int] | None = None  # kept output channels of the last conv seen
    with torch.no_grad():
        for name, _ in leaves:
            m = modules[name]
            if isinstance(m, nn.Conv2d):
                out_idx = torch.tensor(kept[name])
                weight = m.weight[out_idx]
                if previous is not None:
                    weight = weight[:, torch.tensor(previous)]
                m.weight = nn.Parameter(weight.clone())
                if m.bias is not None:
                    m.bias = nn.Parameter(m.bias[out_idx].clone())
                m.out_channels, m.in_channels = weight.shape[0], weight.shape[1]
                previous = kept[name]
                original_channels = model.get_submodule(name).out_channels
            elif isinstance(m, nn.BatchNorm2d):
                idx = torch.tensor(previous)
                if m.affine:
                    m.weight = nn.Parameter(m.weight[idx].clone())
                    m.bias = nn.Parameter(m.bias[idx].clone())
                if m.track_running_stats:
                    m.running_mean = m.running_mean[idx].clone()
                    m.running_var = m.running_var[idx].clone()
                m.num_features = len(previous)
            elif isinstance(m, nn.Linear):
                if m.in_features % original_channels:
                    raise ValueError(
                        f"layer {name!r}: in_features={m.in_features} is not a multiple of the last conv's "
                        f"{original_channels} channels, so it does not read a flattened feature map"
                    )
                spatial = m.in_features // original_channels
                columns = torch.tensor([c * spatial + s for c in previous for s in range(spatial)])
                m.weight = nn.Parameter(m.weight[:, columns].clone())
                m.in_features = len(columns)
    return pruned, kept

