"""Datasets as tensors on the device, batched by index.

Small datasets (digits, MNIST-1D, Fashion-MNIST, MNIST, CIFAR) fit in memory many times over, so kdlib keeps
each split as one normalized float tensor on the training device and draws batches by indexing it. That
removes DataLoader worker overhead, which dominates on small CPU models, and it gives every batch the
indices of its samples, which is what cached teacher logits need.

Loaders
-------
:func:`digits`, :func:`mnist1d`, :func:`fashion_mnist`, :func:`mnist`, :func:`cifar10` and :func:`cifar100`
(or :func:`load` by name) return a :class:`Dataset` whose splits are already on ``device``. Nothing is
downloaded unless you pass ``download=True``. ``train_size``/``test_size`` take a seeded random subset for
quick runs.

Normalization
-------------
Inputs are scaled to [0, 1] and then normalized with FIXED constants (not statistics of whatever subset was
loaded), so a model trained on one subset sees the same input scale on any other:

=================  ==========================  ==========================  ==============================
dataset            mean                        std                         source
=================  ==========================  ==========================  ==============================
``digits``         0.3053                      0.3760                      all 1,797 images, pixels / 16
``mnist1d``        0                           1                           the generator standardizes
``fashion_mnist``  0.2860                      0.3530                      60,000 training images
``mnist``          0.1307                      0.3081                      60,000 training images
``cifar10``        (0.4914, 0.4822, 0.4465)    (0.2470, 0.2435, 0.2616)    50,000 training images
``cifar100``       (0.5071, 0.4865, 0.4409)    (0.2673, 0.2564, 0.2762)    50,000 training images
=================  ==========================  ==========================  ==============================

(Many CIFAR-10 repositories use std ``(0.2023, 0.1994, 0.2010)``; that is the mean of per-image stds, not
the per-channel std of the pixels. The difference hardly matters for accuracy but we use the correct one.)

Where the files are found
-------------------------
Image datasets are searched in this order; the first complete copy wins:

1. ``root=`` if given;
2. ``$KDLIB_DATA`` and ``$KDLIB_DATA/<dir>``;
3. the user cache ``$XDG_CACHE_HOME/kdlib/<dir>`` (default ``~/.cache/kdlib/<dir>``), where
   ``download=True`` puts the files;
4. Fashion-MNIST only: ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

``<dir>`` is ``fashion-mnist``, ``mnist``, ``cifar-10`` or ``cifar-100``. In each place the files may lie
directly or in torchvision's layout (``FashionMNIST/raw/``, ``MNIST/raw/``, ``cifar-10-batches-py/``,
``cifar-100-python/``); IDX files may be gzipped or not.

Augmentation
------------
With ``augment=True`` the image loaders set :attr:`Dataset.augment` to a :class:`RandomCropFlip`, which
:func:`batches` applies to each training batch on the device: a random crop after padding (4 pixels for
CIFAR, 2 for 28×28 images) and, for CIFAR and Fashion-MNIST, a random horizontal flip (never for digits,
where a mirrored 2 is not a 2). ``mnist1d(augment=True)`` sets a :class:`RandomShift` of the signals.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import math
import os
import pickle
import random
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlib.device import DeviceLike, resolve

__all__ = [
    "Augment",
    "Batch",
    "DEBIAN_DATASETS",
    "Dataset",
    "DatasetFormatError",
    "NORMALIZATION",
    "RandomCropFlip",
    "RandomShift",
    "Split",
    "UNLABELED",
    "available",
    "batches",
    "cache_dir",
    "cifar10",
    "cifar100",
    "digits",
    "fashion_mnist",
    "load",
    "mnist",
    "mnist1d",
    "random_crop_flip",
    "random_shift",
    "read_idx",
    "with_unlabeled",
]

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]

#: Per-channel (mean, std) applied after scaling inputs to [0, 1]; see the table in the module docstring.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3760,)),
    "mnist1d": ((0.0,), (1.0,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

#: Where Debian/Ubuntu's ``dataset-*`` packages install data (a module constant so tests can redirect it).
DEBIAN_DATASETS = Path("/usr/share/datasets")

DIGIT_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DatasetFormatError(ValueError):
    """A data file exists but is not in the expected format (corrupt, truncated or a different file)."""


# ---------------------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------------------


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


#: Label of a training input that has no label: a transfer-set input for distillation (Hinton et al. 2015 §3).
#: It feeds the distillation terms but not the cross-entropy, and it is not counted in training accuracy.
UNLABELED = -1


@dataclass(frozen=True)
class Split:
    """One split of a dataset: inputs ``x`` (float32, normalized) and integer labels ``y`` on one device.

    A label may be :data:`UNLABELED` (-1) in a training split (see :func:`with_unlabeled`).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise TypeError(f"x and y must be tensors, got {type(self.x).__name__} and {type(self.y).__name__}")
        if self.x.ndim < 1 or self.y.ndim != 1:
            shapes = f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            raise ValueError(f"x must be (N, ...) and y must be (N,), got {shapes}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} samples but y has {self.y.shape[0]}; they must match")
        if not self.x.is_floating_point():
            raise TypeError(f"inputs must be a floating-point tensor, got {self.x.dtype}")
        if self.y.dtype != torch.int64:
            raise TypeError(f"labels must be int64 class indices, got {self.y.dtype}")
        if self.x.device != self.y.device:
            raise ValueError(f"x is on {self.x.device} but y is on {self.y.device}; they must share a device")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: DeviceLike) -> Split:
        dev = resolve(device)
        if self.x.device == dev:
            return self
        return Split(self.x.to(dev), self.y.to(dev))

    def subset(self, n: int, *, seed: int = 0) -> Split:
        """A random subset of ``n`` samples (the whole split when ``n >= len(self)``), the same for a seed."""
        n = _check_count("n", n)
        if n >= len(self):
            return self
        idx = _subset_index(len(self), n, seed).to(self.device)
        return Split(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class Batch:
    """A mini-batch: inputs (augmented if the dataset augments), labels, and the samples' indices in the split."""

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
    trained alone could not use. The test split is unchanged. ``x`` must have the dataset's input shape.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != data.input_shape:
        raise ValueError(f"unlabeled inputs have shape {tuple(x.shape[1:])} per sample; {data.name} has {data.input_shape}")
    x = x.to(data.device, torch.float32)
    y = torch.full((x.shape[0],), UNLABELED, dtype=torch.int64, device=data.device)
    return replace(data, train=Split(torch.cat([data.train.x, x]), torch.cat([data.train.y, y])))


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
        augment: called as ``augment(x, generator)`` on each batch's inputs (e.g. a :class:`RandomCropFlip`).
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
        x = split.x[index]
        if augment is not None:
            x = augment(x, generator)
        yield Batch(x, split.y[index], index)


# ---------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------


def random_crop_flip(
    x: torch.Tensor,
    *,
    padding: int,
    flip: bool,
    fill: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Randomly crop (after padding) and optionally mirror each image of a batch, all at once on its device.

    Each image is padded by ``padding`` pixels of value ``fill`` on every side and a window of the original
    size is cut at a random offset in ``[0, 2 * padding]`` per axis; with ``flip`` each image is mirrored
    left-right with probability 1/2. The random numbers come from ``generator`` (on its device, CPU by
    default), first the offsets ``(N, 2)`` and then the flips ``(N,)``, so a seeded generator gives the same
    batch on every device.

    Args:
        x: images ``(N, C, H, W)``, floating point.
        padding: pixels added on each side (0 disables cropping).
        flip: whether to mirror images at random.
        fill: value of padded pixels, one per channel or one for all. For normalized inputs pass the value
            that a black pixel has after normalization, ``-mean / std``, as torchvision's ``RandomCrop``
            pads before normalizing.
        generator: random source; ``None`` uses torch's global generator.

    Returns:
        A new tensor of the same shape, dtype and device as ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"random_crop_flip needs a floating-point batch of images (N, C, H, W), got {shape}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    n, c, h, w = x.shape
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if fill_t.numel() not in (1, c):
        raise ValueError(f"fill has {fill_t.numel()} values; give one, or one per channel ({c})")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=gen_device).to(x.device)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H) rows of the padded image
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (N, W)
    if flip:
        mirrored = (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(x.device)
        # Mirroring the crop is reading its columns backwards, so crop and flip are one gather.
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    if padding:
        padded = fill_t.reshape(1, -1, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding : padding + h, padding : padding + w] = x
    else:
        padded = x
    sample = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices split by a slice put their broadcast dims first: the result is (N, H, W, C).
    out = padded[sample, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class RandomCropFlip:
    """Train-time augmentation for image batches: :func:`random_crop_flip` with fixed settings.

    Use as ``Dataset.augment``; :func:`batches` calls it as ``augment(x, generator)``.

    Attributes:
        padding: pixels of padding before the random crop (0: no crop).
        flip: mirror images left-right at random.
        fill: value of padded pixels per channel (a normalized black pixel, ``-mean / std``).
    """

    padding: int
    flip: bool
    fill: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"padding must be an int >= 0, got {self.padding!r}")
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip must be a bool, got {type(self.flip).__name__}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_crop_flip(x, padding=self.padding, flip=self.flip, fill=self.fill, generator=generator)


def random_shift(x: torch.Tensor, *, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each 1-D signal of a batch by a random whole number of steps in ``[-max_shift, max_shift]``.

    Positions shifted in from outside are filled with 0 (the data's mean after normalization). For MNIST-1D
    this is label-preserving: its generator already places each pattern at a random offset. One gather,
    no Python loop over samples; the shifts come from ``generator`` (CPU by default).

    Args:
        x: signals ``(N, L)``, floating point.
        max_shift: largest shift in either direction (0 returns a copy).
        generator: random source; ``None`` uses torch's global generator.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"random_shift needs a floating-point batch of signals (N, L), got {shape}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
    n, length = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 1), generator=generator, device=gen_device).to(x.device)
    source = torch.arange(length, device=x.device) - shifts  # (N, L): where each output position reads from
    inside = (source >= 0) & (source < length)
    return torch.gather(x, 1, source.clamp(0, length - 1)) * inside


@dataclass(frozen=True)
class RandomShift:
    """Train-time augmentation for 1-D signals: :func:`random_shift` with a fixed ``max_shift``."""

    max_shift: int

    def __post_init__(self) -> None:
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"max_shift must be an int >= 0, got {self.max_shift!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_shift(x, max_shift=self.max_shift, generator=generator)


def _image_augment(name: str, padding: int, flip: bool) -> RandomCropFlip:
    mean, std = NORMALIZATION[name]
    return RandomCropFlip(padding, flip, fill=tuple(-m / s for m, s in zip(mean, std, strict=True)))


def _no_augment(name: str, augment: bool, why: str) -> None:
    if augment:
        raise ValueError(f"augmentation is not defined for {name} ({why}); use augment=False")


# ---------------------------------------------------------------------------------------------------------
# Shared loader helpers
# ---------------------------------------------------------------------------------------------------------


def _check_size(name: str, value: int | None, available: int) -> int | None:
    if value is None:
        return None
    value = _check_count(name, value)
    if value > available:
        raise ValueError(f"{name}={value} is larger than the {available} samples available")
    return value


def _normalize(x: torch.Tensor, name: str) -> torch.Tensor:
    """Normalize ``x`` (already in [0, 1], channel dim 1 for images) in place with the fixed constants."""
    mean, std = NORMALIZATION[name]
    shape = (-1,) + (1,) * (x.ndim - 2) if x.ndim > 2 else (-1,)
    if len(mean) == 1:
        return x.sub_(mean[0]).div_(std[0])
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return x.sub_(m).div_(s)


def _make_split(
    name: str, x: np.ndarray, y: np.ndarray, *, scale: float, size: int | None, seed: int, device: torch.device
) -> Split:
    """Subset (seeded), move to ``device`` while still compact, then scale to [0, 1] and normalize there."""
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    if size is not None and size < len(yt):
        idx = _subset_index(len(yt), size, seed)
        xt, yt = xt[idx], yt[idx]
    xt = xt.to(device).to(torch.float32, copy=True)  # a copy of our own: normalized in place below
    if scale != 1.0:
        xt = xt.div_(scale)
    return Split(_normalize(xt, name), yt.to(device))


def _build(
    name: str,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    scale: float,
    classes: tuple[str, ...],
    device: DeviceLike,
    train_size: int | None,
    test_size: int | None,
    seed: int,
    augment: Augment | None = None,
) -> Dataset:
    x_train, y_train, x_test, y_test = arrays
    train_size = _check_size("train_size", train_size, len(y_train))
    test_size = _check_size("test_size", test_size, len(y_test))
    dev = resolve(device)
    kw = dict(scale=scale, seed=seed, device=dev)
    mean, std = NORMALIZATION[name]
    return Dataset(
        name=name,
        train=_make_split(name, x_train, y_train, size=train_size, **kw),
        test=_make_split(name, x_test, y_test, size=test_size, **kw),
        num_classes=len(classes),
        classes=classes,
        augment=augment,
        mean=mean,
        std=std,
    )


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    return int(seed)


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------------------


def digits(
    *,
    device: DeviceLike = "auto",
    test_fraction: float = 0.25,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    augment: bool = False,
) -> Dataset:
    """The 1,797 8×8 handwritten digits bundled with scikit-learn (no download).

    Pixels (0..16) are divided by 16 and normalized with mean 0.3053, std 0.3760.

    Args:
        device: where the tensors live (``"auto"``: CUDA, then MPS, then CPU).
        test_fraction: share of samples in the test split, stratified by class.
        seed: seeds the stratified split and the optional subsets.
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        augment: must be False; crops and flips are not defined for 8×8 digits.

    Returns:
        A :class:`Dataset` with inputs ``(N, 1, 8, 8)`` and 10 classes.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _no_augment("digits", augment, "8×8 digits are too small to crop, and mirrored digits change class")
    test_fraction = _check_fraction("test_fraction", test_fraction)
    seed = _check_seed(seed)
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    arrays = (x_train, y_train, x_test, y_test)
    return _build(
        "digits",
        arrays,
        scale=16.0,
        classes=DIGIT_CLASSES,
        device=device,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------------------
# MNIST-1D
# ---------------------------------------------------------------------------------------------------------


def _mnist1d_defaults() -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    args = dict(get_dataset_args(as_dict=True))
    args.pop("url", None)  # kdlib never downloads MNIST-1D
    return args


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(key: tuple[tuple[str, Any], ...]) -> tuple[np.ndarray, ...]:
    """Generate MNIST-1D once per argument set; the arrays are read-only so the cache cannot be changed."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    args = {k: list(v) if isinstance(v, tuple) else v for k, v in key}
    # make_dataset seeds Python's and NumPy's global generators; loading data must not change the caller's
    # random streams, so put them back afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(args))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = (data["x"], data["y"], data["x_test"], data["y_test"])
    for a in arrays:
        a.flags.writeable = False
    return arrays


def mnist1d(
    *,
    device: DeviceLike = "auto",
    num_samples: int = 5000,
    train_split: float = 0.8,
    seed: int = 42,
    train_size: int | None = None,
    test_size: int | None = None,
    augment: bool | int = False,
    **dataset_args: Any,
) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated offline with ``mnist1d.data.make_dataset``.

    The defaults reproduce the paper's dataset: 4,000 training and 1,000 test sequences of length 40. The
    generator already standardizes the whole set to mean 0 and std 1, so no further normalization is
    applied. Generation takes about a second and a half; it is memoized per argument set within the process
    (each call still returns new tensors). Python's and NumPy's global random state are left unchanged.

    Args:
        device: where the tensors live.
        num_samples: total number of sequences (split ``train_split`` / rest), a multiple of 10 ideally.
        train_split: share of samples in the training split.
        seed: the generator's seed (42 is the published dataset); also seeds the optional subsets.
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        augment: ``True`` (or a maximum shift as an int; ``True`` means 4) sets :attr:`Dataset.augment` to
            a :class:`RandomShift` of the training signals, which the MNIST-1D generator's own random
            placement of each pattern makes label-preserving.
        **dataset_args: other arguments of ``mnist1d.data.get_dataset_args()`` (e.g. ``iid_noise_scale``,
            ``shuffle_seq``, ``final_seq_length``).

    Returns:
        A :class:`Dataset` with inputs ``(N, 40)`` (``final_seq_length``) and 10 classes.

    Raises:
        ValueError: for an unknown key in ``dataset_args`` (the message lists the valid ones).
    """
    defaults = _mnist1d_defaults()
    unknown = sorted(set(dataset_args) - set(defaults))
    if unknown:
        raise ValueError(f"unknown MNIST-1D argument(s) {unknown}; valid: {sorted(defaults)}")
    num_samples = _check_count("num_samples", num_samples)
    if num_samples < 10:
        raise ValueError(f"num_samples must be >= 10 (one per class), got {num_samples}")
    train_split = _check_fraction("train_split", train_split)
    n_total = num_samples // 10 * 10
    n_train = int(n_total * train_split)
    if n_train == 0 or n_train == n_total:
        raise ValueError(f"num_samples={num_samples} with train_split={train_split} leaves a split empty")
    args = {
        **defaults,
        **dataset_args,
        "num_samples": num_samples,
        "train_split": train_split,
        "seed": _check_seed(seed),
    }
    x_train, y_train, x_test, y_test = _mnist1d_arrays(tuple(sorted((k, _freeze(v)) for k, v in args.items())))
    # astype copies, so the memoized arrays stay untouched and each call gets its own tensors.
    arrays = (x_train.astype(np.float32), y_train.astype(np.int64), x_test.astype(np.float32), y_test.astype(np.int64))
    return _build(
        "mnist1d",
        arrays,
        scale=1.0,
        classes=DIGIT_CLASSES,
        device=device,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
        augment=RandomShift(4 if augment is True else int(augment)) if augment else None,
    )


# ---------------------------------------------------------------------------------------------------------
# Finding files
# ---------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """kdlib's data cache: ``$XDG_CACHE_HOME/kdlib``, or ``~/.cache/kdlib`` when that variable is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdlib"


def _places(dirname: str, root: str | os.PathLike[str] | None, debian: str | None) -> list[Path]:
    """Base folders to search, in priority order (see the module docstring)."""
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike) or None, got {type(root).__name__}")
    places = [Path(root).expanduser()] if root is not None else []
    env = os.environ.get("KDLIB_DATA")
    if env:
        places += [Path(env).expanduser(), Path(env).expanduser() / dirname]
    places.append(cache_dir() / dirname)
    if debian is not None:
        places.append(DEBIAN_DATASETS / debian)
    return places


# A locator looks in one folder and returns the files it needs (or None) plus a note for the error message.
_Locator = Callable[[Path], tuple[dict[str, Path] | None, str]]


def _search(folders: list[Path], locate: _Locator) -> tuple[dict[str, Path] | None, list[str]]:
    searched = []
    for folder in folders:
        files, note = locate(folder)
        if files is not None:
            return files, searched
        searched.append(f"  {folder}{note}")
    return None, searched


def _missing_note(folder: Path, missing: list[str]) -> str:
    if not folder.is_dir():
        return ""
    return f"  (exists, but lacks {', '.join(missing)})"


@dataclass(frozen=True)
class _Source:
    """How to find, download and read one on-disk dataset."""

    name: str  # kdlib's name, e.g. "fashion_mnist"
    title: str  # for messages, e.g. "Fashion-MNIST"
    dirname: str  # folder under $KDLIB_DATA and the cache
    subdirs: tuple[str, ...]  # where torchvision's layout puts the files inside a base folder
    torchvision_class: str
    debian: str | None = None  # folder under DEBIAN_DATASETS, when a Debian package ships it


def _find_or_download(
    source: _Source, root: str | os.PathLike[str] | None, download: bool, locate: _Locator
) -> dict[str, Path]:
    places = _places(source.dirname, root, source.debian)
    folders = [folder for place in places for folder in (place, *(place / s for s in source.subdirs))]
    files, searched = _search(folders, locate)
    if files is not None:
        return files
    target = Path(root).expanduser() if root is not None else cache_dir() / source.dirname
    if not download:
        raise FileNotFoundError(_not_found_message(source, searched, target))
    _torchvision_download(source, target)
    files, _ = _search([target, *(target / s for s in source.subdirs)], locate)
    if files is None:
        raise RuntimeError(f"torchvision downloaded {source.title} into {target} but its files are not there")
    return files


def _not_found_message(source: _Source, searched: list[str], target: Path) -> str:
    ways = []
    if source.debian is not None:
        ways.append(
            f"  - Debian/Ubuntu: sudo apt-get install dataset-{source.debian}  "
            f"(installs to {DEBIAN_DATASETS / source.debian})"
        )
    ways += [
        f"  - {source.name}(download=True): torchvision downloads it to {target} (needs internet)",
        "  - copy the files to a folder and set KDLIB_DATA=/that/folder, or pass root='/that/folder'",
    ]
    if not os.environ.get("KDLIB_DATA"):
        searched = [*searched, "  ($KDLIB_DATA is not set)"]
    lines = [f"{source.title} not found. Searched, in order:", *searched, "Get it one of these ways:", *ways]
    return "\n".join(lines)


def _torchvision_download(source: _Source, target: Path) -> None:
    import torchvision.datasets

    target.mkdir(parents=True, exist_ok=True)
    cls = getattr(torchvision.datasets, source.torchvision_class)
    try:
        cls(root=str(target), train=True, download=True)
    except Exception as err:  # network errors come in many types; say what was attempted
        raise RuntimeError(f"downloading {source.title} with torchvision into {target} failed: {err}") from err


# ---------------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------------------

# We parse IDX ourselves (a 4-byte magic, big-endian sizes, raw bytes) rather than use torchvision's
# dataset classes: those insist on their own folder layout (<root>/FashionMNIST/raw) and cannot read the
# files where Debian's package installs them, nor a plain folder of .gz files.

_IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3 dimensions; type byte 0x08 = uint8
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike[str], *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped when its name ends in ``.gz``) into a numpy array.

    Args:
        path: the file.
        magic: the expected magic number, 2051 for images ``(N, rows, cols)`` or 2049 for labels ``(N,)``;
            ``None`` accepts either.

    Returns:
        A writable ``uint8`` array of the shape given in the header.

    Raises:
        DatasetFormatError: the file is not valid gzip, has the wrong magic number, or its size does not
            match its header (truncated); the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetFormatError(f"{path}: not a valid gzip file ({err}); delete it and get it again") from err
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found not in _IDX_MAGIC or (magic is not None and found != magic):
        want = magic if magic is not None else "2049 or 2051"
        raise DatasetFormatError(f"{path}: not an IDX file of unsigned bytes (magic number {found}, expected {want})")
    ndim = _IDX_MAGIC[found]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise DatasetFormatError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes; "
            "it is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _locate_idx(folder: Path) -> tuple[dict[str, Path] | None, str]:
    found, missing = {}, []
    for key, stem in _IDX_FILES.items():
        # Prefer the uncompressed file when both exist (torchvision keeps both): it reads faster.
        path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            missing.append(f"{stem}[.gz]")
        else:
            found[key] = path
    return (found, "") if not missing else (None, _missing_note(folder, missing))


def _read_idx_pair(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images, magic=2051), read_idx(labels, magic=2049)
    if len(x) != len(y):
        raise DatasetFormatError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    if y.size and int(y.max()) >= num_classes:
        raise DatasetFormatError(f"{labels}: label {int(y.max())} is out of range for {num_classes} classes")
    return x[:, None], y  # add the channel dimension: (N, 1, rows, cols)


def _idx_dataset(
    source: _Source,
    classes: tuple[str, ...],
    flip: bool,
    *,
    root: str | os.PathLike[str] | None,
    device: DeviceLike,
    download: bool,
    augment: bool,
    train_size: int | None,
    test_size: int | None,
    seed: int,
) -> Dataset:
    seed = _check_seed(seed)
    files = _find_or_download(source, root, download, _locate_idx)
    x_train, y_train = _read_idx_pair(files["train_images"], files["train_labels"], len(classes))
    x_test, y_test = _read_idx_pair(files["test_images"], files["test_labels"], len(classes))
    aug = _image_augment(source.name, padding=2, flip=flip) if augment else None
    return _build(
        source.name,
        (x_train, y_train, x_test, y_test),
        scale=255.0,
        classes=classes,
        device=device,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
        augment=aug,
    )


_FASHION_MNIST = _Source(
    "fashion_mnist", "Fashion-MNIST", "fashion-mnist", ("FashionMNIST/raw",), "FashionMNIST", debian="fashion-mnist"
)
_MNIST = _Source("mnist", "MNIST", "mnist", ("MNIST/raw",), "MNIST")


def fashion_mnist(
    *,
    root: str | os.PathLike[str] | None = None,
    device: DeviceLike = "auto",
    download: bool = False,
    augment: bool = False,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000/10,000 grayscale 28×28 images of 10 kinds of clothing.

    The IDX files are searched as described in the module docstring (``root``, ``$KDLIB_DATA``, the user
    cache, then ``/usr/share/datasets/fashion-mnist`` from ``apt-get install dataset-fashion-mnist``).
    Pixels are scaled to [0, 1] and normalized with mean 0.2860, std 0.3530.

    Args:
        root: a folder to look in first (and to download into with ``download=True``).
        device: where the tensors live.
        download: when no copy is found, download with torchvision into ``root`` or the user cache.
        augment: set :attr:`Dataset.augment` to random 2-pixel crops and horizontal flips.
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        seed: seeds the subsets.

    Returns:
        A :class:`Dataset` with inputs ``(N, 1, 28, 28)`` and 10 classes.

    Raises:
        FileNotFoundError: no copy was found and ``download`` is False; the message lists the places
            searched and how to get the data.
        DatasetFormatError: a file is corrupt or truncated (the message names it).
    """
    return _idx_dataset(
        _FASHION_MNIST,
        FASHION_MNIST_CLASSES,
        True,
        root=root,
        device=device,
        download=download,
        augment=augment,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
    )


def mnist(
    *,
    root: str | os.PathLike[str] | None = None,
    device: DeviceLike = "auto",
    download: bool = False,
    augment: bool = False,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """MNIST (LeCun et al. 1998): 60,000/10,000 grayscale 28×28 handwritten digits.

    Found like :func:`fashion_mnist` (there is no Debian package). Pixels are scaled to [0, 1] and normalized
    with mean 0.1307, std 0.3081. Augmentation crops only: a mirrored digit is a different symbol.

    Args:
        root: a folder to look in first (and to download into with ``download=True``).
        device: where the tensors live.
        download: when no copy is found, download with torchvision into ``root`` or the user cache.
        augment: set :attr:`Dataset.augment` to random 2-pixel crops (no flips).
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        seed: seeds the subsets.

    Returns:
        A :class:`Dataset` with inputs ``(N, 1, 28, 28)`` and 10 classes.

    Raises:
        FileNotFoundError: no copy was found and ``download`` is False.
        DatasetFormatError: a file is corrupt or truncated (the message names it).
    """
    return _idx_dataset(
        _MNIST,
        DIGIT_CLASSES,
        False,
        root=root,
        device=device,
        download=download,
        augment=augment,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------------------
# CIFAR (python pickle batches)
# ---------------------------------------------------------------------------------------------------------

# The CIFAR files are Python 2 pickles of dicts holding numpy arrays, lists and strings. Unpickling can run
# arbitrary code, so (as with torch.load(weights_only=True)) only the globals those files need are allowed.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol <= 2
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not something a CIFAR file contains")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # NumPy 2 renamed it
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with ``str`` keys (the files have ``bytes`` keys under Python 3)."""
    try:
        with path.open("rb") as f:
            obj = _DataUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise DatasetFormatError(f"{path}: not a readable CIFAR pickle ({err}); delete it and get it again") from err
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


@dataclass(frozen=True)
class _CifarFormat:
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    names_key: str
    labels_key: str


_CIFAR10 = _Source("cifar10", "CIFAR-10", "cifar-10", ("cifar-10-batches-py",), "CIFAR10")
_CIFAR100 = _Source("cifar100", "CIFAR-100", "cifar-100", ("cifar-100-python",), "CIFAR100")
_CIFAR_FORMATS = {
    "cifar10": _CifarFormat(
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta", "label_names", "labels"
    ),
    "cifar100": _CifarFormat(("train",), ("test",), "meta", "fine_label_names", "fine_labels"),
}


def _cifar_locator(fmt: _CifarFormat) -> _Locator:
    def locate(folder: Path) -> tuple[dict[str, Path] | None, str]:
        names = (*fmt.train, *fmt.test, fmt.meta)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            return None, _missing_note(folder, missing)
        return {n: folder / n for n in names}, ""

    return locate


def _read_cifar_batches(paths: list[Path], labels_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for path in paths:
        batch = _load_pickle(path)
        if "data" not in batch or labels_key not in batch:
            raise DatasetFormatError(f"{path}: expected keys 'data' and '{labels_key}', found {sorted(batch)}")
        x, y = np.asarray(batch["data"]), np.asarray(batch[labels_key], dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),):
            raise DatasetFormatError(
                f"{path}: expected uint8 data (N, 3072) and N labels, got {x.dtype} {x.shape} and {y.shape}"
            )
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DatasetFormatError(f"{path}: labels outside 0..{num_classes - 1}")
        xs.append(x.reshape(-1, 3, 32, 32))  # stored channel-major: 1024 red, 1024 green, 1024 blue values
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_dataset(
    source: _Source,
    *,
    root: str | os.PathLike[str] | None,
    device: DeviceLike,
    download: bool,
    augment: bool,
    train_size: int | None,
    test_size: int | None,
    seed: int,
) -> Dataset:
    seed = _check_seed(seed)
    fmt = _CIFAR_FORMATS[source.name]
    files = _find_or_download(source, root, download, _cifar_locator(fmt))
    meta = _load_pickle(files[fmt.meta])
    if fmt.names_key not in meta:
        raise DatasetFormatError(f"{files[fmt.meta]}: no '{fmt.names_key}' entry, found {sorted(meta)}")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[fmt.names_key])
    x_train, y_train = _read_cifar_batches([files[n] for n in fmt.train], fmt.labels_key, len(classes))
    x_test, y_test = _read_cifar_batches([files[n] for n in fmt.test], fmt.labels_key, len(classes))
    aug = _image_augment(source.name, padding=4, flip=True) if augment else None
    return _build(
        source.name,
        (x_train, y_train, x_test, y_test),
        scale=255.0,
        classes=classes,
        device=device,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
        augment=aug,
    )


def cifar10(
    *,
    root: str | os.PathLike[str] | None = None,
    device: DeviceLike = "auto",
    download: bool = False,
    augment: bool = False,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000/10,000 color 32×32 images of 10 classes.

    Reads the "python version" batches (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
    ``batches.meta``) found in ``root``, ``$KDLIB_DATA`` or the user cache. Normalized per channel with the
    constants in :data:`NORMALIZATION`.

    Args:
        root: a folder to look in first (and to download into with ``download=True``).
        device: where the tensors live.
        download: when no copy is found, download with torchvision into ``root`` or the user cache.
        augment: set :attr:`Dataset.augment` to random 4-pixel crops and horizontal flips.
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        seed: seeds the subsets.

    Returns:
        A :class:`Dataset` with inputs ``(N, 3, 32, 32)``; class names come from ``batches.meta``.

    Raises:
        FileNotFoundError: no copy was found and ``download`` is False.
        DatasetFormatError: a file is corrupt or not a CIFAR batch (the message names it).
    """
    return _cifar_dataset(
        _CIFAR10,
        root=root,
        device=device,
        download=download,
        augment=augment,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
    )


def cifar100(
    *,
    root: str | os.PathLike[str] | None = None,
    device: DeviceLike = "auto",
    download: bool = False,
    augment: bool = False,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """CIFAR-100 (Krizhevsky 2009): 50,000/10,000 color 32×32 images of 100 fine classes.

    Reads ``cifar-100-python/train``, ``test`` and ``meta`` (fine labels and their names) like
    :func:`cifar10`.

    Args:
        root: a folder to look in first (and to download into with ``download=True``).
        device: where the tensors live.
        download: when no copy is found, download with torchvision into ``root`` or the user cache.
        augment: set :attr:`Dataset.augment` to random 4-pixel crops and horizontal flips.
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        seed: seeds the subsets.

    Returns:
        A :class:`Dataset` with inputs ``(N, 3, 32, 32)`` and 100 classes.

    Raises:
        FileNotFoundError: no copy was found and ``download`` is False.
        DatasetFormatError: a file is corrupt or not a CIFAR batch (the message names it).
    """
    return _cifar_dataset(
        _CIFAR100,
        root=root,
        device=device,
        download=download,
        augment=augment,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------------------
# By name
# ---------------------------------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": digits,
    "mnist1d": mnist1d,
    "fashion_mnist": fashion_mnist,
    "mnist": mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
}


def available() -> tuple[str, ...]:
    """The dataset names :func:`load` knows (whether or not their files are on this machine)."""
    return tuple(_LOADERS)


def load(name: str, **kwargs: Any) -> Dataset:
    """Load a dataset by name, e.g. ``load("fashion_mnist", train_size=5000)``.

    Args:
        name: one of :func:`available` (``-`` is accepted for ``_`` and case is ignored).
        **kwargs: passed to the loader.

    Raises:
        ValueError: for an unknown name; the message lists the known ones and suggests a close match.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in _LOADERS:
        close = difflib.get_close_matches(key, _LOADERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}.{hint} Known: {', '.join(_LOADERS)}")
    return _LOADERS[key](**kwargs)
