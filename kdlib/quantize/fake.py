"""Fake-quantized models: b-bit weights and activations simulated in float, for PTQ accuracy and for QAT.

:func:`prepare` copies a model, folds each BatchNorm into the convolution before it (:func:`fold_batchnorm`),
and wraps every ``Conv1d``/``Conv2d``/``Linear`` in a :class:`FakeQuantLayer` that fake-quantizes the layer's
input activations (asymmetric, per tensor, range from an observer) and its weights (symmetric, per output
channel or per tensor) on every forward pass. The result is an ordinary ``nn.Module``:

* post-training quantization (PTQ): :func:`calibrate` it on a few batches, then :func:`kdlib.train.evaluate`;
* quantization-aware training (QAT, Jacob et al. 2018): train it with :func:`kdlib.train.fit`, or distill it
  from the fp32 model with :func:`kdlib.distill.distill` (QAT + KD) — the straight-through estimator of
  :func:`~kdlib.quantize.affine.fake_quantize` carries the gradient, and the activation observers follow the
  training distribution by moving average.

Folding BN first makes the simulation quantize the same weights that an inference engine runs (ONNX Runtime
folds BN too), and QAT then fine-tunes without BN: the usual "freeze BN statistics, then fold" recipe
(Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference: A whitepaper", 2018, §3.2),
taken at step 0. Only a Conv/Linear directly followed by its BatchNorm inside an ``nn.Sequential`` is folded;
other normalization layers stay in float.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.data import Dataset, Split
from kdlib.device import module_device
from kdlib.quantize.affine import check_bits, fake_quantize
from kdlib.quantize.observers import OBSERVERS, Observer, make_observer
from kdlib.sources import as_source

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
FLOAT_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class QuantConfig:
    """How :func:`prepare` quantizes: bit-widths, granularity and observers.

    Args:
        weight_bits: bits per weight, 2 to 8 (symmetric, signed codes).
        activation_bits: bits per input activation of each quantized layer (asymmetric, unsigned codes), or
            None to quantize weights only.
        per_channel: one scale per output channel of each weight (else one per tensor).
        weight_observer: how a weight's range is chosen: ``"minmax"`` or ``"mse"``.
        activation_observer: ``"minmax"``, ``"moving_average"``, ``"percentile"`` or ``"mse"``.
    """

    weight_bits: int = 8
    activation_bits: int | None = 8
    per_channel: bool = True
    weight_observer: str = "minmax"
    activation_observer: str = "moving_average"

    def __post_init__(self) -> None:
        check_bits(self.weight_bits)
        if self.activation_bits is not None:
            check_bits(self.activation_bits)
        if self.weight_observer not in ("minmax", "mse"):
            raise ValueError(f"weight_observer must be 'minmax' or 'mse', got {self.weight_observer!r}")
        if self.activation_observer not in OBSERVERS:
            raise ValueError(f"activation_observer must be one of {sorted(OBSERVERS)}, got {self.activation_observer!r}")


class FakeQuantLayer(nn.Module):
    """A Conv1d, Conv2d or Linear layer computing with fake-quantized input activations and weights.

    The weight's scale is recomputed from the current weight (cached while it does not change); the input's
    range comes from ``input_observer``, which records in training mode and during :func:`calibrate`, and is
    frozen otherwise.
    """

    def __init__(self, layer: nn.Module, config: QuantConfig) -> None:
        super().__init__()
        if not isinstance(layer, QUANTIZABLE_TYPES):
            raise TypeError(f"FakeQuantLayer wraps {[t.__name__ for t in QUANTIZABLE_TYPES]}, got {type(layer).__name__}")
        self.layer = layer
        self.config = config
        self.input_observer: Observer | None = (
            make_observer(config.activation_observer) if config.activation_bits is not None else None
        )
        self.calibrating = False
        self._weight_cache: tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None
        self._input_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def weight_axis(self) -> int | None:
        return 0 if self.config.per_channel else None

    def weight_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero-point of the current weight."""
        weight = self.layer.weight
        key = (weight._version, weight.data_ptr())
        if self.training or self._weight_cache is None or self._weight_cache[0] != key:
            observer = make_observer(self.config.weight_observer, axis=self.weight_axis).to(weight.device)
            observer(weight.detach())
            self._weight_cache = (key, observer.qparams(self.config.weight_bits, symmetric=True))
        return self._weight_cache[1]

    def quantized_weight(self) -> torch.Tensor:
        """The weight after fake quantization (differentiable by the straight-through estimator)."""
        scale, zero_point = self.weight_qparams()
        return fake_quantize(
            self.layer.weight, scale, zero_point, self.config.weight_bits, symmetric=True, axis=self.weight_axis
        )

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        observer, bits = self.input_observer, self.config.activation_bits
        if observer is None or bits is None:
            return x
        if self.training or self.calibrating:
            observer(x)
            self._input_cache = None
        elif not observer.observed:
            raise RuntimeError(
                "this fake-quantized model has not seen any data, so its activation ranges are unknown: call "
                "kdlib.quantize.calibrate(model, data) first (or train it)"
            )
        if self._input_cache is None or self.training:
            self._input_cache = observer.qparams(bits, symmetric=False)
        scale, zero_point = self._input_cache
        return fake_quantize(x, scale, zero_point, bits, symmetric=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's output, computed from fake-quantized inputs and weights."""
        x, weight = self._quantize_input(x), self.quantized_weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)

    def extra_repr(self) -> str:
        c = self.config
        granularity = "per-channel" if c.per_channel else "per-tensor"
        return f"weights {c.weight_bits}-bit {granularity}, activations {c.activation_bits or 'float'}"


def _fold(layer: nn.Module, bn: nn.Module) -> None:
    """``w' = w·γ/√(σ²+ε)`` per output channel, ``b' = (b − μ)·γ/√(σ²+ε) + β``: same eval-mode output."""
    with torch.no_grad():
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        layer.weight.mul_(factor.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        new_bias = (bias - bn.running_mean) * factor + shift
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias)
        else:
            layer.bias.copy_(new_bias)


def _fold_in_place(model: nn.Module) -> list[str]:
    folded = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            layer, bn = parent._modules[first], parent._modules[second]
            if (
                isinstance(layer, QUANTIZABLE_TYPES)
                and isinstance(bn, _BN_TYPES)
                and bn.track_running_stats
                and bn.num_features == layer.weight.shape[0]
            ):
                _fold(layer, bn)
                parent._modules[second] = nn.Identity()
                folded.append(f"{parent_name}.{second}" if parent_name else second)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval semantics) with each BatchNorm folded into the Conv/Linear right before it.

    The BatchNorm becomes ``nn.Identity``; the eval-mode output is unchanged up to float rounding.
    """
    folded = copy.deepcopy(model)
    _fold_in_place(folded)
    return folded.train(model.training)


def _check_names(model: nn.Module, names: Sequence[str], what: str) -> None:
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"{what} names {missing} that are not modules of the model; its layers: {list(known)[1:]}")


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def quantizable_layers(model: nn.Module, skip: Sequence[str] = ()) -> list[str]:
    """Names of the layers :func:`prepare` would quantize, after checking nothing else has weights.

    Raises:
        ValueError: a layer outside ``skip`` has parameters but is neither quantizable (Conv1d, Conv2d,
            Linear) nor a normalization layer kept in float; the message names it.
    """
    names = []
    for name, module in model.named_modules():
        if _under(name, skip) or _under(name, names) or isinstance(module, FakeQuantLayer):
            continue
        if isinstance(module, QUANTIZABLE_TYPES):
            names.append(name)
        elif not isinstance(module, FLOAT_TYPES) and any(True for _ in module.parameters(recurse=False)):
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}) has weights that kdlib.quantize cannot quantize "
                f"(it quantizes {', '.join(t.__name__ for t in QUANTIZABLE_TYPES)}); pass skip=[{name!r}] to keep "
                "it in float"
            )
    return names


def prepare(
    model: nn.Module,
    config: QuantConfig | None = None,
    *,
    skip: Sequence[str] = (),
    layer_bits: Mapping[str, int] | None = None,
    fold_bn: bool = True,
) -> nn.Module:
    """A fake-quantized copy of ``model``: BN folded, each quantizable layer wrapped in :class:`FakeQuantLayer`.

    Args:
        model: any module; it is not modified.
        config: bit-widths and observers (default: 8-bit per-channel weights, 8-bit activations).
        skip: names of layers (or whole submodules) to keep in float, e.g. the first and last layer.
        layer_bits: weight bits per layer name, overriding ``config.weight_bits`` (mixed precision).
        fold_bn: fold each BatchNorm into the Conv/Linear before it (see the module docstring).

    Raises:
        ValueError: an unsupported layer with weights (named), unknown names in ``skip``/``layer_bits``, a
            bit-width outside [2, 8], or no layer left to quantize.
    """
    config = config or QuantConfig()
    layer_bits = dict(layer_bits or {})
    _check_names(model, list(skip), "skip")
    _check_names(model, list(layer_bits), "layer_bits")
    for bits in layer_bits.values():
        check_bits(bits)
    quantized = copy.deepcopy(model)
    if fold_bn:
        _fold_in_place(quantized)
    names = quantizable_layers(quantized, skip)
    if not names:
        raise ValueError("the model has no Conv1d, Conv2d or Linear layer to quantize outside `skip`")
    not_quantizable = sorted(set(layer_bits) - set(names))
    if not_quantizable:
        raise ValueError(f"layer_bits names layers that are not quantized: {not_quantizable}; quantized: {names}")
    for name in names:
        layer_config = replace(config, weight_bits=layer_bits.get(name, config.weight_bits))
        wrapped = FakeQuantLayer(quantized.get_submodule(name), layer_config)
        if name == "":
            return wrapped.to(module_device(model)).train(model.training)
        parent, _, child = name.rpartition(".")
        setattr(quantized.get_submodule(parent), child, wrapped)
    return quantized.train(model.training)


def fake_quant_layers(model: nn.Module) -> dict[str, FakeQuantLayer]:
    """The :class:`FakeQuantLayer` modules of a prepared model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLayer)}


def calibration_batches(data: Any, batches: int, batch_size: int) -> list[torch.Tensor]:
    """Up to ``batches`` input batches from a tensor, a Split, a Dataset (its training split: calibrating on the
    test set would leak it) or a torch Dataset/DataLoader (a seeded random sample), or one clear error when there
    is nothing to calibrate on."""
    if isinstance(data, Dataset):
        data = data.train
    elif not isinstance(data, (Split, torch.Tensor)):
        data = as_source(data).sample(max(batches, 0) * max(batch_size, 0))[0]
    n = len(data)
    if n == 0 or batches < 1 or batch_size < 1:
        raise ValueError(
            f"calibration needs at least one example, batch and batch size, got {n}, {batches} and {batch_size}"
        )
    take = data.take if isinstance(data, Split) else data.__getitem__
    return [take(slice(i, i + batch_size)) for i in range(0, min(n, batches * batch_size), batch_size)]


def calibrate(
    model: nn.Module,
    data: Split | Dataset | torch.Tensor,
    *,
    batches: int = 16,
    batch_size: int = 128,
    reset: bool = True,
) -> nn.Module:
    """Record activation ranges of a :func:`prepare`-d model on up to ``batches`` batches; returns ``model``.

    ``data`` is a tensor of inputs, a :class:`~kdlib.data.Split`, or a :class:`~kdlib.data.Dataset` (its
    training split: calibrating on the test set would leak it). Runs in eval mode under ``torch.no_grad``;
    modes are restored. ``reset`` clears earlier observations first.
    """
    layers = fake_quant_layers(model)
    if not layers:
        raise ValueError("calibrate needs a model from kdlib.quantize.prepare (it has no FakeQuantLayer)")
    inputs = calibration_batches(data, batches, batch_size)
    device = module_device(model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for layer in layers.values():
            if reset and layer.input_observer is not None:
                layer.input_observer = make_observer(layer.config.activation_observer).to(device)
            layer._input_cache, layer.calibrating = None, True
        with torch.no_grad():
            for batch in inputs:
                model(batch.to(device))
    finally:
        for layer in layers.values():
            layer.calibrating = False
        for module, mode in modes:
            module.training = mode
    return model


def strip(model: nn.Module) -> nn.Module:
    """A float copy of a prepared model: each :class:`FakeQuantLayer` replaced by its wrapped layer.

    The weights keep their (QAT-trained) float values; this is what goes to ONNX export, where the inference
    engine quantizes them again with the same symmetric per-channel rule.
    """
    plain = copy.deepcopy(model)
    if isinstance(plain, FakeQuantLayer):
        return plain.layer
    for name in fake_quant_layers(plain):
        parent, _, child = name.rpartition(".")
        owner = plain.get_submodule(parent)
        setattr(owner, child, getattr(owner, child).layer)
    return plain
