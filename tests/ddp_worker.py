"""A training script that tests/test_distributed.py runs under torchrun (gloo, CPU) and in one process.

Usage: ``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT_DIR KIND BATCH [STOP_AT]``
(or plain ``python tests/ddp_worker.py ...``). KIND is ``tensors`` (a kdlib Dataset) or ``loader`` (a torch
TensorDataset through a DataLoader). Each rank writes ``rank<R>.pt`` with its final weights, the indices of every
batch it trained on and the history; with STOP_AT the run dies at that step (after its checkpoints), to be resumed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdlib import distributed
from kdlib.data import Dataset, Split
from kdlib.train import fit

N_TRAIN, N_TEST, FEATURES, CLASSES = 96, 40, 12, 3


class RecordIndices:
    """A zero-weight loss term that records each batch's sample indices (and can stop the run at a step)."""

    name, weight = "record", 0.0

    def __init__(self, stop_at: int | None) -> None:
        self.seen: list[list[int]] = []
        self.stop_at = stop_at

    def __call__(self, batch, logits: torch.Tensor) -> torch.Tensor:
        self.seen.append(batch.index.tolist())
        if self.stop_at is not None and len(self.seen) == self.stop_at:
            raise KeyboardInterrupt("stopped on purpose")
        return logits.sum() * 0.0

    def __repr__(self) -> str:
        return "RecordIndices()"


def make_data() -> tuple[Dataset, TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_TEST, FEATURES, generator=g)
    y = (x[:, :CLASSES].argmax(1) + (x[:, -1] > 1).long()) % CLASSES
    train, test = Split(x[:N_TRAIN], y[:N_TRAIN]), Split(x[N_TRAIN:], y[N_TRAIN:])
    return (Dataset("toy", train, test, CLASSES), TensorDataset(train.x, train.y), TensorDataset(test.x, test.y))


def main(out: Path, kind: str, batch_size: int, stop_at: int | None) -> None:
    device = distributed.setup()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, CLASSES))
    data, train, test = make_data()
    recorder = RecordIndices(stop_at)
    common = dict(epochs=3, optimizer="sgd", lr=0.1, seed=0, device=device, loss_terms=[recorder],
                  checkpoint=out / "ckpt.pt", resume=True)
    if kind == "tensors":
        result = fit(model, data, batch_size=batch_size, **common)
    else:
        result = fit(model, DataLoader(train, batch_size=batch_size), eval_data=DataLoader(test, batch_size=7), **common)
    torch.save({"state": model.state_dict(), "seen": recorder.seen, "history": result.history,
                "resumed_from": result.resumed_from}, out / f"rank{distributed.rank()}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("KDLIB_PROGRESS", "0")
    stop = int(sys.argv[4]) if len(sys.argv) > 4 else None
    try:
        main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), stop)
    except KeyboardInterrupt:
        sys.exit(3)
