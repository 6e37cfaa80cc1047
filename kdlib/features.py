"""Intermediate features of any model, read with forward hooks.

Feature-based distillation (FitNets, attention transfer, CRD, ...) needs the outputs of inner layers of the
teacher and the student. kdlib reads them with forward hooks on named submodules, so kdlib's own models
(which name their stages in ``model.feature_layers``), torchvision models and your own modules all work the
same way, and ``forward`` keeps returning logits only::

    with FeatureRecorder(student) as rec:
        logits = student(x)
        hint = rec.features["layer2"]

Why hooks and not ``torchvision.models.feature_extraction.create_feature_extractor``? That function
rewrites the model with ``torch.fx`` symbolic tracing into a new module that returns a dict of
intermediate nodes; it can tap any operation (even a functional ``F.relu``), but it only works on
FX-traceable models (no data-dependent control flow, no unsupported Python in ``forward``) and it returns a
*copy* of the graph, so the model being trained and the extractor are two objects. Hooks need no tracing,
work for any ``nn.Module`` and leave the model as it is; their limit is that only module outputs can be
recorded. If you need a functional op's output of a traceable model, use ``create_feature_extractor``.
A name with the suffix ``":input"`` records what a module *receives* (its first positional argument, via
a forward pre-hook) instead of what it returns: ``"fc:input"`` is the embedding a classifier's last linear
layer sees (the penultimate features of every kdlib model, of torchvision's ResNets, and of most others),
whatever function computed it.

The recorder stores references to the outputs, not copies. If a later operation modifies a recorded
output in place (e.g. ``nn.ReLU(inplace=True)`` right after a hooked BatchNorm, as in torchvision's
ResNets), the recorded tensor changes too; record the activation module instead. kdlib's models never
apply activations in place, and the recorder warns when it detects such a modification.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from kdlib.device import DeviceLike, module_device, resolve

__all__ = ["FeatureRecorder", "extract_features", "feature_shapes", "resolve_layers"]


def resolve_layers(model: nn.Module, layers: Sequence[str] | None = None) -> tuple[str, ...]:
    """Check layer names against ``model.named_modules()``; ``None`` means ``model.feature_layers``.

    Args:
        model: Any module.
        layers: Dotted submodule names (``"layer1"``, ``"layer2.0.conv1"``), optionally with the suffix
            ``":input"`` to mean the module's input (``"fc:input"``), or ``None``.

    Returns:
        The layer names as a tuple, in the given order.

    Raises:
        ValueError: If ``layers`` is ``None`` and the model has no ``feature_layers`` attribute, if it is empty,
            a bare string or has repeated names, or if a name is not a submodule (the message lists close
            matches).
    """
    modules = dict(model.named_modules())
    if layers is None:
        layers = getattr(model, "feature_layers", None)
        if layers is None:
            raise ValueError(
                f"{type(model).__name__} has no feature_layers attribute; pass layer names explicitly, "
                f"e.g. some of its submodules: {_sample_names(modules)}"
            )
    if isinstance(layers, str):
        raise ValueError(f"layers must be a sequence of names, got the string {layers!r}; use [{layers!r}]")
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must name at least one submodule")
    repeated = sorted({name for name in layers if layers.count(name) > 1})
    if repeated:
        raise ValueError(f"layers are listed more than once: {', '.join(repeated)}")
    for name in layers:
        module_name = _module_name(name)
        if _submodule_name(modules, name) is None:
            close = difflib.get_close_matches(module_name, [n for n in modules if n], n=5)
            hint = f"close matches: {', '.join(close)}" if close else f"some submodules: {_sample_names(modules)}"
            raise ValueError(f"{type(model).__name__} has no submodule {module_name!r}; {hint}")
    return layers


INPUT_SUFFIX = ":input"


def _module_name(layer: str) -> str:
    """The submodule a layer name refers to: ``"fc:input"`` → ``"fc"``."""
    return layer[: -len(INPUT_SUFFIX)] if layer.endswith(INPUT_SUFFIX) else layer


DDP_PREFIX = "module."


def _submodule_name(modules: dict[str, nn.Module], layer: str) -> str | None:
    """The key of ``modules`` that ``layer`` names, with or without DistributedDataParallel's ``module.`` prefix
    (so that names copied from a wrapped model work on the plain one and the other way round); ``None`` if none."""
    name = _module_name(layer)
    for candidate in (name, name.removeprefix(DDP_PREFIX), DDP_PREFIX + name):
        if candidate in modules:
            return candidate
    return None


def _sample_names(modules: dict[str, nn.Module], limit: int = 12) -> str:
    # Prefer shallow names (stages) over deep ones (every conv in every block).
    order = {name: i for i, name in enumerate(modules)}
    names = sorted((n for n in modules if n), key=lambda n: (n.count("."), order[n]))
    more = ", ..." if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class FeatureRecorder:
    """Record the outputs of named submodules during forward passes, via forward hooks.

    Hooks are registered when the recorder is created and removed by :meth:`remove` or on leaving the
    ``with`` block, also when the block raises. After each forward pass :attr:`features` maps every
    layer name (in the order given) to that layer's latest output. The outputs are stored by reference,
    without a copy, so gradients flow through them (for a student); pass ``detach=True`` to store
    ``output.detach()`` instead (for a frozen teacher, or to keep no graph alive).

    Example::

        with FeatureRecorder(teacher, detach=True) as t_rec, FeatureRecorder(student) as s_rec:
            t_logits, s_logits = teacher(x), student(x)
            loss = fitnet_loss(s_rec.features["layer2"], t_rec.features["layer2"])

    Args:
        model: Any module.
        layers: Dotted names from ``model.named_modules()`` (``"name:input"`` records that module's input);
            ``None`` uses ``model.feature_layers``.
        detach: Store detached outputs.

    Raises:
        ValueError: For unknown layer names, or ``layers=None`` on a model without ``feature_layers``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None, *, detach: bool = False) -> None:
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.detach = detach
        self._outputs: dict[str, Any] = {}
        self._versions: dict[str, int | None] = {}
        modules = dict(model.named_modules())
        self._handles: list[RemovableHandle] = []
        for name in self.layers:
            module = modules[_submodule_name(modules, name)]
            if name.endswith(INPUT_SUFFIX):
                self._handles.append(module.register_forward_pre_hook(self._input_hook(name)))
            else:
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _record(self, name: str, output: Any) -> None:
        if self.detach:
            output = _map_tensors(output, torch.Tensor.detach)
        self._outputs[name] = output
        self._versions[name] = _version(output)

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._record(name, output)

        return hook

    def _input_hook(self, name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            self._record(name, args[0])

        return hook

    @property
    def features(self) -> dict[str, Any]:
        """Layer name → latest output (usually a tensor), in the order of :attr:`layers`.

        Layers that have not run since the last :meth:`clear` are absent. A fresh dict is returned on each
        access; the tensors in it are the recorded outputs themselves.
        """
        for name, output in self._outputs.items():
            recorded = self._versions[name]
            if recorded is not None and _version(output) != recorded:
                warnings.warn(
                    f"the recorded output of {name!r} was modified in place after it was recorded (e.g. by "
                    "an inplace ReLU), so it no longer holds that layer's output; record the module that "
                    "performs the in-place operation instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return {name: self._outputs[name] for name in self.layers if name in self._outputs}

    def clear(self) -> None:
        """Forget the recorded outputs (and the autograd graphs they keep alive)."""
        self._outputs.clear()
        self._versions.clear()

    def remove(self) -> None:
        """Remove the hooks. Safe to call more than once; recorded features stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def __enter__(self) -> FeatureRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        name = type(self.model).__name__
        return f"FeatureRecorder({name}, layers={list(self.layers)}, detach={self.detach}, {state})"


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in a (nested) tuple / list / dict output."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _version(obj: Any) -> int | None:
    """In-place modification counter of a tensor output (``None`` where there is none to check)."""
    if not isinstance(obj, torch.Tensor) or obj.is_inference():
        return None
    return obj._version


def extract_features(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str] | None = None,
    *,
    detach: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Run one forward pass and return the logits and the features of ``layers``.

    Args:
        model: Any module whose ``forward(x)`` returns the logits.
        x: A batch of inputs.
        layers: Layer names; ``None`` uses ``model.feature_layers``.
        detach: Return detached features.

    Returns:
        ``(logits, {name: output})``; the features are in the order of ``layers``.
    """
    with FeatureRecorder(model, layers, detach=detach) as recorder:
        logits = model(x)
    return logits, recorder.features


def feature_shapes(
    model: nn.Module,
    input_shape: Sequence[int],
    layers: Sequence[str] | None = None,
    device: DeviceLike = None,
    input_dtype: torch.dtype | None = None,
) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of the features, from a dry run on a batch of two zero inputs.

    The model runs in eval mode without gradients (BatchNorm statistics are not touched); every submodule's
    train/eval mode is restored afterwards.

    Args:
        model: Any module.
        input_shape: Per-sample input shape, e.g. ``model.input_shape`` or ``(3, 32, 32)``.
        layers: Layer names; ``None`` uses ``model.feature_layers``.
        device: Where to run; ``None`` uses the model's device.
        input_dtype: The inputs' dtype, e.g. ``torch.int64`` for a language model's token ids; ``None`` uses
            the dtype of the model's floating-point parameters.

    Returns:
        ``{name: shape}`` without the batch dimension, e.g. ``{"layer1": (16, 32, 32), ...}`` for resnet20.
        The first dimension of every output is taken to be the batch and dropped. A layer that returns
        a tuple of tensors gets a tuple of shapes.
    """
    dev = module_device(model) if device is None else resolve(device)
    dtype = input_dtype or next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(2, *input_shape, dtype=dtype, device=dev)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            _, features = extract_features(model, x, layers)
    finally:
        for module, training in modes.items():
            module.training = training
    return {name: _map_tensors(out, lambda t: tuple(t.shape[1:])) for name, out in features.items()}
