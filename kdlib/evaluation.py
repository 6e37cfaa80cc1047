"""Evaluating a classifier: logits, loss and accuracy on kdlib splits or any PyTorch dataset, on one or many ranks."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from kdlib import distributed
from kdlib.data import UNLABELED, Dataset, Split
from kdlib.device import module_device
from kdlib.sources import TorchData, as_source, split_batches

__all__ = [
    "agreement", "autocast", "check_amp", "check_model_fits_data", "evaluate", "flat_outputs", "loss_and_accuracy",
    "eval_mode", "predict",
]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None, device: torch.device) -> str | None:
    """``amp`` checked for ``device``: ``None``, ``"bf16"``, or ``"fp16"`` (CUDA only)."""
    if amp is None:
        return None
    if amp not in _AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device (got {device}); use amp='bf16' or amp=None")
    return amp


def flat_outputs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequence model's logits ``(N, L, V)`` and targets ``(N, L)`` as ``(N·L, V)`` and ``(N·L,)``: every position is
    one classification (positions labeled :data:`~kdlib.data.UNLABELED` are skipped downstream); a classifier's
    ``(N, C)`` and ``(N,)`` pass unchanged."""
    if logits.dim() == 3:
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return logits, targets


def autocast(device: torch.device, amp: str | None):
    """Mixed precision for the block (``amp`` = ``"bf16"``/``"fp16"``), or nothing (``None``)."""
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


class eval_mode:  # noqa: N801  (a context manager, named as one)
    """Eval mode for the block; the train/eval mode of the model and every submodule restored afterwards (an
    ensemble of frozen teachers must not be put back in train mode)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, mode in self.modes:
            module.training = mode


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor | Split, *, batch_size: int = 1024, amp: str | None = None) -> torch.Tensor:
    """Logits of ``model`` for inputs ``x`` (batched, eval mode, no autograd), as float32 on the model's device."""
    device = module_device(model)
    n = len(x) if isinstance(x, Split) else x.shape[0]
    with eval_mode(model), autocast(device, check_amp(amp, device)):
        outs = []
        for start in range(0, n, batch_size):
            chunk = x.take(slice(start, start + batch_size)) if isinstance(x, Split) else x[start : start + batch_size]
            outs.append(model(chunk.to(device)).float())
        return torch.cat(outs)


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, batches: Any, *, amp: str | None = None) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy over ``(inputs, labels)`` batches, summed over every rank's share.

    The sums stay on the device until the end: one synchronization per evaluation, not one per batch.
    """
    device = module_device(model)
    totals = torch.zeros(3, dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
    with eval_mode(model), autocast(device, check_amp(amp, device)):
        for x, y in batches:
            logits, y = flat_outputs(model(x.to(device)).float(), y.to(device))
            kept = y != UNLABELED  # a sequence model's positions without a target are not scored
            totals[0] += nn.functional.cross_entropy(logits, y, reduction="sum", ignore_index=UNLABELED).to(totals.dtype)
            totals[1] += ((logits.argmax(1) == y) & kept).sum().to(totals.dtype)
            totals[2] += kept.sum().to(totals.dtype)
    loss_sum, correct, n = distributed.all_reduce_sum(totals).tolist()
    if n == 0:
        raise ValueError("there is nothing to evaluate on: the evaluation data is empty")
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": n}


def evaluate(model: nn.Module, data: Any, *, batch_size: int = 1024, amp: str | None = None) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on some data, ``{"loss", "accuracy", "n"}``.

    ``data``: a :class:`~kdlib.data.Split`, a :class:`~kdlib.data.Dataset` (its test split), a torch
    Dataset or DataLoader of ``(input, label)`` pairs, or a :class:`~kdlib.sources.TorchData` (its ``eval``).
    Under ``torchrun`` each rank evaluates its share and the result is that of the whole data, on every rank.
    """
    if isinstance(data, Dataset):
        data = data.test
    if isinstance(data, Split):
        return loss_and_accuracy(model, split_batches(data, batch_size), amp=amp)
    source = as_source(data if isinstance(data, TorchData) else TorchData(data, data))
    return loss_and_accuracy(model, source.to(module_device(model)).eval_batches(), amp=amp)


def agreement(model_a: nn.Module, model_b: nn.Module, data: Split | Dataset, *, batch_size: int = 1024) -> float:
    """Share of samples (in [0, 1]) on which two models predict the same top-1 class.

    Teacher–student agreement measures *fidelity*, how well the student imitates the teacher, which is
    distinct from accuracy (Stanton et al., 2021). A :class:`Dataset` means its test split.
    """
    split = data.test if isinstance(data, Dataset) else data
    if not isinstance(split, Split):
        raise TypeError(f"expected a kdlib Split or Dataset, got {type(data).__name__}")
    a = predict(model_a, split, batch_size=batch_size).argmax(1)
    b = predict(model_b, split, batch_size=batch_size).argmax(1).to(a.device)
    return float((a == b).float().mean())


def check_model_fits_data(model: nn.Module, data: Any, *, role: str = "model") -> int:
    """Run two training samples through ``model`` and check it outputs ``(2, num_classes)`` logits.

    ``data`` is a :class:`~kdlib.data.Dataset` or a source of :mod:`kdlib.sources`. Returns the number of
    classes the model outputs. Raises a ``ValueError`` that says how to fix a class-count mismatch; the model's
    own error for an input of the wrong shape is re-raised with the input shape named.
    """
    source = as_source(data) if isinstance(data, Dataset) else data
    device = module_device(model)
    probe = source.sample(2)[0].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as err:
        raise ValueError(
            f"{role} {type(model).__name__} cannot take {source.name} inputs of shape {tuple(probe.shape[1:])} "
            f"(per sample): {err}"
        ) from err
    finally:
        model.train(was_training)
    sequence = isinstance(out, torch.Tensor) and out.dim() == 3 and out.shape[:2] == probe.shape[:2]
    if not isinstance(out, torch.Tensor) or not (out.dim() == 2 or sequence) or out.shape[0] != probe.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{role} must return logits of shape (batch, classes), or (batch, length, vocabulary) for token inputs "
            f"(batch, length); for inputs {tuple(probe.shape)} it returned {shape}"
        )
    if source.num_classes is not None and out.shape[-1] != source.num_classes:
        raise ValueError(
            f"{role} outputs {out.shape[-1]} classes but {source.name} has {source.num_classes}; "
            f"create it with num_classes={source.num_classes}"
        )
    return int(out.shape[-1])
