"""The image datasets read from files: :func:`fashion_mnist` and :func:`mnist` (IDX files), :func:`cifar10`
and :func:`cifar100` (Python pickles). Where the files are looked for is described in :mod:`kdlib.data`."""

from __future__ import annotations

import os

from kdlib.data.build import (
    DIGIT_CLASSES,
    _build,
    _check_dtype,
    _check_seed,
    _image_augment,
)
from kdlib.data.files import _find_or_download, _Source
from kdlib.data.formats import (
    _CIFAR_FORMATS,
    DatasetFormatError,
    _cifar_locator,
    _load_pickle,
    _locate_idx,
    _read_cifar_batches,
    _read_idx_pair,
)
from kdlib.data.tensors import Dataset
from kdlib.device import DeviceLike

__all__ = ["FASHION_MNIST_CLASSES", "cifar10", "cifar100", "fashion_mnist", "mnist"]

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

_FASHION_MNIST = _Source(
    "fashion_mnist", "Fashion-MNIST", "fashion-mnist", ("FashionMNIST/raw",), "FashionMNIST", debian="fashion-mnist"
)
_MNIST = _Source("mnist", "MNIST", "mnist", ("MNIST/raw",), "MNIST")
_CIFAR10 = _Source("cifar10", "CIFAR-10", "cifar-10", ("cifar-10-batches-py",), "CIFAR10")
_CIFAR100 = _Source("cifar100", "CIFAR-100", "cifar-100", ("cifar-100-python",), "CIFAR100")

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
    dtype: str,
) -> Dataset:
    seed, torch_dtype = _check_seed(seed), _check_dtype(dtype)
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
        dtype=torch_dtype,
    )


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
    dtype: str,
) -> Dataset:
    seed, torch_dtype = _check_seed(seed), _check_dtype(dtype)
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
        dtype=torch_dtype,
    )


def fashion_mnist(
    *,
    root: str | os.PathLike[str] | None = None,
    device: DeviceLike = "auto",
    download: bool = False,
    augment: bool = False,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000/10,000 grayscale 28×28 images of 10 kinds of clothing.

    The IDX files are searched as described in :mod:`kdlib.data` (``root`` only, when given; else
    ``$KDLIB_DATA``, the user cache, then ``/usr/share/datasets/fashion-mnist`` from ``apt-get install
    dataset-fashion-mnist``). Pixels are scaled to [0, 1] and normalized with mean 0.2860, std 0.3530.

    Args:
        root: the folder that holds the files (directly or in torchvision's ``FashionMNIST/raw``); no other
            place is searched. With ``download=True`` the files are downloaded into it when missing.
        device: where the tensors live.
        download: when no copy is found, download with torchvision into ``root`` or the user cache.
        augment: set :attr:`Dataset.augment` to random 2-pixel crops and horizontal flips.
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        seed: seeds the subsets.
        dtype: ``"float32"`` stores normalized inputs; ``"uint8"`` stores the raw pixels (a quarter of the
            memory) with the mean and std, and :meth:`Split.take` normalizes each batch to the same values.

    Returns:
        A :class:`Dataset` with inputs ``(N, 1, 28, 28)`` and 10 classes.

    Raises:
        FileNotFoundError: no copy was found and ``download`` is False; the message lists the places
            searched and how to get the data. A ``root`` that does not exist, or lacks files, is reported
            as such (the message names the missing files).
        DatasetFormatError: a file is corrupt or truncated (the message names it).
    """
    return _idx_dataset(
        _FASHION_MNIST, FASHION_MNIST_CLASSES, True, root=root, device=device, download=download, augment=augment,
        train_size=train_size, test_size=test_size, seed=seed, dtype=dtype,
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
    dtype: str = "float32",
) -> Dataset:
    """MNIST (LeCun et al. 1998): 60,000/10,000 grayscale 28×28 handwritten digits.

    Found like :func:`fashion_mnist` (there is no Debian package). Pixels are scaled to [0, 1] and normalized
    with mean 0.1307, std 0.3081. Augmentation crops only: a mirrored digit is a different symbol.

    Args:
        root: the folder that holds the files (directly or in ``MNIST/raw``); no other place is searched.
            With ``download=True`` the files are downloaded into it when missing.
        device: where the tensors live.
        download: when no copy is found, download with torchvision into ``root`` or the user cache.
        augment: set :attr:`Dataset.augment` to random 2-pixel crops (no flips).
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        seed: seeds the subsets.
        dtype: ``"float32"`` (normalized inputs) or ``"uint8"`` (raw pixels, normalized per batch), as in
            :func:`fashion_mnist`.

    Returns:
        A :class:`Dataset` with inputs ``(N, 1, 28, 28)`` and 10 classes.

    Raises:
        FileNotFoundError: no copy was found (in ``root``, when given) and ``download`` is False.
        DatasetFormatError: a file is corrupt or truncated (the message names it).
    """
    return _idx_dataset(
        _MNIST, DIGIT_CLASSES, False, root=root, device=device, download=download, augment=augment,
        train_size=train_size, test_size=test_size, seed=seed, dtype=dtype,
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
    dtype: str = "float32",
) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000/10,000 color 32×32 images of 10 classes.

    Reads the "python version" batches (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
    ``batches.meta``) found in ``root``, or else in ``$KDLIB_DATA`` or the user cache. Normalized per
    channel with the constants in :data:`NORMALIZATION`.

    Args:
        root: the folder that holds the files (directly or in ``cifar-10-batches-py``); no other place is
            searched. With ``download=True`` the files are downloaded into it when missing.
        device: where the tensors live.
        download: when no copy is found, download with torchvision into ``root`` or the user cache.
        augment: set :attr:`Dataset.augment` to random 4-pixel crops and horizontal flips.
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        seed: seeds the subsets.
        dtype: ``"float32"`` (normalized inputs) or ``"uint8"`` (raw pixels, normalized per batch), as in
            :func:`fashion_mnist`.

    Returns:
        A :class:`Dataset` with inputs ``(N, 3, 32, 32)``; class names come from ``batches.meta``.

    Raises:
        FileNotFoundError: no copy was found (in ``root``, when given) and ``download`` is False.
        DatasetFormatError: a file is corrupt or not a CIFAR batch (the message names it).
    """
    return _cifar_dataset(
        _CIFAR10, root=root, device=device, download=download, augment=augment, train_size=train_size,
        test_size=test_size, seed=seed, dtype=dtype,
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
    dtype: str = "float32",
) -> Dataset:
    """CIFAR-100 (Krizhevsky 2009): 50,000/10,000 color 32×32 images of 100 fine classes.

    Reads ``cifar-100-python/train``, ``test`` and ``meta`` (fine labels and their names) like
    :func:`cifar10`.

    Args:
        root: the folder that holds the files (directly or in ``cifar-100-python``); no other place is
            searched. With ``download=True`` the files are downloaded into it when missing.
        device: where the tensors live.
        download: when no copy is found, download with torchvision into ``root`` or the user cache.
        augment: set :attr:`Dataset.augment` to random 4-pixel crops and horizontal flips.
        train_size: keep a random subset of this many training samples.
        test_size: keep a random subset of this many test samples.
        seed: seeds the subsets.
        dtype: ``"float32"`` (normalized inputs) or ``"uint8"`` (raw pixels, normalized per batch), as in
            :func:`fashion_mnist`.

    Returns:
        A :class:`Dataset` with inputs ``(N, 3, 32, 32)`` and 100 classes.

    Raises:
        FileNotFoundError: no copy was found (in ``root``, when given) and ``download`` is False.
        DatasetFormatError: a file is corrupt or not a CIFAR batch (the message names it).
    """
    return _cifar_dataset(
        _CIFAR100, root=root, device=device, download=download, augment=augment, train_size=train_size,
        test_size=test_size, seed=seed, dtype=dtype,
    )
