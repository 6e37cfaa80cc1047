"""The built-in datasets by name: :func:`available` lists them and :func:`load` calls a loader by its name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from kdlib.data.bundled import digits, mnist1d
from kdlib.data.images import cifar10, cifar100, fashion_mnist, mnist
from kdlib.data.tensors import Dataset

__all__ = ["available", "load"]

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
