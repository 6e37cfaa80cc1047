"""Datasets as tensors on the device, batched by index.

Small datasets (digits, MNIST-1D, Fashion-MNIST, MNIST, CIFAR) fit in memory many times over, so kdlib keeps
each split as one tensor on the training device and draws batches by indexing it. That removes DataLoader
worker overhead, which dominates on small CPU models, and it gives every batch the indices of its samples,
which is what cached teacher logits need.

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

Stored as float32 or as uint8
-----------------------------
By default a split stores its inputs normalized, as float32. The image loaders (:func:`fashion_mnist`,
:func:`mnist`, :func:`cifar10`, :func:`cifar100`) also take ``dtype="uint8"``: the split then keeps the raw
pixels, one byte each (a quarter of the memory), with the dataset's ``mean`` and ``std``, and
:meth:`Split.take` normalizes each batch on the device as ``(x / 255 - mean) / std`` per channel, the very
operations the float32 loader applies, so the inputs are the same bit for bit. :func:`batches` always yields
normalized float32 inputs; code that reads a split's inputs uses :meth:`Split.take` (a batch) or
:attr:`Split.inputs` (all of them) rather than the stored ``Split.x``.

Where the files are found
-------------------------
With ``root=``, only that folder is searched (directly and in torchvision's layout below). A ``root`` that
does not exist, or that lacks some files, is an error that names the folder and the missing files: kdlib
never silently loads a copy from elsewhere instead. With ``download=True`` a missing copy is downloaded into
``root`` (created if needed).

Without ``root``, image datasets are searched in this order; the first complete copy wins:

1. ``$KDLIB_DATA`` and ``$KDLIB_DATA/<dir>``;
2. the user cache ``$XDG_CACHE_HOME/kdlib/<dir>`` (default ``~/.cache/kdlib/<dir>``), where
   ``download=True`` puts the files;
3. Fashion-MNIST only: ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

``<dir>`` is ``fashion-mnist``, ``mnist``, ``cifar-10`` or ``cifar-100``. In each place the files may lie
directly or in torchvision's layout (``FashionMNIST/raw/``, ``MNIST/raw/``, ``cifar-10-batches-py/``,
``cifar-100-python/``); IDX files may be gzipped or not.

Augmentation
------------
With ``augment=True`` the image loaders set :attr:`Dataset.augment` to a :class:`RandomCropFlip`, which
:func:`batches` applies to each training batch on the device, after normalization: a random crop after
padding (4 pixels for CIFAR, 2 for 28×28 images) and, for CIFAR and Fashion-MNIST, a random horizontal flip
(never for digits, where a mirrored 2 is not a 2). ``mnist1d(augment=True)`` sets a :class:`RandomShift` of
the signals.

Modules
-------
Everything above is importable from ``kdlib.data``; the code lives in small modules:
``kdlib.data.tensors`` (:class:`Split`, :class:`Dataset`, :func:`batches`), ``kdlib.data.augmentation``
(crops, flips, shifts), ``kdlib.data.formats`` (reading IDX files and CIFAR pickles),
``kdlib.data.files`` (the search order, :func:`cache_dir`, downloads), ``kdlib.data.build`` (arrays to a
normalized :class:`Dataset`), ``kdlib.data.bundled`` (:func:`digits`, :func:`mnist1d`),
``kdlib.data.images`` (the file-based image loaders) and ``kdlib.data.builtin`` (:func:`load`).
"""

from kdlib.data import files as _files
from kdlib.data import tensors as _tensors
from kdlib.data.augmentation import (
    Augment,
    RandomCropFlip,
    RandomShift,
    random_crop_flip,
    random_shift,
)
from kdlib.data.build import DIGIT_CLASSES
from kdlib.data.build import NORMALIZATION as _NORMALIZATION
from kdlib.data.builtin import available, load
from kdlib.data.bundled import digits, mnist1d
from kdlib.data.files import cache_dir
from kdlib.data.formats import DatasetFormatError, read_idx
from kdlib.data.folders import write_image_folder
from kdlib.data.images import (
    FASHION_MNIST_CLASSES,
    cifar10,
    cifar100,
    fashion_mnist,
    mnist,
)
from kdlib.data.tensors import Batch, Dataset, Split, batches, with_unlabeled

# The three constants are bound here again only to carry their documentation (autodoc reads ``#:``
# comments from this file).

#: Per-channel (mean, std) applied after scaling inputs to [0, 1]; see the table above.
NORMALIZATION = _NORMALIZATION

#: Label of a training input that has no label, a transfer-set input for distillation (Hinton et al. 2015
#: §3). It feeds the distillation terms but not the cross-entropy, and it is not counted in training accuracy.
UNLABELED = _tensors.UNLABELED

#: Where Debian/Ubuntu's ``dataset-*`` packages install data. The search reads
#: ``kdlib.data.files.DEBIAN_DATASETS``: patch that one to redirect it (tests do).
DEBIAN_DATASETS = _files.DEBIAN_DATASETS

__all__ = [
    "DEBIAN_DATASETS",
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "NORMALIZATION",
    "UNLABELED",
    "Augment",
    "Batch",
    "Dataset",
    "DatasetFormatError",
    "RandomCropFlip",
    "RandomShift",
    "Split",
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
    "write_image_folder",
]
