"""Slimmable networks: one set of weights that runs at several widths, trained with the sandwich rule.

A slimmable layer keeps full-width weights :math:`W \\in \\mathbb{R}^{C_{out} \\times C_{in} \\times \\dots}` and at
width multiplier :math:`w \\in (0, 1]` computes with the leading slice :math:`W_{[:\\lceil w C_{out} \\rceil,
:\\lceil w C_{in} \\rceil]}` (Yu et al. 2019, "Slimmable Neural Networks", ICLR). The first layer keeps every input
channel (``slim_in=False``), the classifier every class (``slim_out=False``). Narrow widths share the weights of the
wide ones, so a network at width 0.25 costs about :math:`0.25^2` of the FLOPs of the full one (both sides of every
inner layer shrink) and a deployment can choose its width at run time.

BatchNorm cannot be shared: the statistics of the first 8 of 32 channels differ when the other 24 channels are
absent from the previous layer. Slimmable Networks keep one BN per configured width
(:class:`SwitchableBatchNorm2d`/``1d``), which is what this module does, so the widths are a fixed list
(``model.widths``). Universally slimmable networks (US-Nets: Yu & Huang 2019, "Universally Slimmable Networks and
Improved Training Techniques", ICCV) run *any* width in a range instead: they share one BN and, after training,
recompute its statistics for the chosen width on a few training batches (BN recalibration, as
:func:`kdlib.batchnorm.recalibrate_batchnorm` does for pruned models; for a model from :func:`extract` that call
works as it is). Once-for-all networks (Cai et al. 2020, "Once-for-All: Train One Network and Specialize it for
Efficient Deployment", ICLR) generalize the idea to depth, kernel size and resolution.

Training (US-Nets): the *sandwich rule* trains, at every step, the widest network, the narrowest and ``n`` random
widths between them, and sums their gradients; *in-place distillation* trains the widest one on the labels and
all the others on its detached soft predictions :math:`p = \\mathrm{softmax}(z_{max})`:

.. math::
    \\mathcal{L} = \\mathrm{CE}(z_{max}, y) + \\sum_{w \\in \\{w_{min}\\} \\cup R} \\mathrm{KL}(\\mathrm{sg}[p] \\,\\|\\,
    \\mathrm{softmax}(z_w)).

With :func:`kdlib.train.fit` the cross-entropy is fit's own (``ce_weight``; the model is at its widest width while
fit runs) and the sum is :class:`InPlaceDistillation`. :func:`extract` cuts out an ordinary, physically smaller
:class:`kdlib.models.CNN` for one width (for ONNX export and latency); :func:`training_flops` accounts for the cost.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdlib import models as _models
from kdlib.data import Batch
from kdlib.losses import kd_loss
from kdlib.profile import count_flops

__all__ = [
    "InPlaceDistillation", "SlimmableCNN", "SlimmableConv2d", "SlimmableLinear", "SwitchableBatchNorm1d",
    "SwitchableBatchNorm2d", "active_channels", "extract", "flops_per_width", "set_width", "training_flops", "width",
]


def active_channels(channels: int, w: float) -> int:
    """:math:`\\lceil w \\cdot C \\rceil` (at least 1); rounded first so ``0.7 * 10`` is 7, not 8."""
    return max(1, math.ceil(round(w * channels, 6)))


class _Slim:
    """A layer whose active width is set by :func:`set_width` (``width_mult``)."""

    width_mult: float = 1.0


class _SlimWeights(_Slim):
    """A linear or conv layer (weight ``(out, in, ...)``) that computes with the leading slice of its weights."""

    weight: torch.Tensor
    slim_in: bool
    slim_out: bool

    def active(self) -> tuple[int, int]:
        """``(in, out)`` features or channels used at the current width (all of a side that is not slimmed)."""
        out_full, in_full = self.weight.shape[:2]
        w = self.width_mult
        return (active_channels(in_full, w) if self.slim_in else in_full,
                active_channels(out_full, w) if self.slim_out else out_full)


class SlimmableLinear(nn.Linear, _SlimWeights):
    """``nn.Linear`` whose forward uses the first ``⌈w·in⌉`` inputs and ``⌈w·out⌉`` outputs at width ``w``
    (all of them on a side whose ``slim_in``/``slim_out`` is False: the classifier keeps every class)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, slim_in: bool = True,
                 slim_out: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.slim_in, self.slim_out = slim_in, slim_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, o = self.active()
        return F.linear(x, self.weight[:o, :i], None if self.bias is None else self.bias[:o])


class SlimmableConv2d(nn.Conv2d, _SlimWeights):
    """``nn.Conv2d`` (groups=1) that uses the first ``⌈w·C_in⌉`` input and ``⌈w·C_out⌉`` output channels at width
    ``w``; ``slim_in=False`` for the first layer, which sees every image channel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, *, slim_in: bool = True, slim_out: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.slim_in, self.slim_out = slim_in, slim_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, o = self.active()
        bias = None if self.bias is None else self.bias[:o]
        return F.conv2d(x, self.weight[:o, :i], bias, self.stride, self.padding, self.dilation, self.groups)


class _SwitchableBatchNorm(nn.Module, _Slim):
    """One BatchNorm of ``⌈w·C⌉`` features per configured width ``w`` (private affine parameters and running
    statistics per width, Slimmable Networks §3.2); the forward uses the current width's."""

    norm: type[nn.Module] = nn.BatchNorm2d

    def __init__(self, num_features: int, widths: Sequence[float]) -> None:
        super().__init__()
        self.num_features, self.widths = num_features, tuple(widths)
        self.bn = nn.ModuleList(self.norm(active_channels(num_features, w)) for w in self.widths)

    def active_norm(self) -> nn.Module:
        """The BatchNorm of the current width."""
        return self.bn[self.widths.index(self.width_mult)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.active_norm()(x)


class SwitchableBatchNorm2d(_SwitchableBatchNorm):
    """Switchable BatchNorm for ``(N, C, H, W)`` activations."""

    norm = nn.BatchNorm2d


class SwitchableBatchNorm1d(_SwitchableBatchNorm):
    """Switchable BatchNorm for ``(N, C)`` activations."""

    norm = nn.BatchNorm1d


def _conv_bn_relu(cin: int, cout: int, widths: Sequence[float], stride: int = 1, slim_in: bool = True) -> list[nn.Module]:
    conv = SlimmableConv2d(cin, cout, 3, stride, padding=1, bias=False, slim_in=slim_in)
    return [conv, SwitchableBatchNorm2d(cout, widths), nn.ReLU()]


class SlimmableCNN(nn.Module):
    """The slimmable version of :class:`kdlib.models.CNN` (same layers and names; BN switchable per width).

    A 3×3 stride-2 conv-BN-ReLU stem, stages of two conv-BN-ReLU (each after the first starting with 2×2 max
    pooling), global average pooling and ``fc``. At width ``w`` stage ``i`` has ``⌈w·channels[i]⌉`` channels, and
    :func:`extract` gives ``kdlib.models.CNN(channels=model.channels_at(w))`` with the same outputs.

    Expected input: ``(N, in_channels, input_size, input_size)``; feature layers ``block1``, ``block2``, ... at the
    current width.

    Args:
        widths: the width multipliers in (0, 1] it can run at (sorted; the largest is the one :func:`kdlib.train.fit`
            trains on the labels).
        in_channels, num_classes, input_size, channels: as :class:`kdlib.models.CNN` (``input_size=8`` for digits).
    """

    def __init__(self, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), in_channels: int = 1, num_classes: int = 10,
                 input_size: int = 28, channels: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        _models._check_num_classes(num_classes)
        channels = _models._check_positive_ints("channels", channels)
        widths = tuple(sorted({float(w) for w in widths}))
        if not widths or not all(0.0 < w <= 1.0 for w in widths):
            raise ValueError(f"widths must be non-empty multipliers in (0, 1], got {widths!r}")
        if input_size < 2 ** len(channels):
            raise ValueError(f"input_size={input_size} is too small for {len(channels)} stages")
        self.widths, self.width_mult, self.channels = widths, widths[-1], channels
        self.in_channels, self.num_classes, self.input_size = in_channels, num_classes, input_size
        self.input_shape = _models._as_shape((in_channels, input_size, input_size))
        self.feature_layers = tuple(f"block{i}" for i in range(1, len(channels) + 1))
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, channels[0], widths, stride=2, slim_in=False))
        prev = channels[0]
        for i, (name, c) in enumerate(zip(self.feature_layers, channels)):
            pool = [nn.MaxPool2d(2, ceil_mode=True)] if i > 0 else []
            self.add_module(name, nn.Sequential(*pool, *_conv_bn_relu(prev, c, widths), *_conv_bn_relu(c, c, widths)))
            prev = c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = SlimmableLinear(prev, num_classes, slim_out=False)
        set_width(self, self.width_mult)

    def channels_at(self, w: float) -> tuple[int, ...]:
        """Channels of each stage at width ``w``."""
        return tuple(active_channels(c, _check_width(self, w)) for c in self.channels)

    def plain_architecture(self, w: float) -> nn.Module:
        """A freshly initialised :class:`kdlib.models.CNN` of width ``w``: what :func:`extract` fills in, and the
        network to train from scratch as the baseline of that width."""
        return _models.CNN(self.num_classes, self.channels_at(w), self.in_channels, self.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` at the current width."""
        _models._check_input(self, x)
        x = self.stem(x)
        for name in self.feature_layers:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _check_width(model: nn.Module, w: float) -> float:
    """``w`` as the configured width it equals (to 1e-9), else one ValueError naming the valid widths."""
    widths: tuple[float, ...] | None = getattr(model, "widths", None)
    if widths is None:
        raise TypeError(f"{type(model).__name__} is not slimmable (it has no .widths)")
    for valid in widths:
        if isinstance(w, (int, float)) and abs(float(w) - valid) < 1e-9:
            return valid
    raise ValueError(f"width {w!r} is not one of this model's widths {list(widths)}")


def set_width(model: nn.Module, w: float) -> None:
    """Switch every slimmable layer of ``model`` (and ``model.width_mult``) to width ``w``, one of ``model.widths``."""
    w = _check_width(model, w)
    model.width_mult = w
    for m in model.modules():
        if isinstance(m, _Slim):
            m.width_mult = w


@contextlib.contextmanager
def width(model: nn.Module, w: float) -> Iterator[nn.Module]:
    """``with width(model, 0.5): model(x)`` runs at width 0.5 and restores the previous width afterwards."""
    previous = model.width_mult
    set_width(model, w)
    try:
        yield model
    finally:
        set_width(model, previous)


class InPlaceDistillation:
    """The sandwich rule with in-place distillation (US-Nets, Yu & Huang 2019) as a :class:`kdlib.train.LossTerm`.

    ``fit(model, data, loss_terms=[InPlaceDistillation(model)])``: fit's own forward pass and cross-entropy
    (``ce_weight``) train the widest width on the labels; this term then runs ``model`` itself on ``batch.x`` at
    the narrowest width and at ``n_random`` widths drawn from the configured ones strictly between (all of them
    when ``n_random`` is None, as Slimmable Networks train every width every step), and returns

    .. math:: \\sum_{w} T^2\\, \\mathrm{KL}\\big(\\mathrm{softmax}(\\mathrm{sg}[z_{max}] / T) \\,\\|\\,
        \\mathrm{softmax}(z_w / T)\\big),

    with the teacher logits ``z_max`` the (detached) logits fit passes in. With ``targets="labels"`` every student
    width is trained on the labels instead, :math:`\\sum_w \\mathrm{CE}(z_w, y)` (the sandwich rule without in-place
    distillation: the control that separates the teacher from the weight sharing). fit's single backward then sums the
    gradients of all widths in the shared weights. Why the term runs the forward passes: a term only receives
    ``(batch, logits)`` of one forward pass, so it keeps a reference to the model (it is deliberately not an
    ``nn.Module``, which would make fit optimize the model's parameters twice) and switches the width with
    :func:`width` around each extra pass. It sets the widest width in ``start`` (fit calls it before the first
    step) and refuses logits from another width. Random widths come from :mod:`random` seeded per step from
    torch's generator, which fit seeds and checkpoints. Untested under ``torchrun``; do not combine with
    ``fit(recalibrate_bn=True)``, which would reset the BatchNorms of the narrow widths without re-estimating them.

    Args:
        model: the slimmable model fit trains.
        weight: weight of the summed KL terms (the paper: 1).
        n_random: random intermediate widths per step (US-Nets: 2), or None for all configured ones.
        temperature: :math:`T` (the paper: 1, plain soft targets).
        targets: ``"widest"`` (in-place distillation) or ``"labels"`` (cross-entropy at every width).
        name: key of the logged value, ``"loss/<name>"``.
    """

    def __init__(self, model: nn.Module, *, weight: float = 1.0, n_random: int | None = None,
                 temperature: float = 1.0, targets: str = "widest", name: str = "inplace_kd") -> None:
        if not hasattr(model, "widths"):
            raise TypeError(f"{type(model).__name__} is not slimmable (it has no .widths)")
        if len(model.widths) < 2:
            raise ValueError("in-place distillation needs at least two widths")
        if n_random is not None and (isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0):
            raise ValueError(f"n_random must be a non-negative int or None, got {n_random!r}")
        if targets not in ("widest", "labels"):
            raise ValueError(f"targets must be 'widest' or 'labels', got {targets!r}")
        self.model, self.weight, self.n_random = model, float(weight), n_random
        self.temperature, self.targets, self.name = temperature, targets, name

    def __repr__(self) -> str:
        return (f"InPlaceDistillation(widths={list(self.model.widths)}, n_random={self.n_random}, "
                f"T={self.temperature}, targets={self.targets!r})")

    def start(self, total_steps: int) -> None:
        set_width(self.model, self.model.widths[-1])

    def step_widths(self) -> list[float]:
        """The student widths of one step: the narrowest, then the intermediate ones (sampled if ``n_random``)."""
        widths = self.model.widths
        middle = list(widths[1:-1])
        if self.n_random is not None and self.n_random < len(middle):
            rng = random.Random(int(torch.randint(0, 2**31 - 1, ()).item()))
            middle = sorted(rng.sample(middle, self.n_random))
        return [widths[0], *middle]

    def __call__(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        if self.model.width_mult != self.model.widths[-1]:
            raise ValueError(f"InPlaceDistillation needs the model at its widest width {self.model.widths[-1]} during "
                             f"fit's forward pass, but it is at {self.model.width_mult}")
        teacher = logits.detach()
        total = logits.new_zeros((), dtype=torch.float32)
        for w in self.step_widths():
            with width(self.model, w):
                z = self.model(batch.x)
                total = total + (F.cross_entropy(z, batch.y) if self.targets == "labels"
                                 else kd_loss(z, teacher, self.temperature))
        return total


def _plain_state(model: nn.Module, w: float) -> dict[str, torch.Tensor]:
    """The state dict at width ``w`` with slimmable layers sliced and switchable BNs replaced by their BN of ``w``."""
    state: dict[str, torch.Tensor] = {}
    with width(model, w):
        switchable = [n for n, m in model.named_modules() if isinstance(m, _SwitchableBatchNorm)]
        for name, m in model.named_modules():
            prefix = f"{name}." if name else ""
            if any(name.startswith(f"{s}.") for s in switchable):
                continue
            if isinstance(m, _SwitchableBatchNorm):
                state.update({prefix + k: v for k, v in m.active_norm().state_dict().items()})
            elif isinstance(m, _SlimWeights):
                i, o = m.active()
                state[prefix + "weight"] = m.weight[:o, :i]
                if m.bias is not None:
                    state[prefix + "bias"] = m.bias[:o]
            else:
                own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
                state.update({prefix + k: v for k, v in own if k not in m._non_persistent_buffers_set})
    return {k: v.detach().clone() for k, v in state.items()}


def extract(model: nn.Module, w: float) -> nn.Module:
    """An ordinary model (``nn.Conv2d``/``nn.BatchNorm2d``/``nn.Linear``, :meth:`SlimmableCNN.plain_architecture`)
    holding copies of the weights used at width ``w``: its outputs equal ``model``'s at width ``w``, it has only the
    parameters of that width, and it exports to ONNX like any kdlib model. Returned in ``model``'s train/eval mode."""
    w = _check_width(model, w)
    plain = model.plain_architecture(w)
    plain.load_state_dict(_plain_state(model, w), strict=True)
    plain.to(next(model.parameters()).device)
    return plain.train(model.training)


def flops_per_width(model: nn.Module, example: torch.Tensor | None = None) -> dict[float, int]:
    """Forward FLOPs per sample of each width, counted by :func:`kdlib.profile.count_flops` on :func:`extract`'s
    models (``example``: default one zero input of ``model.input_shape``)."""
    example = torch.zeros(1, *model.input_shape) if example is None else example
    return {w: count_flops(extract(model, w), example) for w in model.widths}


def training_flops(model: nn.Module, samples: int, *, n_random: int | None = None,
                   example: torch.Tensor | None = None) -> dict[str, float]:
    """Training FLOPs of the sandwich rule vs separate networks, for ``samples`` training samples seen by each.

    A training step costs about three forward passes (the backward pass about two, Kaplan et al. 2020), so with
    forward FLOPs :math:`F_w` per sample (:func:`flops_per_width`):
    ``sandwich`` :math:`= 3 N (F_{max} + F_{min} + \\frac{k}{m} \\sum_{mid} F_w)` with ``k = n_random`` of the
    ``m`` intermediate widths per step (all of them when None; in-place distillation reuses the widest forward
    pass as the teacher, so it adds nothing), and ``separate`` :math:`= 3 N \\sum_w F_w` for one network per
    width each trained on ``samples`` samples. With ``n_random=None`` the two are equal: the sandwich rule saves
    storage and training runs, not FLOPs.
    """
    flops = flops_per_width(model, example)
    ws = model.widths
    middle = [flops[w] for w in ws[1:-1]]
    share = 1.0 if n_random is None or not middle else min(n_random, len(middle)) / len(middle)
    per_sample = flops[ws[-1]] + (flops[ws[0]] if len(ws) > 1 else 0) + share * sum(middle)
    return {"sandwich": 3.0 * samples * per_sample, "separate": 3.0 * samples * sum(flops.values()),
            **{f"forward@{w}": float(f) for w, f in flops.items()}}
