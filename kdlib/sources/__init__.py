"""What :func:`kdlib.train.fit` trains and evaluates on: kdlib's device tensors or any PyTorch dataset.

Two kinds of data reach the one training loop through the same small interface (:class:`TensorSource`,
:class:`LoaderSource`):

* a :class:`kdlib.data.Dataset`, the fast path: the splits live on the training device and a batch is an
  index into them (no workers, no copies; augmentation runs on the device);
* any map-style :class:`torch.utils.data.Dataset` returning ``(input, label)``, or a
  :class:`~torch.utils.data.DataLoader` over one, or a :class:`TorchData` naming both splits: batches come
  from a DataLoader with the user's workers, ``collate_fn`` and per-sample transforms (torchvision's, v2
  included), copied to the device and optionally normalized there (:class:`Normalize`, for ``uint8`` images).

Both draw a seeded order per epoch and, under ``torchrun``, give each rank a disjoint slice of every global
batch (:func:`epoch_order`), evaluate each rank's share of the evaluation data and sum the counts over ranks.
Every batch carries the indices of its samples (:class:`IndexedDataset` adds them to a torch dataset), which is
what a cached teacher looks up.
"""

from __future__ import annotations

from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from kdlib.data import Dataset, Split
from kdlib.sources.loaders import (
    IndexedDataset,
    LoaderSource,
    LoaderStream,
    Normalize,
    TorchData,
)
from kdlib.sources.shards import (
    DEFAULT_EVAL_BATCH,
    epoch_order,
    rank_slice,
    split_batches,
    steps_per_epoch,
)
from kdlib.sources.tensors import TensorSource, TensorStream

__all__ = [
    "DEFAULT_EVAL_BATCH", "IndexedDataset", "LoaderSource", "LoaderStream", "Normalize", "TensorSource", "TensorStream",
    "TorchData", "as_source", "epoch_order", "rank_slice", "split_batches", "steps_per_epoch",
]


def _is_torch_data(value: object) -> bool:
    return isinstance(value, (TorchDataset, DataLoader)) and not isinstance(value, Dataset)


def as_source(data: object, eval_data: object = None) -> TensorSource | LoaderSource:
    """The source :func:`~kdlib.train.fit` reads: from a kdlib Dataset, a TorchData, or a torch Dataset/DataLoader.

    ``eval_data`` replaces the evaluation data: a kdlib :class:`~kdlib.data.Split` (a validation split, say) for
    a kdlib Dataset, a torch dataset or DataLoader otherwise.
    """
    if isinstance(data, (TensorSource, LoaderSource)):
        if eval_data is not None:
            raise TypeError("eval_data cannot be given with a source that already has its evaluation data")
        return data
    if isinstance(data, Dataset):
        if eval_data is not None and not isinstance(eval_data, Split):
            raise TypeError(f"eval_data for a kdlib Dataset must be a kdlib.data.Split, got {type(eval_data).__name__}")
        return TensorSource(data, eval_data if eval_data is not None else data.test)
    if _is_torch_data(data):
        if eval_data is not None and not _is_torch_data(eval_data):
            raise TypeError(f"eval_data must be a torch Dataset or DataLoader, got {type(eval_data).__name__}")
        data = TorchData(data, eval_data)
    elif isinstance(data, TorchData):
        if eval_data is not None:
            raise TypeError("give the evaluation data as TorchData(eval=...), not also as eval_data=")
    else:
        raise TypeError(
            f"data must be a kdlib.data.Dataset, a torch Dataset or DataLoader, or a kdlib.sources.TorchData; got "
            f"{type(data).__name__}"
        )
    return LoaderSource(data)
