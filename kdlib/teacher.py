"""The frozen teacher: frozen for a run, run live on each batch, or cached once for the whole training set.

A teacher is *frozen* for a distillation run (:func:`frozen`): eval mode (no dropout, BatchNorm statistics
fixed), ``requires_grad=False``, no autograd graph. Its outputs on a batch come either

* **live**: from a forward pass on the very batch the student sees (augmented or not), which augmentation
  requires; or
* **cached**: computed once for every training sample and looked up by the samples' indices, exact when the
  inputs do not change between epochs (no augmentation), and it removes the teacher's forward pass from every
  step. :class:`TeacherCache` keeps the logits in memory on the device, or on disk memory-mapped for data sets
  whose logits do not fit (``path=``), optionally only the ``top_k`` largest probabilities of each sample plus
  the remaining mass: the compressed cache that distilling models with large vocabularies uses. A disk cache is
  keyed by a fingerprint of the teacher's weights and of the data, and rebuilt when either changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlib import distributed
from kdlib.checkpoint import write_json
from kdlib.data import Batch
from kdlib.device import module_device
from kdlib.evaluation import eval_mode
from kdlib.losses import teacher_log_probs
from kdlib.sources import as_source

__all__ = ["TeacherCache", "cached_teacher_logits", "frozen", "live_teacher_logits"]

TeacherLogits = Callable[[Batch], torch.Tensor]
CACHE_FORMAT = "kdlib.teacher_cache/1"


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False`` for the block; restore both afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def cached_teacher_logits(teacher: nn.Module, data: Any, *, batch_size: int = 1024) -> torch.Tensor:
    """Teacher logits of every training sample, in index order, on the device of the data's inputs.

    ``data``: anything :func:`~kdlib.train.fit` takes (or its source). A batch's teacher logits are then
    ``cached[batch.index]``. Raises ``ValueError`` if the training inputs change between epochs (augmentation):
    cached logits would belong to different inputs than the student sees.
    """
    source = as_source(data)
    source.check_static()
    device = module_device(teacher)
    with torch.no_grad(), eval_mode(teacher):
        return torch.cat([teacher(x.to(device)).float().to(x.device) for x, _ in source.ordered_train(batch_size)])


def live_teacher_logits(teacher: nn.Module) -> TeacherLogits:
    """Teacher logits computed on each batch's (augmented) inputs, with no autograd graph."""
    device = module_device(teacher)

    def logits(batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            return teacher(batch.x.to(device)).to(batch.x.device)

    return logits


def topk_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest log-probabilities (T = 1) over the last dimension (the classes, or a sequence model's
    vocabulary at each position) and their class indices."""
    values, index = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return values, index


def expand_topk(values: torch.Tensor, index: torch.Tensor, num_classes: int) -> torch.Tensor:
    r"""Full log-probabilities from the top-k ones: the remaining mass :math:`r = 1 - \sum_{i \le k} p_i` spread
    evenly over the other :math:`C - k` classes (what a top-k cache can reconstruct). The classes are the last
    dimension: ``(N, k)`` for a classifier, ``(N, L, k)`` for a sequence model.

    The result is a valid log-distribution, used as the teacher's logits: at temperature 1 its top-k classes
    carry the teacher's exact probabilities; at :math:`T > 1` the rest is an approximation, since the cache no
    longer knows how the remaining mass was shared.
    """
    k = values.shape[-1]
    values = values.float()
    if k == num_classes:
        return torch.empty(values.shape, device=values.device).scatter_(-1, index.long(), values)
    rest = (1.0 - values.exp().sum(-1, keepdim=True)).clamp_min(1e-12) / (num_classes - k)
    full = rest.log().expand(*values.shape[:-1], num_classes).clone()
    return full.scatter_(-1, index.long(), values)


class TeacherCache:
    """Teacher logits for every training sample, filled once and read by the samples' indices.

    Args:
        path: ``None`` keeps the cache in memory on the training device; a folder keeps it there as
            memory-mapped ``.npy`` files with a ``meta.json`` (reused by later runs while the teacher and the data
            are unchanged, rebuilt otherwise).
        top_k: keep only each sample's ``top_k`` largest log-probabilities and their classes (the remaining
            mass spread over the others, :func:`expand_topk`); ``None`` keeps all logits exactly. For a sequence
            model, whose logits are ``(length, vocabulary)`` per sample, the top-k of every position is kept:
            ``length × k`` values instead of ``length × vocabulary``.
        dtype: storage type of the values, ``torch.float32`` or ``torch.float16`` (half the size).
    """

    def __init__(self, path: str | Path | None = None, *, top_k: int | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
        self.path = Path(path) if path is not None else None
        self.top_k, self.dtype = top_k, dtype
        self.num_classes = 0
        self.reused = False
        self._values: Any = None  # tensor (memory) or np.memmap (disk)
        self._index: Any = None
        self._log_probs: dict[float, torch.Tensor] = {}  # temperature -> whole table (memory, all logits)

    def __repr__(self) -> str:
        return f"TeacherCache(path={str(self.path) if self.path else None!r}, top_k={self.top_k}, dtype={self.dtype})"

    def fill(self, run: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             num_samples: int, fingerprint: dict[str, Any]) -> TeacherCache:
        """Store ``run(inputs)`` (the teacher's logits) for ``(inputs, indices)`` batches covering every sample once;
        a disk cache whose ``meta.json`` matches ``fingerprint`` is reused without running anything."""
        meta = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "num_samples": num_samples,
                "top_k": self.top_k, "dtype": str(self.dtype)}
        if self.path is not None and self._load(meta):
            return self
        if self.path is None or distributed.is_main():
            self._build(run, batches, num_samples, meta)
        if self.path is not None:
            distributed.barrier()
            if not distributed.is_main() and not self._load(meta):
                raise RuntimeError(f"rank {distributed.rank()} cannot read the teacher cache rank 0 wrote to {self.path}")
        return self

    def _build(self, run: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               num_samples: int, meta: dict[str, Any]) -> None:
        for x, index in batches:
            with torch.no_grad():
                logits = run(x).float()
            device = logits.device
            if self._values is None:
                self.num_classes = logits.shape[-1]
                self._allocate(num_samples, tuple(logits.shape[1:-1]), device)
            rows = index.to(self._rows_device())
            if self.top_k is None:
                self._put(self._values, rows, logits)
            else:
                values, classes = topk_log_probs(logits, min(self.top_k, self.num_classes))
                self._put(self._values, rows, values)
                self._put(self._index, rows, classes.int())
        if self.path is not None:
            for array in (self._values, self._index):
                if array is not None:
                    array.flush()
            write_json(self.path / "meta.json", {**meta, "num_classes": self.num_classes, "complete": True})

    def _allocate(self, n: int, positions: tuple[int, ...], device: torch.device) -> None:
        shape = (n, *positions, self.num_classes if self.top_k is None else min(self.top_k, self.num_classes))
        if self.path is None:
            self._values = torch.zeros(shape, dtype=self.dtype, device=device)
            self._index = torch.zeros(shape, dtype=torch.int32, device=device) if self.top_k else None
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "meta.json").unlink(missing_ok=True)  # incomplete until the new meta.json is written
        np_dtype = np.float32 if self.dtype == torch.float32 else np.float16
        self._values = np.lib.format.open_memmap(self.path / "values.npy", mode="w+", dtype=np_dtype, shape=shape)
        self._index = np.lib.format.open_memmap(self.path / "classes.npy", mode="w+", dtype=np.int32,
                                                shape=shape) if self.top_k else None

    def _rows_device(self) -> torch.device:
        return self._values.device if isinstance(self._values, torch.Tensor) else torch.device("cpu")

    @staticmethod
    def _put(target: Any, rows: torch.Tensor, values: torch.Tensor) -> None:
        if isinstance(target, torch.Tensor):
            target[rows] = values.to(target.dtype)
        else:
            target[rows.numpy()] = values.cpu().numpy().astype(target.dtype)

    def _load(self, meta: dict[str, Any]) -> bool:
        meta_path = self.path / "meta.json"  # type: ignore[operator]
        if not meta_path.exists():
            return False
        saved = json.loads(meta_path.read_text())
        if not saved.get("complete") or any(saved.get(k) != v for k, v in json.loads(json.dumps(meta)).items()):
            return False
        self.num_classes = int(saved["num_classes"])
        self._values = np.load(self.path / "values.npy", mmap_mode="r")  # type: ignore[operator]
        self._index = np.load(self.path / "classes.npy", mmap_mode="r") if self.top_k else None  # type: ignore[operator]
        self.reused = True
        return True

    def logits(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The teacher's logits (full cache) or reconstructed log-probabilities (top-k) of samples ``index``."""
        if self._values is None:
            raise RuntimeError("the teacher cache is empty: fill() it first")
        if isinstance(self._values, torch.Tensor):
            rows = index.to(self._values.device, non_blocking=True)  # a loader pins it: no stall
            values = self._values[rows]
            classes = self._index[rows] if self._index is not None else None
        else:
            rows = index.cpu().numpy()
            values = torch.from_numpy(np.ascontiguousarray(self._values[rows])).to(device, non_blocking=True)
            classes = torch.from_numpy(np.ascontiguousarray(self._index[rows])).to(device) if self._index is not None else None
        values = values.to(device).float()
        return values if classes is None else expand_topk(values, classes.to(device), self.num_classes)

    def log_probs(self, index: torch.Tensor, temperature: float, device: torch.device) -> torch.Tensor:
        """``log_softmax(logits / T)`` of samples ``index``; for an in-memory cache of all logits the table at ``T``
        is computed once and then indexed (what each step of a KD term reads)."""
        if isinstance(self._values, torch.Tensor) and self._index is None:
            if temperature not in self._log_probs:
                self._log_probs[temperature] = teacher_log_probs(self._values, temperature)
            return self._log_probs[temperature][index.to(self._values.device, non_blocking=True)].to(device)
        return teacher_log_probs(self.logits(index, device), temperature)

    def nbytes(self) -> int:
        """Bytes the cache holds (in memory or on disk)."""
        return sum(int(a.nbytes) for a in (self._values, self._index) if a is not None) if self._values is not None \
            else 0

    @staticmethod
    def megabytes(num_samples: int, num_classes: int, top_k: int | None = None, dtype: torch.dtype = torch.float32,
                  *, positions: int = 1) -> float:
        """Size of a cache before it is built (to choose between memory, disk and top-k); ``positions`` is a
        sequence model's length (its logits are ``(positions, num_classes)`` per sample)."""
        width = num_classes if top_k is None else min(top_k, num_classes)
        per = width * (2 if dtype == torch.float16 else 4) + (width * 4 if top_k else 0)
        return num_samples * positions * per / 2**20
