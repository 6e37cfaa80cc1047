"""The two datasets that need no files: scikit-learn's 8×8 :func:`digits` and the :func:`mnist1d` generator.

Both are small float data (digits' pixels run 0..16, MNIST-1D is already standardized), so they have no
``dtype="uint8"`` option.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np

from kdlib.data.augmentation import RandomShift
from kdlib.data.build import (
    DIGIT_CLASSES,
    _build,
    _check_fraction,
    _check_seed,
    _no_augment,
)
from kdlib.data.tensors import Dataset, _check_count
from kdlib.device import DeviceLike

__all__ = ["digits", "mnist1d"]


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


