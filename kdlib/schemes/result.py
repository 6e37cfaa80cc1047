"""What every training scheme returns: one row per model, as data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdlib.device import module_device
from kdlib.profile import count_parameters
from kdlib.sources import as_source
from kdlib.train import (
    FitResult,
    check_model_fits_data,
    loss_and_accuracy,
    training_device,
)


@dataclass
class ModelResult:
    """One model of a scheme.

    Attributes:
        name: unique within the scheme (``"generation 2"``, ``"teacher 1"``, ``"peer 0"``, ``"ensemble"``).
        role: what the model did: ``"teacher"``, ``"student"``, ``"assistant"``, ``"peer"`` or ``"ensemble"``.
        model: the trained module itself.
        accuracy: test accuracy of its final weights.
        params: number of parameters.
        teacher: the name of the model it was distilled from, if any.
        fit: its :class:`~kdlib.train.FitResult` when the scheme trained it, else ``None``.
    """

    name: str
    role: str
    model: nn.Module
    accuracy: float
    params: int
    teacher: str | None = None
    fit: FitResult | None = None

    def record(self) -> dict[str, Any]:
        """A JSON-friendly dict: everything but the module and the history."""
        row = dict(name=self.name, role=self.role, accuracy=self.accuracy, params=self.params, teacher=self.teacher)
        if self.fit is not None:
            row.update(best_accuracy=self.fit.best_accuracy, train_seconds=self.fit.train_seconds, steps=self.fit.steps)
        return row


@dataclass
class SchemeResult:
    """The rows of a scheme in training order; ``result["student"]`` looks one up by name."""

    scheme: str
    rows: list[ModelResult] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> ModelResult:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no model named {name!r} in this {self.scheme} result; names: {[r.name for r in self.rows]}")

    def add(self, name: str, role: str, model: nn.Module, data: Any, *, teacher: str | None = None,
            fit: FitResult | None = None) -> ModelResult:
        """Evaluate ``model`` on the evaluation data of ``data`` (anything :func:`~kdlib.train.fit` takes) and append
        its row."""
        if any(r.name == name for r in self.rows):
            raise ValueError(f"duplicate model name {name!r}")
        if fit is not None:
            accuracy = fit.final_accuracy
        else:
            accuracy = loss_and_accuracy(model, as_source(data).to(module_device(model)).eval_batches())["accuracy"]
        row = ModelResult(name, role, model, float(accuracy), count_parameters(model), teacher, fit)
        self.rows.append(row)
        return row

    def records(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per model (see :meth:`ModelResult.record`)."""
        return [r.record() for r in self.rows]

    def to_frame(self) -> Any:
        """The rows as a :class:`pandas.DataFrame` (pandas is imported only here)."""
        import pandas as pd

        return pd.DataFrame(self.records())


def named_models(models: Any, prefix: str) -> dict[str, nn.Module]:
    """``{name: module}`` from a mapping or a sequence (named ``"<prefix> 0"``, ``"<prefix> 1"``, ...)."""
    if isinstance(models, nn.Module):
        raise TypeError(f"expected several models (a list or a dict of {prefix}s), got a single {type(models).__name__}")
    items = list(models.items()) if isinstance(models, Mapping) else [(f"{prefix} {i}", m) for i, m in enumerate(models)]
    for name, model in items:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    if not items:
        raise ValueError(f"need at least one {prefix}")
    return dict(items)


def check_models_fit_data(models: Mapping[str, nn.Module], data: Any) -> int:
    """Every model takes ``data``'s inputs and predicts the same classes; returns their number."""
    ids = [id(m) for m in models.values()]
    if len(set(ids)) != len(ids):
        raise ValueError("the same module object appears twice; each role needs its own model (use copy.deepcopy)")
    classes = {name: check_model_fits_data(model, data, role=name) for name, model in models.items()}
    if len(set(classes.values())) > 1:
        raise ValueError(f"the models predict different numbers of classes: {classes}")
    return next(iter(classes.values()))


def prepare(models: Mapping[str, nn.Module], data: Any, device: Any = "auto") -> Any:
    """Move every model and the data to ``device`` (as :func:`kdlib.train.fit` chooses it from the first model)
    and check them. ``data`` is anything ``fit`` takes; the result is its source (:mod:`kdlib.sources`), which
    ``fit`` and ``distill`` accept as it is."""
    dev = training_device(next(iter(models.values())), device)
    for model in models.values():
        model.to(dev)
    source = as_source(data).to(dev)
    check_models_fit_data(models, source)
    return source
