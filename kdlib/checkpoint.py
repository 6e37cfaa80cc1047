"""Checkpoints that survive crashes and refuse to execute code: atomic writes, SHA-256 sidecars, safe loading.

A checkpoint is a ``dict`` of tensors and plain containers (``dict``, ``list``, ``tuple``, ``str``, ``int``,
``float``, ``bool``, ``None``), written with :func:`torch.save`. Three guarantees:

* **Atomic.** :func:`save_checkpoint` writes to a temporary file in the same directory, ``fsync`` s it and
  renames it over the target (:func:`os.replace`, atomic on POSIX and Windows). A crash mid-write leaves the
  previous checkpoint untouched; the temporary file is removed when the failure is a Python exception.
* **Verified.** The SHA-256 of the bytes on disk goes into a sidecar ``<path>.sha256`` in ``sha256sum``
  format (``<hex>  <name>``), itself written atomically. :func:`load_checkpoint` hashes the file *before*
  unpickling anything, so a truncated or altered file is refused without being parsed.
* **Safe.** Loading uses ``torch.load(..., weights_only=True)``, which rebuilds tensors and plain containers
  only. A pickle that names any other Python object is refused: unpickling such an object can run arbitrary
  code, so never load a file you did not write without ``weights_only=True``.

RNG states are the one part of a training run that is not a tensor already; :func:`capture_rng_state` and
:func:`restore_rng_state` convert Python's, NumPy's and torch's (CPU and CUDA) generators to and from
tensors and plain lists, so a checkpoint holding them still loads with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "CheckpointIntegrityError",
    "UnsafeCheckpointError",
    "atomic_write",
    "capture_rng_state",
    "check_weights_only",
    "file_sha256",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "sidecar_path",
    "write_json",
]

PathLike = str | os.PathLike[str]
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that kdlib will not load (base class of the more specific errors below)."""


class CheckpointIntegrityError(CheckpointError):
    """The file's SHA-256 differs from the recorded one: it was modified or truncated after it was saved."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled Python objects other than tensors and plain containers (loading = running code)."""


# ------------------------------------------------------------------------------------------- writing


def sidecar_path(path: PathLike) -> Path:
    """Where the SHA-256 of the checkpoint at ``path`` is recorded: ``<path>.sha256``."""
    return Path(os.fspath(path) + ".sha256")


def file_sha256(path_or_file: PathLike | IO[bytes]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (a file object is read from its current position)."""
    digest = hashlib.sha256()
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    else:
        for chunk in iter(lambda: path_or_file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    """A new, empty temporary file in ``path``'s directory (same file system, so the final rename is atomic)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, ``fsync`` it, then rename it to ``path``.

    Readers see either the old file or the complete new one, never a partial write. If ``write`` (or the
    rename) raises, the temporary file is deleted, ``path`` is unchanged and the exception propagates. The
    parent directory is created if needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(target)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_json(path: PathLike, value: Any) -> None:
    """Write ``value`` as indented JSON (anything else as its ``str``) with :func:`atomic_write`."""
    text = json.dumps(value, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.device, torch.dtype, torch.Size)
_CONTAINERS = (dict, OrderedDict, list, tuple, set)


def check_weights_only(state: Any, where: str = "state") -> None:
    """Check that ``state`` holds only what ``torch.load(weights_only=True)`` rebuilds, before saving it.

    Allowed: tensors (and parameters), ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
    ``torch.device``/``dtype``/``Size``, nested in ``dict``, ``OrderedDict``, ``list``, ``tuple`` or ``set``.
    Types are matched exactly: a NumPy scalar such as ``np.float64`` subclasses ``float`` but pickles as a
    NumPy object, which ``weights_only`` refuses, so it is an error here, at save time, rather than at resume
    time hours later.

    Raises:
        TypeError: naming where the offending value sits, e.g. ``state['optimizer']['param_groups'][0]['lr']``.
    """
    if isinstance(state, torch.Tensor) or type(state) in _PLAIN:
        return
    if type(state) in _CONTAINERS:
        items = state.items() if isinstance(state, dict) else enumerate(state)
        for key, value in items:
            check_weights_only(value, f"{where}[{key!r}]" if not isinstance(state, set) else f"an element of {where}")
        return
    raise TypeError(
        f"cannot checkpoint {where}: it is a {type(state).__module__}.{type(state).__qualname__} ({state!r:.60}). "
        "A checkpoint holds only tensors, dicts, lists, tuples and str/int/float/bool/None, so that it loads with "
        "weights_only=True; convert it first (float(x), int(x), x.tolist() or torch.as_tensor(x))"
    )


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> str:
    """Save ``state`` to ``path`` atomically and record its SHA-256 in ``<path>.sha256``; return the hex digest.

    Order of operations: ``torch.save`` to a temporary file in the same directory, ``fsync``, hash the bytes
    on disk, write the sidecar to its own temporary file, then rename the checkpoint into place and right
    after it the sidecar. Any failure before the renames leaves the previous checkpoint and sidecar as they
    were and removes the temporary files. (Only a kill between the two renames, a window of microseconds,
    can leave a new checkpoint beside the old sidecar; :func:`load_checkpoint` then refuses it as modified.)

    Args:
        path: the checkpoint file; its directory is created if needed.
        state: a ``dict`` of tensors and plain containers only, so that it loads with ``weights_only=True``.

    Raises:
        TypeError: ``state`` is not a ``dict``, or holds a value ``weights_only`` would refuse
            (:func:`check_weights_only`); nothing is written then.
        IsADirectoryError: ``path`` is a directory.
    """
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint state must be a dict of tensors and plain containers, got {type(state).__name__}")
    check_weights_only(state)
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"checkpoint path {target} is a directory; give a file name such as {target / 'last.pt'}")
    target.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar_path(target)
    tmp = _temp_beside(target)
    tmp_side: Path | None = None
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        digest = file_sha256(tmp)
        tmp_side = _temp_beside(side)
        with open(tmp_side, "w", encoding="ascii") as f:
            f.write(f"{digest}  {target.name}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        os.replace(tmp_side, side)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if tmp_side is not None:
            tmp_side.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return digest


# ------------------------------------------------------------------------------------------- reading


def _recorded_sha256(side: Path) -> str:
    text = side.read_text(encoding="ascii", errors="replace").strip()
    digest = text.split()[0].lower() if text else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CheckpointIntegrityError(
            f"the sidecar {side} does not hold a SHA-256 (64 hex digits), it reads {text[:80]!r}; "
            "it was modified or truncated, so the checkpoint cannot be verified"
        )
    return digest


def _check_expected(expected: str) -> str:
    value = str(expected).strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"expected_sha256 must be 64 hex digits, got {expected!r}")
    return value


def load_checkpoint(
    path: PathLike,
    *,
    expected_sha256: str | None = None,
    map_location: Any = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its SHA-256 before unpickling anything.

    The file is opened once, hashed, and parsed from the same open file, so it cannot be swapped between
    the check and the load. Its digest must equal every digest available: the sidecar ``<path>.sha256``
    when it exists, and ``expected_sha256`` when given (e.g. a digest published beside a downloaded file).

    Args:
        path: the checkpoint file.
        expected_sha256: a digest you trust; with it, a missing sidecar is not an error.
        map_location: as in :func:`torch.load` (e.g. ``"cpu"``).
        verify: ``False`` skips the hash check (for a file from elsewhere with no sidecar and no known
            digest). The load is still ``weights_only``, so this trades integrity, not safety.

    Returns:
        The saved ``dict``.

    Raises:
        FileNotFoundError: no file at ``path``, or no sidecar and no ``expected_sha256`` (with ``verify``).
        CheckpointIntegrityError: the digest differs (the file was modified or truncated).
        UnsafeCheckpointError: the file pickles Python objects that ``weights_only=True`` refuses.
        CheckpointError: the file is not a ``torch.save`` archive of a ``dict``.
    """
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"no checkpoint at {target}")
    if target.is_dir():
        raise IsADirectoryError(f"checkpoint path {target} is a directory, not a checkpoint file")
    side = sidecar_path(target)
    expected: list[tuple[str, str]] = []
    if verify:
        if expected_sha256 is not None:
            expected.append(("expected_sha256", _check_expected(expected_sha256)))
        if side.exists():
            expected.append((f"the sidecar {side.name}", _recorded_sha256(side)))
        if not expected:
            raise FileNotFoundError(
                f"the checkpoint {target} has no sidecar {side.name} recording its SHA-256, so its integrity "
                "cannot be checked. Pass expected_sha256='<64 hex digits>' if you know the file's digest, or "
                "verify=False to load it unverified (still with weights_only=True)"
            )
    with open(target, "rb") as f:
        if expected:
            actual = file_sha256(f)
            for source, digest in expected:
                if actual != digest:
                    raise CheckpointIntegrityError(
                        f"the checkpoint {target} does not match its SHA-256 ({source} records {digest[:16]}..., "
                        f"the file hashes to {actual[:16]}...): the file was modified or truncated after it was "
                        "saved, so kdlib did not unpickle it. Saves are atomic, so the previous checkpoint was "
                        "replaced when this one was written: restore an older copy if you keep one, or start "
                        "afresh (fit(..., resume=False) overwrites it)"
                    )
            f.seek(0)
        try:
            state = torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"kdlib will not load {target}: it contains pickled Python objects other than tensors and plain "
                "containers, and unpickling such objects can execute arbitrary code. torch.load(weights_only=True) "
                f"refused it: {_refusal(err)} Save only state_dicts, tensors, numbers and strings; load a "
                "file you fully trust with torch.load yourself"
            ) from err
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise CheckpointError(f"{target} is not a readable torch.save checkpoint: {_first_line(err)}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{target} holds a {type(state).__name__}, not the dict a kdlib checkpoint is")
    return state


def _refusal(err: BaseException) -> str:
    """The line of torch's weights_only error that names the refused object (e.g. "Unsupported global: GLOBAL
    builtins.print"), without the terminal colour codes torch puts in it."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    named = [line for line in lines if "Unsupported global" in line or "Unsupported operand" in line]
    return named[0] if named else next((line for line in lines if line), type(err).__name__)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ------------------------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random number generator, as tensors and plain lists (``weights_only``-safe).

    Keys: ``"torch"`` (the CPU generator, a ``uint8`` tensor), ``"cuda"`` (one ``uint8`` tensor per visible
    CUDA device, empty without CUDA), ``"numpy"`` (``np.random``'s MT19937 state: its 624 keys as an int64
    tensor plus position and cached Gaussian) and ``"python"`` (``random.getstate()`` as a list of ints).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set every global random number generator to a state from :func:`capture_rng_state`.

    CUDA states are restored for as many devices as both the state and this machine have (none on a CPU-only
    machine), so a CPU run's checkpoint also resumes on a GPU machine and vice versa.

    Raises:
        ValueError: ``state`` lacks one of the keys ``torch``, ``cuda``, ``numpy``, ``python``.
    """
    if not isinstance(state, dict):
        raise TypeError(f"an RNG state must be the dict capture_rng_state() returns, got {type(state).__name__}")
    missing = [k for k in ("torch", "cuda", "numpy", "python") if k not in state]
    if missing:
        raise ValueError(f"RNG state lacks {missing}; pass the dict capture_rng_state() returns")
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        count = min(len(state["cuda"]), torch.cuda.device_count())
        for device, cuda_state in enumerate(state["cuda"][:count]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    np_state = state["numpy"]
    keys = np_state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(
        (np_state["kind"], keys, int(np_state["pos"]), int(np_state["has_gauss"]), float(np_state["cached_gaussian"]))
    )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))
