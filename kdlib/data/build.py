"""From numpy arrays to a :class:`~kdlib.data.Dataset` on the device: the fixed normalization constants,
seeded subsets, the ``dtype`` choice (normalized float32, or uint8 pixels normalized per batch), and the
argument checks the loaders share."""

from __future__ import annotations

import numpy as np
import torch

from kdlib.data.augmentation import Augment, RandomCropFlip
from kdlib.data.tensors import Dataset, Split, _check_count, _subset_index, normalize_
from kdlib.device import DeviceLike, resolve

__all__ = ["DIGIT_CLASSES", "NORMALIZATION"]

#: Per-channel (mean, std) applied after scaling inputs to [0, 1]; see the table in :mod:`kdlib.data`.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3760,)),
    "mnist1d": ((0.0,), (1.0,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

DIGIT_CLASSES = tuple(str(i) for i in range(10))

_DTYPES = {"float32": torch.float32, "uint8": torch.uint8}


def _check_dtype(dtype: object) -> torch.dtype:
    """``"float32"``/``"uint8"`` (or the torch dtypes) as a torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(
        f"dtype must be 'float32' (normalized inputs) or 'uint8' (raw pixels, normalized per batch), got {dtype!r}"
    )


def _check_size(name: str, value: int | None, available: int) -> int | None:
    if value is None:
        return None
    value = _check_count(name, value)
    if value > available:
        raise ValueError(f"{name}={value} is larger than the {available} samples available")
    return value


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    return int(seed)


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _image_augment(name: str, padding: int, flip: bool) -> RandomCropFlip:
    mean, std = NORMALIZATION[name]
    return RandomCropFlip(padding, flip, fill=tuple(-m / s for m, s in zip(mean, std, strict=True)))


def _no_augment(name: str, augment: bool, why: str) -> None:
    if augment:
        raise ValueError(f"augmentation is not defined for {name} ({why}); use augment=False")


def _make_split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    scale: float,
    size: int | None,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Split:
    """Subset (seeded), move to ``device`` while still compact, then scale to [0, 1] and normalize there
    (or, for ``dtype=torch.uint8``, keep the pixels and let :meth:`Split.take` normalize each batch)."""
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    if size is not None and size < len(yt):
        idx = _subset_index(len(yt), size, seed)
        xt, yt = xt[idx], yt[idx]
    mean, std = NORMALIZATION[name]
    if dtype == torch.uint8:
        return Split(xt.to(device), yt.to(device), mean, std)
    xt = xt.to(device).to(torch.float32, copy=True)  # a copy of our own: normalized in place below
    if scale != 1.0:
        xt = xt.div_(scale)
    return Split(normalize_(xt, mean, std), yt.to(device))


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
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    x_train, y_train, x_test, y_test = arrays
    if dtype == torch.uint8 and (scale != 255.0 or x_train.dtype != np.uint8 or x_test.dtype != np.uint8):
        raise ValueError(f"{name} is not stored as 8-bit pixels; load it with dtype='float32'")
    train_size = _check_size("train_size", train_size, len(y_train))
    test_size = _check_size("test_size", test_size, len(y_test))
    dev = resolve(device)
    kw = {"scale": scale, "seed": seed, "device": dev, "dtype": dtype}
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
