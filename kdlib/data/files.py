"""Finding a dataset's files: an explicit ``root=``, else ``$KDLIB_DATA``, the user cache and Debian's
``dataset-*`` packages in that order; and downloading with torchvision when asked to."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kdlib.data.formats import _Locator

__all__ = ["DEBIAN_DATASETS", "cache_dir"]

#: Where Debian/Ubuntu's ``dataset-*`` packages install data. Tests redirect it by patching this module's
#: attribute (``kdlib.data.files.DEBIAN_DATASETS``), which is the one the search reads.
DEBIAN_DATASETS = Path("/usr/share/datasets")


def cache_dir() -> Path:
    """kdlib's data cache: ``$XDG_CACHE_HOME/kdlib``, or ``~/.cache/kdlib`` when that variable is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdlib"


@dataclass(frozen=True)
class _Source:
    """How to find, download and read one on-disk dataset."""

    name: str  # kdlib's name, e.g. "fashion_mnist"
    title: str  # for messages, e.g. "Fashion-MNIST"
    dirname: str  # folder under $KDLIB_DATA and the cache
    subdirs: tuple[str, ...]  # where torchvision's layout puts the files inside a base folder
    torchvision_class: str
    debian: str | None = None  # folder under DEBIAN_DATASETS, when a Debian package ships it

    def folders(self, place: Path) -> list[Path]:
        """``place`` and the folders inside it where torchvision's layout puts the files."""
        return [place, *(place / s for s in self.subdirs)]


def _default_places(source: _Source) -> list[Path]:
    """Base folders searched when no ``root`` is given, in priority order (see :mod:`kdlib.data`)."""
    places = []
    env = os.environ.get("KDLIB_DATA")
    if env:
        places += [Path(env).expanduser(), Path(env).expanduser() / source.dirname]
    places.append(cache_dir() / source.dirname)
    if source.debian is not None:
        places.append(DEBIAN_DATASETS / source.debian)
    return places


def _search(folders: list[Path], locate: _Locator) -> tuple[dict[str, Path] | None, list[str]]:
    searched = []
    for folder in folders:
        files, note = locate(folder)
        if files is not None:
            return files, searched
        searched.append(f"  {folder}{note}")
    return None, searched


def _find_or_download(
    source: _Source, root: str | os.PathLike[str] | None, download: bool, locate: _Locator
) -> dict[str, Path]:
    """The files of a complete copy of ``source``, found (or downloaded with ``download``) as documented in
    :mod:`kdlib.data`: only in ``root`` when it is given, else in the default places."""
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike) or None, got {type(root).__name__}")
    if root is not None:
        return _find_in_root(source, Path(root).expanduser(), download, locate)
    places = _default_places(source)
    files, searched = _search([folder for place in places for folder in source.folders(place)], locate)
    if files is not None:
        return files
    target = cache_dir() / source.dirname
    if not download:
        raise FileNotFoundError(_not_found_message(source, searched, target))
    return _download(source, target, locate)


def _find_in_root(source: _Source, root: Path, download: bool, locate: _Locator) -> dict[str, Path]:
    # The user named this folder: never fall back to another copy, which could silently be a different one.
    files, searched = _search(source.folders(root), locate) if root.is_dir() else (None, [])
    if files is not None:
        return files
    if download:
        return _download(source, root, locate)
    elsewhere = f"or omit root= to search the default places ({_default_places_text(source)})"
    if not root.exists():
        raise FileNotFoundError(
            f"root={str(root)!r} does not exist. Pass root= an existing folder that holds {source.title}, "
            f"{elsewhere}. (With download=True, {source.name} downloads into root, creating it.)"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"root={str(root)!r} is a file, not a folder. Pass a folder, {elsewhere}.")
    lines = [
        f"{source.title} not found in root={str(root)!r}. Searched:",
        *searched,
        f"Put the files in one of these folders, pass download=True to download them into root, {elsewhere}.",
    ]
    raise FileNotFoundError("\n".join(lines))


def _default_places_text(source: _Source) -> str:
    places = ["$KDLIB_DATA", str(cache_dir() / source.dirname)]
    if source.debian is not None:
        places.append(str(DEBIAN_DATASETS / source.debian))
    return ", ".join(places)


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


def _download(source: _Source, target: Path, locate: _Locator) -> dict[str, Path]:
    _torchvision_download(source, target)
    files, _ = _search(source.folders(target), locate)
    if files is None:
        raise RuntimeError(f"torchvision downloaded {source.title} into {target} but its files are not there")
    return files


def _torchvision_download(source: _Source, target: Path) -> None:
    import torchvision.datasets

    target.mkdir(parents=True, exist_ok=True)
    cls = getattr(torchvision.datasets, source.torchvision_class)
    try:
        cls(root=str(target), train=True, download=True)
    except Exception as err:  # network errors come in many types; say what was attempted
        raise RuntimeError(f"downloading {source.title} with torchvision into {target} failed: {err}") from err
