"""Any map-style PyTorch dataset, or a DataLoader over one, as :func:`kdlib.train.fit` reads it.

kdlib keeps the user's dataset, batch size, workers and ``collate_fn`` and draws the order itself with a sampler
it controls (:class:`_ShardSampler`): seeded per epoch, resumable in the middle of an epoch, and split across
ranks like the in-memory fast path. Every sample carries its index (:class:`IndexedDataset`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler, default_collate
from torch.utils.data import Dataset as TorchDataset

from kdlib import distributed
from kdlib.data import UNLABELED, Batch
from kdlib.data.tensors import normalize_
from kdlib.run_state import _stable_repr
from kdlib.sources.shards import (
    DEFAULT_EVAL_BATCH,
    epoch_order,
    eval_share,
    rank_slice,
    steps_per_epoch,
)

_LOADER_SETTINGS = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn",
                    "multiprocessing_context", "prefetch_factor", "persistent_workers")


@dataclass(frozen=True)
class Normalize:
    """``(x / scale - mean) / std`` per channel (dim 1), in float32: normalizes ``uint8`` images on the device.

    Keeping images as ``uint8`` until they reach the device moves and stores 4× fewer bytes than float32.
    """

    mean: Sequence[float]
    std: Sequence[float]
    scale: float = 255.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # the arithmetic of kdlib's uint8 splits (Split.take), so both give the same inputs bit for bit
        return normalize_(x.to(torch.float32, copy=True).div_(self.scale), tuple(self.mean), tuple(self.std))


class IndexedDataset(TorchDataset):
    """``dataset[i]`` as ``(input, label, i)``: each sample knows its index (for a cached teacher)."""

    def __init__(self, dataset: TorchDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        sample = self.dataset[index]
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise TypeError(
                f"{type(self.dataset).__name__}[{index}] returned {type(sample).__name__}; kdlib trains on datasets "
                "whose samples are (input, label) pairs"
            )
        return sample[0], sample[1], index


@dataclass
class TorchData:
    """Training data from PyTorch: a map-style dataset (or a DataLoader over one) for training and one to evaluate on.

    Args:
        train: a dataset whose ``dataset[i]`` is ``(input, label)``, or a DataLoader over one. From a
            DataLoader kdlib takes the dataset, the batch size and the worker settings (``num_workers``,
            ``collate_fn``, ``pin_memory``, ``persistent_workers``, ...) and draws the order itself: a seeded
            shuffle, resumable, split across ranks under ``torchrun``.
        eval: the data to evaluate on (a dataset or a DataLoader), or ``None`` for no evaluation.
        num_classes: the number of classes; ``None`` takes it from ``train.classes`` (ImageFolder and
            torchvision's datasets have it) or else from the model's output width.
        device_transform: applied to each batch of inputs on the device, e.g. :class:`Normalize` for
            ``uint8`` images.
        name: shown in messages; the dataset's class name by default.
    """

    train: TorchDataset | DataLoader
    eval: TorchDataset | DataLoader | None = None
    num_classes: int | None = None
    device_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    name: str | None = None


class _ShardSampler(Sampler[int]):
    """This rank's indices of one epoch (see :func:`epoch_order`), from the ``skip``-th on; set per epoch."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.epoch, self.skip = 0, 0

    def indices(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = epoch_order(self.n, self.world, generator)
        step = self.batch_size * self.world
        return torch.cat([rank_slice(order[i : i + step], self.world, self.rank) for i in range(0, len(order), step)])

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :].tolist())

    def __len__(self) -> int:
        return (self.n + (-self.n) % self.world) // self.world - self.skip


def _loader_settings(loader: DataLoader) -> dict[str, Any]:
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            "kdlib trains on map-style datasets (dataset[i] -> (input, label)); an IterableDataset has no index "
            "to shuffle, shard across ranks or cache teacher outputs by"
        )
    return _consistent({name: getattr(loader, name) for name in _LOADER_SETTINGS})


def _consistent(settings: dict[str, Any]) -> dict[str, Any]:
    """DataLoader settings that agree with their number of workers (without workers: no prefetching)."""
    if settings.get("num_workers", 0) == 0:
        settings = {k: v for k, v in settings.items() if k != "prefetch_factor"}
        settings["persistent_workers"] = False
    return settings


def _index_collate(collate: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    def collate_with_index(samples: list[tuple[Any, Any, int]]) -> tuple[Any, Any, torch.Tensor]:
        x, y = collate([(s[0], s[1]) for s in samples])
        return x, y, torch.tensor([s[2] for s in samples], dtype=torch.int64)

    return collate_with_index


class LoaderStream:
    """Training batches of a torch dataset through a DataLoader whose sampler kdlib controls; resumable.

    The order of epoch ``e`` is a permutation seeded by ``(seed, e)``, sharded like :class:`TensorStream`'s;
    the workers' random transforms are seeded per epoch and rank. A resumed run continues with the same samples
    in the same order (augmentations drawn by workers after the resume point may differ).
    """

    def __init__(self, source: LoaderSource, batch_size: int, seed: int) -> None:
        self.source, self.seed = source, seed
        self.sampler = _ShardSampler(len(source.train), batch_size, seed)
        settings = dict(source.settings)
        settings["collate_fn"] = _index_collate(settings["collate_fn"] or default_collate)
        settings["pin_memory"] = settings["pin_memory"] or source.device.type == "cuda"
        self.generator = torch.Generator()
        self.loader = DataLoader(IndexedDataset(source.train), batch_size=batch_size, sampler=self.sampler,
                                 generator=self.generator, **settings)
        self.epoch, self.done = 0, 0
        self.batches = steps_per_epoch(len(source.train), batch_size, self.sampler.world)
        self._it: Iterator[Any] | None = None

    def _start(self) -> None:
        self.sampler.epoch, self.sampler.skip = self.epoch, self.done * self.sampler.batch_size
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + self.sampler.rank)
        self._it = iter(self.loader)

    def next(self) -> Batch:
        if self.done >= self.batches:
            self.epoch, self.done, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._start()
        x, y, index = next(self._it)  # type: ignore[arg-type]
        self.done += 1
        return self.source.to_batch(x, y, index)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.done, self._it = int(state["epoch"]), int(state["done"]), None


class LoaderSource:
    """A :class:`TorchData` as :func:`~kdlib.train.fit` reads it."""

    def __init__(self, data: TorchData) -> None:
        self.data = data
        train_loader = data.train if isinstance(data.train, DataLoader) else None
        self.train = train_loader.dataset if train_loader is not None else data.train
        self.settings = _loader_settings(train_loader) if train_loader is not None else \
            {"num_workers": 0, "collate_fn": None, "pin_memory": False}
        self.loader_batch_size = train_loader.batch_size if train_loader is not None else None
        eval_loader = data.eval if isinstance(data.eval, DataLoader) else None
        self.eval = eval_loader.dataset if eval_loader is not None else data.eval
        self.eval_settings = _loader_settings(eval_loader) if eval_loader is not None else self.settings
        self.eval_batch_size = (eval_loader.batch_size if eval_loader is not None else None) or DEFAULT_EVAL_BATCH
        for role, dataset in (("training", self.train), ("evaluation", self.eval)):
            if dataset is not None and not hasattr(dataset, "__len__"):
                raise TypeError(f"the {role} dataset has no len(); kdlib needs map-style datasets")
        if len(self.train) == 0:  # type: ignore[arg-type]
            raise ValueError("the training dataset is empty")
        self.name = data.name or type(self.train).__name__
        classes = getattr(self.train, "classes", None)
        self.num_classes = data.num_classes or (len(classes) if classes else None)
        self.num_train = len(self.train)  # type: ignore[arg-type]
        self.augments: bool | None = None  # unknown: a dataset's transform may draw random numbers
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> LoaderSource:
        moved = object.__new__(LoaderSource)
        moved.__dict__.update(self.__dict__, device=device)
        return moved

    def default_batch_size(self) -> int | None:
        return self.loader_batch_size

    def to_batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Batch:
        if self.num_classes is not None and y.numel():
            labeled = y[y != UNLABELED]  # checked on the host copy: no device synchronization
            if labeled.numel() and (int(labeled.min()) < 0 or int(labeled.max()) >= self.num_classes):
                raise ValueError(f"labels of {self.name} lie outside [0, {self.num_classes - 1}]: {labeled.unique().tolist()[:8]}")
        x = x.to(self.device, non_blocking=True)
        if self.data.device_transform is not None:
            x = self.data.device_transform(x)
        return Batch(x, y.to(self.device, non_blocking=True), index)

    def stream(self, batch_size: int, generator: torch.Generator, seed: int) -> LoaderStream:
        return LoaderStream(self, batch_size, seed)

    def _loader(self, dataset: TorchDataset, indices: Sequence[int], batch_size: int, settings: dict[str, Any]) -> DataLoader:
        settings = _consistent({**settings, "persistent_workers": False})
        return DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=list(indices),
                          **{**settings, "collate_fn": _index_collate(settings["collate_fn"] or default_collate)})

    def eval_batches(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.eval is None:
            return
        loader = self._loader(self.eval, eval_share(len(self.eval)), batch_size or self.eval_batch_size,
                              self.eval_settings)
        for x, y, index in loader:
            batch = self.to_batch(x, y, index)
            yield batch.x, batch.y

    def sample(self, n: int, *, train: bool = True, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of a seeded random sample of ``n`` training (or evaluation) samples, on the device:
        folders of images are often sorted by class, so the first ``n`` would show one class only."""
        dataset = self.train if train else self.eval
        if dataset is None:
            raise ValueError("there is no evaluation data")
        pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        batch = self.to_batch(*next(iter(self._loader(dataset, pick, n, {**self.settings, "num_workers": 0}))))
        return batch.x, batch.y

    def has_eval(self) -> bool:
        return self.eval is not None and len(self.eval) > 0

    def ordered_train(self, batch_size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, indices)`` of every training sample in order, through the training loader's workers."""
        for x, y, index in self._loader(self.train, range(self.num_train), batch_size, self.settings):
            yield self.to_batch(x, y, index).x, index

    def check_static(self, probes: int = 3) -> None:
        """Raise when a few samples come out differently twice: the dataset's transform draws random numbers, so
        cached teacher outputs would belong to other inputs than the student sees."""
        for i in sorted({0, self.num_train // 2, self.num_train - 1})[:probes]:
            first, second = default_collate([self.train[i][0]]), default_collate([self.train[i][0]])
            if not torch.equal(first, second):
                raise ValueError(
                    f"{self.name}[{i}] gave different inputs on two reads (a random transform?), so a teacher cache "
                    "would not match what the student sees; run the teacher live (cache_teacher=False or None), or "
                    "cache a dataset without random transforms"
                )

    def check_labels(self, ce_weight: float) -> bool:
        return True  # checked batch by batch on the host (to_batch); unlabeled samples are allowed

    def fingerprint(self) -> dict[str, Any]:
        parts = []
        for dataset in (self.train, self.eval):
            if dataset is None:
                continue
            listing = getattr(dataset, "samples", None) or getattr(dataset, "targets", None)
            parts.append(f"{_stable_repr(dataset)} len={len(dataset)} listing={hash_listing(listing)}")
        return {"data": f"{self.name}: {self.num_train} training samples", "data_contents": parts}


def hash_listing(listing: object) -> str | None:
    """A short hash of a dataset's file list or targets (what tells two ImageFolders apart cheaply)."""
    if listing is None:
        return None
    return hashlib.sha256(repr(list(listing)).encode()).hexdigest()[:16]
