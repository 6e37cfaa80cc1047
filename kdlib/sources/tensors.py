"""kdlib's in-memory data sets (:class:`kdlib.data.Dataset`) as :func:`kdlib.train.fit` reads them: the fast path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from kdlib import distributed
from kdlib.data import UNLABELED, Batch, Dataset, Split
from kdlib.sources.shards import (
    DEFAULT_EVAL_BATCH,
    epoch_order,
    rank_slice,
    sample_digest,
    split_batches,
)


class TensorStream:
    """Training batches of a device-resident split, epoch after epoch; resumable in the middle of an epoch.

    One process draws exactly what ``kdlib.data.batches(split, batch_size, shuffle=True, generator=g, augment=a)``
    draws epoch after epoch. Under ``torchrun`` every rank draws the same permutation (same seed) and takes its
    slice of each global batch of ``world × batch_size`` samples. The state is the generator's, the epoch's
    order and the position in it.
    """

    def __init__(self, split: Split, batch_size: int, generator: torch.Generator, augment: Any) -> None:
        self.split, self.batch_size, self.generator, self.augment = split, batch_size, generator, augment
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.order: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> Batch:
        if self.order is None or self.pos >= self.order.shape[0]:
            self.order, self.pos = epoch_order(len(self.split), self.world, self.generator).to(self.split.device), 0
        step = self.batch_size * self.world
        index = rank_slice(self.order[self.pos : self.pos + step], self.world, self.rank)
        self.pos += step
        x = self.split.take(index)
        if self.augment is not None:
            x = self.augment(x, self.generator)
        return Batch(x, self.split.y[index], index)

    def state_dict(self) -> dict[str, Any]:
        order = None if self.order is None else self.order.cpu()
        return {"generator": self.generator.get_state(), "order": order, "pos": int(self.pos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = None if state["order"] is None else state["order"].to(self.split.device)
        self.pos = int(state["pos"])


class TensorSource:
    """A :class:`kdlib.data.Dataset` (and the split to evaluate on) as :func:`~kdlib.train.fit` reads it."""

    def __init__(self, data: Dataset, eval_split: Split) -> None:
        self.data, self.eval_split = data, eval_split
        self.name, self.num_classes, self.augments = data.name, data.num_classes, data.augment is not None
        self.num_train = len(data.train)

    def to(self, device: torch.device) -> TensorSource:
        return TensorSource(self.data.to(device), self.eval_split.to(device))

    def default_batch_size(self) -> int | None:
        return None

    def stream(self, batch_size: int, generator: torch.Generator, seed: int) -> TensorStream:
        return TensorStream(self.data.train, batch_size, generator, self.data.augment)

    def eval_batches(self, batch_size: int = DEFAULT_EVAL_BATCH) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return split_batches(self.eval_split, batch_size)

    def sample(self, n: int, *, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of ``n`` training (or evaluation) samples: the first ``n`` (kdlib's splits come in a
        random order)."""
        split = self.data.train if train else self.eval_split
        return split.take(slice(0, n)), split.y[:n]

    def ordered_train(self, batch_size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, indices)`` of the whole un-augmented training split in order (what fills a teacher cache)."""
        split = self.data.train
        for start in range(0, len(split), batch_size):
            stop = min(start + batch_size, len(split))
            yield split.take(slice(start, stop)), torch.arange(start, stop, device=split.device)

    def check_static(self) -> None:
        """Raise when training inputs change between epochs (augmentation), which a teacher cache cannot follow."""
        if self.augments:
            raise ValueError(f"{self.name} augments its training inputs, so a teacher cache would not match them")

    def has_eval(self) -> bool:
        return len(self.eval_split) > 0

    def check_labels(self, ce_weight: float) -> bool:
        """Check label ranges; return whether the training split holds :data:`~kdlib.data.UNLABELED` inputs."""
        checked = (("train", self.data.train), ("test" if self.eval_split is self.data.test else "evaluation", self.eval_split))
        for name, split in checked:
            if len(split) == 0:
                if name == "train":
                    raise ValueError(f"the train split of {self.name} is empty")
                continue
            if name != "train" and split.y.dim() == 1 and bool((split.y == UNLABELED).any()):
                raise ValueError(f"the {name} split of {self.name} has unlabeled samples; only training may")
            labeled = split.y[split.y != UNLABELED]
            if labeled.numel() == 0:
                if ce_weight > 0:
                    raise ValueError(f"the train split of {self.name} has no labels; train with ce_weight=0 (alpha=1)")
                continue
            low, high = int(labeled.min()), int(labeled.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"{name} labels of {self.name} lie in [{low}, {high}] but num_classes is {self.num_classes}"
                )
        return bool((self.data.train.y == UNLABELED).any())

    def fingerprint(self) -> dict[str, Any]:
        train, test = self.data.train, self.eval_split
        return {
            "data": f"{self.name}: {len(train)} train / {len(test)} evaluation samples of shape "
            f"{self.data.input_shape}, {self.num_classes} classes",
            "data_contents": sample_digest(train.x, train.y, test.x, test.y),
            "normalization": [train.mean, train.std, test.mean, test.std],
        }
