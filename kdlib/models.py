"""Model zoo: the teachers and students used in the book, behind a small name registry.

Every kdlib model follows three conventions, so the rest of the library can treat them alike:

* ``forward(x)`` returns logits only (no tuples, no ``is_feat`` flags). Intermediate features are read with
  forward hooks, see :mod:`kdlib.features`.
* ``model.feature_layers`` names (as in :meth:`~torch.nn.Module.named_modules`) the submodules whose outputs
  are the model's stage features for feature-based distillation, shallow to deep. Each is a post-activation
  output, except in the pre-activation Wide ResNet (see :class:`WideResNet`).
* ``model.input_shape`` is the per-sample input shape; ``forward`` checks it and raises one ``ValueError``
  saying what it expected and what it got. The last linear layer is always ``model.fc``.

Models are built by name::

    from kdlib import models
    teacher = models.create("resnet32x4", num_classes=100)
    student = models.create("mlp", hidden=(64,), input_shape=40)
    models.available()  # ['cnn', 'decoder_lm', 'gpt_micro', 'gpt_mini', 'lenet5', 'mlp', 'mnist1d_cnn', ...]

The language models (``decoder_lm``, ``gpt_mini``, ``gpt_micro``: :class:`kdlib.transformer.DecoderLM`) map token
ids ``(N, L)`` to next-token logits ``(N, L, vocabulary)``; they have ``context`` instead of ``input_shape``.

Activations are never applied in place, because :class:`kdlib.features.FeatureRecorder` keeps references to
module outputs and an in-place op later in the forward pass would change a recorded feature.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

__all__ = [
    "MLP",
    "MNIST1DCNN",
    "LeNet5",
    "CNN",
    "BasicBlock",
    "CifarResNet",
    "WideBasicBlock",
    "WideResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "resnet",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "gpt_mini",
    "gpt_micro",
    "register",
    "create",
    "available",
]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


# --------------------------------------------------------------------------------------------- registry


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers a model class or builder function under ``name``.

    The builder must accept ``num_classes`` as a keyword argument; its other keyword arguments become the
    options :func:`create` accepts for that name.

    Args:
        name: Registry key, e.g. ``"resnet20"``. Must not be registered already.

    Returns:
        A decorator that returns the builder unchanged.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = builder
        return builder

    return decorator


def available() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int = 10, *, seed: int | None = None, **kwargs: object) -> nn.Module:
    """Build a registered model.

    Args:
        name: A name from :func:`available`, e.g. ``"lenet5"`` or ``"resnet8x4"``.
        num_classes: Number of output logits (at least 2).
        seed: If given, the weights are initialised from ``torch.manual_seed(seed)`` inside
            :func:`torch.random.fork_rng`, so the same seed gives the same weights and the global random
            state is left untouched. ``None`` draws from the global generator.
        **kwargs: Model options, e.g. ``hidden=(256, 128)`` for ``"mlp"`` or ``in_channels=1,
            input_size=28`` for the ResNets. See each model's docstring.

    Returns:
        A freshly initialised model in training mode, on the CPU.

    Raises:
        ValueError: For an unknown name (the message lists the known names and the closest match), a
            ``num_classes`` that is not an integer ≥ 2, a negative or non-integer seed, or an option the
            model does not accept.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(available())}")
    _check_num_classes(num_classes)
    builder = _REGISTRY[name]
    accepted = _accepted_kwargs(builder)
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ValueError(
                f"model {name!r} got unknown option(s) {', '.join(unknown)}; "
                f"it accepts: {', '.join(sorted(accepted)) or '(none)'}"
            )
    if seed is None:
        return builder(num_classes=num_classes, **kwargs)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(num_classes=num_classes, **kwargs)


def _accepted_kwargs(builder: Callable[..., nn.Module]) -> set[str] | None:
    """Keyword options of ``builder`` other than ``num_classes``; ``None`` if it takes ``**kwargs``."""
    params = inspect.signature(builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds and p.name != "num_classes"}


# ---------------------------------------------------------------------------------------------- helpers


def _check_num_classes(num_classes: object) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def _check_positive_ints(name: str, values: Sequence[int], *, allow_empty: bool = False) -> tuple[int, ...]:
    values = tuple(values)
    if not values and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    return values


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return _check_positive_ints("input_shape", (shape,) if isinstance(shape, int) else shape)


def _check_input(model: nn.Module, x: torch.Tensor, *also: tuple[int, ...]) -> None:
    """Raise one clear ``ValueError`` unless ``x`` is ``(N, *model.input_shape)`` or ``(N, *a)``, ``a`` in ``also``."""
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing (FX quantization, feature_extraction): no shapes yet
        return
    expected: tuple[int, ...] = model.input_shape
    got = tuple(x.shape)
    if got[1:] == expected or got[1:] in also:
        return
    shapes = list(dict.fromkeys((expected, *also)))  # an MLP on (40,) would otherwise list (N, 40) twice
    want = " or ".join(f"(N, {', '.join(map(str, s))})" for s in shapes)
    hint = " (missing batch dimension? use x.unsqueeze(0))" if got in (expected, *also) else ""
    raise ValueError(f"{type(model).__name__} expects input of shape {want}, got {got}{hint}")


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# -------------------------------------------------------------------------------------------------- MLP


@register("mlp")
class MLP(nn.Module):
    """Multi-layer perceptron with ReLU hidden layers.

    With the defaults (40 inputs, two hidden layers of 100) this is the MNIST-1D baseline MLP of
    Greydanus (2020), "Scaling down deep learning", without its residual connection. Any input shape works:
    the input is flattened, so ``MLP(input_shape=(1, 28, 28), hidden=(300, 100))`` is LeNet-300-100.

    Expected input: ``(N, *input_shape)``, or the flattened ``(N, prod(input_shape))``.

    Feature layers: ``hidden1``, ``hidden2``, ... (post-ReLU, before dropout).

    Args:
        num_classes: Number of output logits.
        input_shape: Per-sample input shape, or the number of input features.
        hidden: Hidden layer widths, e.g. ``(1200, 1200)`` for Hinton's MNIST teacher. May be empty
            (logistic regression).
        dropout: Dropout probability after each hidden layer.
        width: Shortcut: every hidden layer has this width (default 100 when only ``depth`` is given).
        depth: Shortcut: number of hidden layers (default 2 when only ``width`` is given).

    Raises:
        ValueError: If ``hidden`` is combined with ``width``/``depth``, or for invalid sizes.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: int | Sequence[int] = (40,),
        hidden: Sequence[int] | None = None,
        dropout: float = 0.0,
        *,
        width: int | None = None,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        if hidden is not None and (width is not None or depth is not None):
            raise ValueError("give either hidden=(...) or the width=/depth= shortcuts, not both")
        if hidden is None:
            hidden = (100 if width is None else width,) * (2 if depth is None else depth)
        hidden = _check_positive_ints("hidden", hidden, allow_empty=True)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.input_shape = _as_shape(input_shape)
        self.hidden_sizes = hidden
        self.feature_layers = tuple(f"hidden{i}" for i in range(1, len(hidden) + 1))

        in_features = math.prod(self.input_shape)
        for name, size in zip(self.feature_layers, hidden):
            self.add_module(name, nn.Sequential(nn.Linear(in_features, size), nn.ReLU()))
            in_features = size
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for inputs ``(N, *input_shape)`` or ``(N, prod(input_shape))``."""
        _check_input(self, x, (math.prod(self.input_shape),))
        h = torch.flatten(x, 1)
        for name in self.feature_layers:
            h = self.dropout(getattr(self, name)(h))
        return self.fc(h)


# ------------------------------------------------------------------------------------------ MNIST-1D CNN


@register("mnist1d_cnn")
class MNIST1DCNN(nn.Module):
    """The MNIST-1D convolutional baseline of Greydanus (2020), "Scaling down deep learning".

    Three 1-D convolutions (kernel 5, 3, 3; stride 2; padding 1; ReLU) and a linear layer on the flattened
    feature map, as ``ConvBase`` in the mnist1d repository: 5,210 parameters for 10 classes with the
    default 25 channels (about 94 % test accuracy in the paper).

    Expected input: ``(N, 40)`` signals (or ``(N, 1, 40)``); the channel dimension is added inside.

    Feature layers: ``block1`` (25×19), ``block2`` (25×10), ``block3`` (25×5), post-ReLU.

    Args:
        num_classes: Number of output logits.
        channels: Channels of every convolution (25 in the paper); raise it to widen the model.
        input_size: Signal length.
    """

    def __init__(self, num_classes: int = 10, channels: int = 25, input_size: int = 40) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        (channels,) = _check_positive_ints("channels", (channels,))
        self.input_shape = _as_shape(input_size)
        self.feature_layers = ("block1", "block2", "block3")
        length, in_ch = input_size, 1
        for name, kernel in zip(self.feature_layers, (5, 3, 3)):
            self.add_module(name, nn.Sequential(nn.Conv1d(in_ch, channels, kernel, 2, 1), nn.ReLU()))
            length, in_ch = _conv_out(length, kernel, 2, 1), channels
        if length < 1:
            raise ValueError(f"input_size={input_size} is too short for three stride-2 convolutions")
        self.fc = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for signals ``(N, input_size)`` or ``(N, 1, input_size)``."""
        _check_input(self, x, (1, *self.input_shape))
        h = torch.flatten(x, 1).unsqueeze(1)  # (N, 1, L) for both layouts, without shape-dependent branching
        h = self.block3(self.block2(self.block1(h)))
        return self.fc(torch.flatten(h, 1))


# ---------------------------------------------------------------------------------------------- LeNet-5


@register("lenet5")
class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition"), modernised.

    conv 6@5×5 → pool → conv 16@5×5 → pool → fc 120 → fc 84 → fc ``num_classes``, with ReLU and max pooling
    instead of the original scaled tanh and trainable subsampling. For 28×28 inputs the first convolution
    pads by 2, which gives the paper's 32×32 geometry; for 32×32 inputs it does not pad. 61,706 parameters
    for 10 classes.

    Expected input: ``(N, in_channels, input_size, input_size)``, by default ``(N, 1, 28, 28)``.

    Feature layers: ``block1`` (6×14×14), ``block2`` (16×5×5), ``hidden1`` (120), ``hidden2`` (84).

    Args:
        num_classes: Number of output logits.
        in_channels: Image channels.
        input_size: Image side, 28 or 32.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        if input_size not in (28, 32):
            raise ValueError(f"LeNet5 supports input_size 28 or 32, got {input_size!r}")
        self.input_shape = _as_shape((in_channels, input_size, input_size))
        self.feature_layers = ("block1", "block2", "hidden1", "hidden2")
        pad = (32 - input_size) // 2
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.hidden1 = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.ReLU())
        self.hidden2 = nn.Sequential(nn.Linear(120, 84), nn.ReLU())
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, *input_shape)``."""
        _check_input(self, x)
        h = torch.flatten(self.block2(self.block1(x)), 1)
        return self.fc(self.hidden2(self.hidden1(h)))


# ------------------------------------------------------------------------------------------ CNN teacher


@register("cnn")
class CNN(nn.Module):
    """A VGG-style CNN with BatchNorm: the CPU-trainable teacher for 28×28 images.

    A 3×3 stride-2 conv-BN-ReLU stem, then stages of two 3×3 conv-BN-ReLU layers, every stage after the
    first starting with 2×2 max pooling, then global average pooling and one linear layer. With the defaults
    the stages run at 14×14, 7×7 and 4×4 (pooling rounds up). The strided stem instead of a full-resolution
    convolution plus pooling makes a training step 1.5× cheaper on the CPU at the same parameter count: one
    Fashion-MNIST epoch (60,000 images, batch 128, Adam) costs about a minute of single-core CPU time, about
    7× LeNet-5's, so roughly half a minute on two cores. 297k parameters for 10 classes (LeNet-5: 62k),
    20 MFLOPs per image; after 3 epochs it reached 90.6 % test accuracy where LeNet-5 reached 87.2 %.

    Expected input: ``(N, in_channels, input_size, input_size)``, by default ``(N, 1, 28, 28)``.

    Feature layers: ``block1``, ``block2``, ``block3`` (post-ReLU stage outputs), with the defaults
    32×14×14, 64×7×7 and 128×4×4.

    Args:
        num_classes: Number of output logits.
        channels: Output channels of each stage; the stem has ``channels[0]``.
        in_channels: Image channels.
        input_size: Image side.
    """

    def __init__(
        self,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 128),
        in_channels: int = 1,
        input_size: int = 28,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        channels = _check_positive_ints("channels", channels)
        if input_size < 2 ** len(channels):
            raise ValueError(f"input_size={input_size} is too small for {len(channels)} stages")
        self.input_shape = _as_shape((in_channels, input_size, input_size))
        self.feature_layers = tuple(f"block{i}" for i in range(1, len(channels) + 1))
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, channels[0], stride=2))
        prev = channels[0]
        for i, (name, width) in enumerate(zip(self.feature_layers, channels)):
            pool = [nn.MaxPool2d(2, ceil_mode=True)] if i > 0 else []
            self.add_module(name, nn.Sequential(*pool, *_conv_bn_relu(prev, width), *_conv_bn_relu(width, width)))
            prev = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, *input_shape)``."""
        _check_input(self, x)
        x = self.stem(x)
        for name in self.feature_layers:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


# --------------------------------------------------------------------------------------- CIFAR ResNets


class BasicBlock(nn.Module):
    """Residual block of two 3×3 convolutions (He et al. 2016), post-activation.

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1×1 convolution with
    BatchNorm when the stride or the channel count changes (option B), as in RepDistiller.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output, post-ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for CIFAR (He et al. 2016, "Deep residual learning for image recognition", section 4.2).

    A 3×3 stem convolution, three stages of ``n = (depth - 2) / 6`` basic blocks (the second and third
    downsample by 2), global average pooling and a linear layer. This is the variant of the CRD/RepDistiller
    benchmark (Tian et al. 2020): projection shortcuts where shapes change, and stem/stage channels
    ``channels = (stem, stage1, stage2, stage3)``, ``(16, 16, 32, 64)`` for resnet20 and
    ``(32, 64, 128, 256)`` for the "x4" models. resnet20 has 0.28M parameters for 100 classes, resnet110
    1.74M, resnet32x4 7.43M.

    Expected input: ``(N, in_channels, input_size, input_size)``, by default ``(N, 3, 32, 32)``; use
    ``in_channels=1, input_size=28`` for (Fashion-)MNIST. Any ``input_size`` ≥ 4 can be configured (the
    final pooling is adaptive); ``forward`` checks the input against it.

    Feature layers: ``layer1``, ``layer2``, ``layer3`` (post-ReLU stage outputs), e.g. for resnet20 on
    32×32 inputs 16×32×32, 32×16×16, 64×8×8.

    Args:
        depth: Number of weighted layers, ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...).
        channels: ``(stem, stage1, stage2, stage3)`` channels.
        num_classes: Number of output logits.
        in_channels: Image channels.
        input_size: Image side.
    """

    def __init__(
        self,
        depth: int = 20,
        channels: Sequence[int] = (16, 16, 32, 64),
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110), got {depth!r}")
        channels = _check_positive_ints("channels", channels)
        if len(channels) != 4:
            raise ValueError(f"channels must be (stem, stage1, stage2, stage3), got {channels!r}")
        if input_size < 4:
            raise ValueError(f"input_size must be at least 4, got {input_size!r}")
        self.depth = depth
        self.input_shape = _as_shape((in_channels, input_size, input_size))
        self.feature_layers = ("layer1", "layer2", "layer3")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU()
        self.layer1 = _stage(BasicBlock, channels[0], channels[1], blocks, stride=1)
        self.layer2 = _stage(BasicBlock, channels[1], channels[2], blocks, stride=2)
        self.layer3 = _stage(BasicBlock, channels[2], channels[3], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        _init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, *input_shape)``."""
        _check_input(self, x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(block: type[nn.Module], cin: int, cout: int, n: int, stride: int, **kw: float) -> nn.Sequential:
    """``n`` blocks; the first changes channels and stride."""
    return nn.Sequential(block(cin, cout, stride, **kw), *(block(cout, cout, 1, **kw) for _ in range(n - 1)))


def _init_resnet(model: nn.Module) -> None:
    # He init for convolutions, unit-scale BN (the RepDistiller / torchvision initialisation).
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_CIFAR = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _register_cifar_resnet(name: str, depth: int, channels: tuple[int, ...]) -> None:
    """Register ``name`` as a fixed-depth CIFAR ResNet (one factory instead of nine copies of it)."""

    def build(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> CifarResNet:
        return CifarResNet(depth, channels, num_classes, in_channels, input_size)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"ResNet-{name[len('resnet'):]} for CIFAR (He et al. 2016; RepDistiller), stem/stage channels "
        f"{'/'.join(map(str, channels))}.\n\n"
        "    Expected input ``(N, in_channels, input_size, input_size)``, by default ``(N, 3, 32, 32)``.\n"
        "    See :class:`CifarResNet` for the arguments.\n"
    )
    globals()[name] = register(name)(build)


for _name, _depth, _channels in (
    ("resnet8", 8, _CIFAR), ("resnet14", 14, _CIFAR), ("resnet20", 20, _CIFAR), ("resnet32", 32, _CIFAR),
    ("resnet44", 44, _CIFAR), ("resnet56", 56, _CIFAR), ("resnet110", 110, _CIFAR),
    ("resnet8x4", 8, _X4), ("resnet32x4", 32, _X4),
):  # fmt: skip
    _register_cifar_resnet(_name, _depth, _channels)


@register("resnet")
def resnet(
    num_classes: int = 10,
    depth: int = 20,
    width: int = 1,
    in_channels: int = 3,
    input_size: int = 32,
) -> CifarResNet:
    """CIFAR ResNet (He et al. 2016) of any depth ``6n + 2`` and width multiplier.

    Stage channels are ``16·width, 32·width, 64·width``; the stem has half the first stage's channels but at
    least 16. This reproduces the named models: ``resnet(depth=20)`` is resnet20 and
    ``resnet(depth=8, width=4)`` is RepDistiller's resnet8x4 (stem 32, stages 64/128/256).

    Expected input: ``(N, in_channels, input_size, input_size)``, by default ``(N, 3, 32, 32)``.

    Args:
        num_classes: Number of output logits.
        depth: ``6n + 2``.
        width: Channel multiplier (1 for resnet20 and friends, 4 for the x4 models).
        in_channels: Image channels.
        input_size: Image side.
    """
    (width,) = _check_positive_ints("width", (width,))
    stem = max(16, 8 * width)
    return CifarResNet(depth, (stem, 16 * width, 32 * width, 64 * width), num_classes, in_channels, input_size)


# ------------------------------------------------------------------------------------ Wide ResNets


class WideBasicBlock(nn.Module):
    """Pre-activation block of a Wide ResNet: ``x + conv2(dropout(relu(bn2(conv1(relu(bn1(x)))))))``.

    When the shape changes, the shortcut is a 1×1 convolution applied to ``relu(bn1(x))`` (Zagoruyko &
    Komodakis 2016).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output (a residual sum, not activated)."""
        act = self.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        identity = x if self.shortcut is None else self.shortcut(act)
        return out + identity


@register("wrn")
class WideResNet(nn.Module):
    """Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis 2016, "Wide residual networks").

    A 3×3 stem with 16 channels, three stages of ``n = (depth - 4) / 6`` pre-activation blocks with
    ``16·widen, 32·widen, 64·widen`` channels (the second and third downsample by 2), a final BN-ReLU,
    global average pooling and a linear layer; as in RepDistiller, where WRN-40-2 has 2.26M parameters
    for 100 classes.

    Expected input: ``(N, in_channels, input_size, input_size)``, by default ``(N, 3, 32, 32)``.

    Feature layers: ``layer1``, ``layer2``, ``layer3``. In a pre-activation network a stage output is a
    residual sum; it is activated by the next block's BN-ReLU (by ``bn``/``relu`` for the last stage). These
    are the group outputs used by attention transfer and by RepDistiller's feature methods.

    Args:
        num_classes: Number of output logits.
        depth: ``6n + 4`` (10, 16, 22, 28, 40, ...).
        widen: Width multiplier ``k``.
        dropout: Dropout between the two convolutions of each block.
        in_channels: Image channels.
        input_size: Image side.
    """

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 16,
        widen: int = 1,
        dropout: float = 0.0,
        in_channels: int = 3,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40), got {depth!r}")
        (widen,) = _check_positive_ints("widen", (widen,))
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if input_size < 4:
            raise ValueError(f"input_size must be at least 4, got {input_size!r}")
        self.depth, self.widen = depth, widen
        self.input_shape = _as_shape((in_channels, input_size, input_size))
        self.feature_layers = ("layer1", "layer2", "layer3")
        blocks = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.layer1 = _stage(WideBasicBlock, 16, widths[0], blocks, stride=1, dropout=dropout)
        self.layer2 = _stage(WideBasicBlock, widths[0], widths[1], blocks, stride=2, dropout=dropout)
        self.layer3 = _stage(WideBasicBlock, widths[1], widths[2], blocks, stride=2, dropout=dropout)
        self.bn = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        _init_resnet(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, *input_shape)``."""
        _check_input(self, x)
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.relu(self.bn(x))), 1))


def _register_wrn(depth: int, width: int) -> None:
    """Register ``wrn_<depth>_<width>`` as a fixed WideResNet (one factory instead of four copies of it)."""
    name = f"wrn_{depth}_{width}"

    def build(
        num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3, input_size: int = 32
    ) -> WideResNet:
        return WideResNet(num_classes, depth, width, dropout, in_channels, input_size)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"WRN-{depth}-{width} (Zagoruyko & Komodakis 2016; RepDistiller).\n\n"
        "    Expected input ``(N, in_channels, input_size, input_size)``, by default ``(N, 3, 32, 32)``.\n"
        "    See :class:`WideResNet` for the arguments.\n"
    )
    globals()[name] = register(name)(build)


for _depth, _width in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register_wrn(_depth, _width)


# --- language models: token ids (N, L) in, next-token logits (N, L, vocabulary) out -------------------------------
# DecoderLM lives in kdlib.transformer; the registry names the sizes the book distils between. They take
# ``num_classes`` (the vocabulary) and ``context`` instead of an input shape.
from kdlib.transformer import DecoderLM  # noqa: E402


def _register_lm(name: str, width: int, layers: int, heads: int, role: str) -> None:
    def build(num_classes: int = 96, context: int = 64, dropout: float = 0.0) -> DecoderLM:
        return DecoderLM(num_classes, context=context, width=width, layers=layers, heads=heads, dropout=dropout)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"A {role}: :class:`~kdlib.transformer.DecoderLM` with width {width}, {layers} block(s), {heads} heads.\n\n"
        "    ``num_classes`` is the vocabulary (96 characters by default, :class:`kdlib.data.text.CharVocabulary`),\n"
        "    ``context`` the longest sequence.\n"
    )
    globals()[name] = register(name)(build)


register("decoder_lm")(DecoderLM)
for _name, _width, _layers, _heads, _role in (
    ("gpt_mini", 64, 3, 4, "teacher language model (about 160k parameters with 96 tokens)"),
    ("gpt_micro", 32, 1, 4, "student language model (about 16k parameters with 96 tokens, a tenth of gpt_mini)"),
):
    _register_lm(_name, _width, _layers, _heads, _role)
