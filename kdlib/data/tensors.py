"""The containers: a :class:`Split` of inputs and labels on one device, a :class:`Dataset` of two splits, and
:func:`batches`, which draws mini-batches from a split by indexing it."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from kdlib.data.augmentation import Augment
from kdlib.device import DeviceLike, resolve

__all__ = ["UNLABELED", "Batch", "Dataset", "Split", "batches", "with_unlabeled"]

#: Label of a training input that has no label, a transfer-set input for distillation (Hinton et al. 2015
#: §3). It feeds the distillation terms but not the cross-entropy, and it is not counted in training accuracy.
UNLABELED = -1


def _check_count(name: str, value: object) -> int:
    """``value`` as a positive int, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _subset_index(length: int, n: int, seed: int) -> torch.Tensor:
    """The first ``n`` entries of a seeded random permutation of ``range(length)`` (CPU, int64)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(length, generator=g)[:n]


def normalize_(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """``(x - mean) / std`` in place, per channel (dim 1 when ``x`` has more than 2 dims), and return ``x``.

    One value of ``mean``/``std`` applies to every element. The loaders and :meth:`Split.take` both use this
    function, so a split stored as uint8 gives bit for bit the inputs of the same split stored as float32.
    """
    if len(mean) == 1:
        return x.sub_(float(mean[0])).div_(float(std[0]))
    shape = (-1,) + (1,) * (x.ndim - 2) if x.ndim > 2 else (-1,)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return x.sub_(m).div_(s)


def _check_stats(name: str, value: object) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise TypeError(f"{name} must be a non-empty tuple of floats, one per channel, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) for v in value):
        raise TypeError(f"{name} must hold numbers, got {value!r}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class Split:
    """One split of a dataset: inputs ``x`` and integer labels ``y`` (int64) on one device.

    ``x`` is stored either as float32 inputs that are already normalized (``mean`` and ``std`` are then
    ``None``), or as raw ``uint8`` pixels with the per-channel ``mean`` and ``std`` to normalize them with:
    the inputs are then ``(x / 255 - mean) / std``, computed per batch by :meth:`take` (a quarter of the
    memory of float32, see ``dtype="uint8"`` of the image loaders). Read inputs with :meth:`take` or
    :attr:`inputs`, which work for both; ``x`` is the stored tensor.

    A label may be :data:`UNLABELED` (-1) in a training split (see :func:`with_unlabeled`).

    For sequence models ``x`` holds int64 token ids ``(N, L)`` and ``y`` the target of every position ``(N, L)``,
    :data:`UNLABELED` where a position is not scored (padding, the prompt), in training and evaluation splits alike.
    """

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise TypeError(f"x and y must be tensors, got {type(self.x).__name__} and {type(self.y).__name__}")
        if self.x.ndim < 1 or self.y.ndim not in (1, 2):
            shapes = f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            raise ValueError(f"x must be (N, ...) and y must be (N,) (or (N, L) for sequences), got {shapes}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} samples but y has {self.y.shape[0]}; they must match")
        if self.y.dtype != torch.int64:
            raise TypeError(f"labels must be int64 class indices, got {self.y.dtype}")
        if self.x.device != self.y.device:
            raise ValueError(f"x is on {self.x.device} but y is on {self.y.device}; they must share a device")
        if self.x.dtype == torch.uint8:
            self._check_uint8()
        elif self.x.dtype == torch.int64 and self.mean is None and self.std is None:
            pass  # token ids of a sequence model, used as they are
        elif not self.x.is_floating_point():
            raise TypeError(
                f"inputs must be a floating-point tensor (or uint8 pixels, or int64 token ids), got {self.x.dtype}"
            )
        elif self.mean is not None or self.std is not None:
            raise ValueError(
                "mean/std are only for uint8 inputs, which are normalized per batch; float inputs are used as "
                "they are (normalize them yourself, or store uint8 pixels with mean/std)"
            )

    def _check_uint8(self) -> None:
        if self.mean is None or self.std is None:
            raise ValueError("uint8 inputs need mean and std (per channel) to normalize x / 255 with")
        mean, std = _check_stats("mean", self.mean), _check_stats("std", self.std)
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        channels = self.x.shape[1] if self.x.ndim > 2 else 1
        if len(mean) not in (1, channels):
            raise ValueError(f"mean/std have {len(mean)} values; give one, or one per channel ({channels})")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        object.__setattr__(self, "mean", mean)  # normalized to tuples of float (frozen dataclass)
        object.__setattr__(self, "std", std)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    @functools.cached_property
    def _stats(self) -> tuple[tuple[float, ...] | torch.Tensor, tuple[float, ...] | torch.Tensor]:
        # Per-channel constants as tensors on the split's device, made once: building them per batch would
        # copy from the host (and wait for the GPU) at every step.
        assert self.mean is not None and self.std is not None
        if len(self.mean) == 1:
            return self.mean, self.std
        return tuple(torch.tensor(v, dtype=torch.float32, device=self.device) for v in (self.mean, self.std))

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The inputs of the samples at ``index`` (an index tensor on the split's device, or a slice).

        For a float split this is ``x[index]`` (a view for a slice); for a uint8 split, the float32 tensor
        ``(x[index] / 255 - mean) / std``.
        """
        x = self.x[index]
        if self.mean is None:
            return x
        mean, std = self._stats
        return normalize_(x.to(torch.float32).div_(255.0), mean, std)

    @property
    def inputs(self) -> torch.Tensor:
        """All inputs as float32: ``x`` itself for a float split, a normalized copy for a uint8 split."""
        return self.x if self.mean is None else self.take(slice(None))

    def to(self, device: DeviceLike) -> Split:
        dev = resolve(device)
        if self.x.device == dev:
            return self
        return replace(self, x=self.x.to(dev), y=self.y.to(dev))

    def subset(self, n: int, *, seed: int = 0) -> Split:
        """A random subset of ``n`` samples (the whole split when ``n >= len(self)``), the same for a seed."""
        n = _check_count("n", n)
        if n >= len(self):
            return self
        idx = _subset_index(len(self), n, seed).to(self.device)
        return replace(self, x=self.x[idx], y=self.y[idx])


@dataclass(frozen=True)
class Batch:
    """A mini-batch: inputs (float32, normalized, augmented if the dataset augments), labels, and the
    samples' indices in the split."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True)
class Dataset:
    """A dataset as device tensors plus what a model and a trainer need to know about it.

    ``augment`` (when set) is applied to each training batch on the device; a dataset with ``augment=None``
    gives the same inputs every epoch, which is what makes cached teacher logits exact. ``mean`` and ``std``
    are the per-channel constants the inputs were normalized with (``x * std + mean`` undoes it, e.g. to
    show images).
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    classes: tuple[str, ...] = field(default=())
    augment: Augment | None = None
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, e.g. ``(1, 28, 28)`` or ``(40,)``."""
        return tuple(self.train.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.train.device

    def to(self, device: DeviceLike) -> Dataset:
        return replace(self, train=self.train.to(device), test=self.test.to(device))

    def without_augmentation(self) -> Dataset:
        return replace(self, augment=None)


def with_unlabeled(data: Dataset, x: torch.Tensor) -> Dataset:
    """``data`` with the inputs ``x`` appended to its training split as :data:`UNLABELED` samples.

    This is Hinton et al.'s *transfer set*: inputs the teacher labels with its soft targets, which a student
    trained alone could not use. The test split is unchanged. ``x`` must have the dataset's input shape, and
    be stored like the training split: normalized floats, or raw ``uint8`` pixels for a dataset loaded with
    ``dtype="uint8"`` (they are then normalized with the split's mean and std, like its own pixels).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    train = data.train
    if train.x.dtype == torch.uint8 and x.dtype != torch.uint8:
        raise TypeError(
            f"{data.name} stores its inputs as uint8 pixels, so the unlabeled inputs must be uint8 pixels too "
            f"(got {x.dtype}); or load the dataset with dtype='float32' and pass normalized floats"
        )
    if train.x.dtype != torch.uint8 and not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor of normalized inputs, got {x.dtype}")
    if tuple(x.shape[1:]) != data.input_shape:
        shape = tuple(x.shape[1:])
        raise ValueError(f"unlabeled inputs have shape {shape} per sample; {data.name} has {data.input_shape}")
    x = x.to(data.device, train.x.dtype if train.x.dtype == torch.uint8 else torch.float32)
    y = torch.full((x.shape[0],), UNLABELED, dtype=torch.int64, device=data.device)
    return replace(data, train=replace(train, x=torch.cat([train.x, x]), y=torch.cat([train.y, y])))


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es of ``split`` by indexing its tensors (no copies of the whole split).

    Args:
        split: the data to iterate over once (one epoch).
        batch_size: samples per batch; the last batch is smaller unless ``drop_last``.
        shuffle: visit the samples in a random order drawn from ``generator`` (a CPU generator, so the order
            is the same on every device for a given seed); otherwise in index order.
        generator: random source for the order and for ``augment``; ``None`` uses torch's global one.
        augment: called as ``augment(x, generator)`` on each batch's inputs (e.g. a :class:`RandomCropFlip`),
            which are float32 and normalized (:meth:`Split.take`) also when the split stores uint8 pixels.
        drop_last: drop the final incomplete batch. A split smaller than ``batch_size`` still yields its
            one (incomplete) batch, so an epoch never has zero steps.

    Yields:
        Batches whose ``index`` holds the samples' positions in ``split``; every index occurs exactly once
        per epoch (except those dropped by ``drop_last``).
    """
    if not isinstance(split, Split):
        raise TypeError(f"split must be a kdlib.data.Split, got {type(split).__name__}")
    batch_size = _check_count("batch_size", batch_size)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be callable as augment(x, generator), got {type(augment).__name__}")
    if len(split) == 0:
        raise ValueError("cannot iterate over an empty split")
    # Checked above rather than in the generator, so a bad argument fails at the call, not at the first step.
    return _iterate(split, batch_size, shuffle, generator, augment, drop_last)


def _iterate(
    split: Split,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    augment: Augment | None,
    drop_last: bool,
) -> Iterator[Batch]:
    n = len(split)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(n, generator=generator, device=gen_device) if shuffle else torch.arange(n)
    order = order.to(split.device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        x = split.take(index)
        if augment is not None:
            x = augment(x, generator)
        yield Batch(x, split.y[index], index)
