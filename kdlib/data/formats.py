"""Reading the on-disk formats: IDX files (MNIST, Fashion-MNIST) and CIFAR's Python pickles (with an
unpickler that loads nothing but arrays), and the locators that say which files make a complete copy."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DatasetFormatError", "read_idx"]


class DatasetFormatError(ValueError):
    """A data file exists but is not in the expected format (corrupt, truncated or a different file)."""


# A locator looks in one folder and returns the files it needs (or None) plus a note for the error message.
_Locator = Callable[[Path], tuple[dict[str, Path] | None, str]]


def _missing_note(folder: Path, missing: list[str]) -> str:
    if not folder.is_dir():
        return ""
    return f"  (exists, but lacks {', '.join(missing)})"


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


