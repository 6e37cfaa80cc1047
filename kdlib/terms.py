"""The terms of a distillation objective: weighted losses on a batch's logits and intermediate features.

A :class:`Term` is an :class:`~torch.nn.Module` that :func:`~kdlib.train.fit` treats as a loss term: its value
is logged under ``"loss/<name>"`` and its own parameters (adapters, CRD's embedding heads) are optimized with the
student's. A :class:`~kdlib.distiller.Distiller` gives every term the batch's :class:`StepOutputs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdlib.data import UNLABELED, Batch
from kdlib.losses import check_temperature, kd_loss_from_log_probs, teacher_log_probs

if TYPE_CHECKING:
    from kdlib.distiller import _TeacherStep
    from kdlib.losses.contrastive import CRDLoss

__all__ = ["CRDTerm", "FeatureTerm", "KDLogitTerm", "LogitTerm", "StepOutputs", "Term", "TokenTerm", "make_adapter"]

Shape = tuple[int, ...]


@dataclass
class StepOutputs:
    """Everything a term may read for one training batch.

    Attributes:
        batch: the batch (``batch.index`` holds the samples' indices in the training split).
        student_logits: ``(N, C)``, with the autograd graph of the student's forward pass.
        teacher_logits: ``(N, C)``, constants.
        student_features: layer name → the student's activation (with its graph).
        teacher_features: layer name → the teacher's activation (detached).
        teacher_log_probs: ``T -> log_softmax(teacher_logits / T)``, read from the teacher cache when there is
            one (computed once for the training set) instead of once per step.
    """

    batch: Batch
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_features: Mapping[str, Any]
    teacher_features: Mapping[str, Any]
    teacher_log_probs: Callable[[float], torch.Tensor] | None = None

    def log_probs(self, temperature: float) -> torch.Tensor:
        """The teacher's log-probabilities at ``temperature`` (see :attr:`teacher_log_probs`)."""
        if self.teacher_log_probs is not None:
            return self.teacher_log_probs(temperature)
        return teacher_log_probs(self.teacher_logits, temperature)


class Term(nn.Module):
    """One weighted distillation loss computed from a batch's :class:`StepOutputs`.

    Subclasses set :attr:`student_layers` / :attr:`teacher_layers` (the features they read) and implement
    :meth:`compute`; :meth:`setup` may build parameters once the feature shapes are known.

    Args:
        weight: the term's weight in the objective (≥ 0).
        name: the key of its value in the history, ``"loss/<name>"``.
        warmup: fraction of the training steps over which the weight ramps linearly from 0 to ``weight``
            (DKD's reference recipe warms up over the first 20 of 240 epochs, ``warmup=20/240``).
    """

    def __init__(self, *, weight: float, name: str, warmup: float = 0.0) -> None:
        super().__init__()
        weight = float(weight)
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"a term's weight must be a finite number >= 0, got {weight!r}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup is a fraction of the training steps in [0, 1), got {warmup!r}")
        self.weight = weight
        self.name = name
        self.warmup = float(warmup)
        self.student_layers: tuple[str, ...] = ()
        self.teacher_layers: tuple[str, ...] = ()
        self._step: _TeacherStep | None = None
        self.stateful = False  # True when computing the loss changes the term's state (CRD's memory)
        self._warmup_steps = 0
        self._calls = 0

    def setup(self, student_shapes: Mapping[str, Shape], teacher_shapes: Mapping[str, Shape], num_samples: int) -> None:
        """Build what depends on the feature shapes (per sample) and the training-set size; default: nothing."""

    def start(self, total_steps: int) -> None:
        """Called by :func:`~kdlib.train.fit` before the first step: the warm-up restarts over ``total_steps``."""
        self._warmup_steps = round(self.warmup * total_steps)
        self._calls = 0

    def compute(self, out: StepOutputs) -> torch.Tensor:
        """The unweighted loss of one batch (a scalar)."""
        raise NotImplementedError

    def forward(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        if self._step is None:
            raise RuntimeError(f"the term {self.name!r} computes its loss inside a Distiller; pass it in terms=[...]")
        value = self.compute(self._step.outputs(batch, logits))
        if self.training:
            self._calls += 1
            if self._calls <= self._warmup_steps:
                value = value * (self._calls / self._warmup_steps)
        return value

    # The warm-up position is part of the term's state_dict, so a resumed run (kdlib.checkpoint) continues the ramp.
    def get_extra_state(self) -> dict[str, int]:
        return {"calls": self._calls}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self._calls = int(state["calls"])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight:g}"


class LogitTerm(Term):
    """A loss of the two models' logits: ``loss_fn(student_logits, teacher_logits[, targets], **kwargs)``.

    Args:
        loss_fn: e.g. :func:`~kdlib.losses.kd_loss`, :func:`~kdlib.losses.dkd_loss` (with ``targets=True``).
        targets: pass the batch's labels as the third argument.
        **kwargs: keyword arguments of ``loss_fn`` (``temperature=4.0``, ...).
    """

    def __init__(
        self,
        loss_fn: Callable[..., torch.Tensor],
        *,
        weight: float = 1.0,
        name: str | None = None,
        targets: bool = False,
        warmup: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(weight=weight, name=name or _short_name(loss_fn), warmup=warmup)
        self.loss_fn = loss_fn
        self.targets = targets
        self.kwargs = kwargs

    def compute(self, out: StepOutputs) -> torch.Tensor:
        args = (out.batch.y,) if self.targets else ()
        return self.loss_fn(out.student_logits, out.teacher_logits, *args, **self.kwargs)


class KDLogitTerm(Term):
    """Hinton et al.'s KD term, :func:`~kdlib.losses.kd_loss`, computed from the teacher's log-probabilities at
    ``temperature`` (:meth:`StepOutputs.log_probs`): with a cached teacher they are computed once for the training
    set, not once per step. The value equals ``LogitTerm(kd_loss, temperature=...)``'s."""

    def __init__(self, temperature: float = 4.0, *, weight: float = 1.0, name: str = "kd", warmup: float = 0.0) -> None:
        super().__init__(weight=weight, name=name, warmup=warmup)
        self.temperature = check_temperature(temperature)

    def compute(self, out: StepOutputs) -> torch.Tensor:
        return kd_loss_from_log_probs(out.student_logits, out.log_probs(self.temperature), self.temperature)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature:g}"


class TokenTerm(Term):
    """A token-level loss of two sequence models, ``loss_fn(student_logits, teacher_logits, mask, **kwargs)`` on
    ``(batch, length, vocabulary)`` logits, the mask being the positions that have a target (not
    :data:`~kdlib.data.UNLABELED`): :func:`~kdlib.losses.token_forward_kl` (word-level KD),
    :func:`~kdlib.losses.token_reverse_kl`, :func:`~kdlib.losses.token_generalized_jsd`,
    :func:`~kdlib.losses.token_skew_kl`.
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor], *, weight: float = 1.0, name: str | None = None,
                 warmup: float = 0.0, **kwargs: Any) -> None:
        super().__init__(weight=weight, name=name or loss_fn.__name__.removeprefix("token_"), warmup=warmup)
        self.loss_fn = loss_fn
        self.kwargs = kwargs

    def compute(self, out: StepOutputs) -> torch.Tensor:
        mask = out.batch.y != UNLABELED
        return self.loss_fn(out.student_logits, out.teacher_logits, mask, **self.kwargs)


class FeatureTerm(Term):
    """A loss of one (student layer, teacher layer) pair: ``loss_fn(adapter(student_feature), teacher_feature)``.

    Layer names are those of :class:`~kdlib.features.FeatureRecorder` (``"block2"``, ``"fc:input"``, ...).

    Args:
        student_layer, teacher_layer: the pair.
        loss_fn: e.g. :func:`~kdlib.losses.fitnet_loss`, :func:`~kdlib.losses.at_loss`,
            :func:`~kdlib.losses.sp_loss`.
        adapter: ``"auto"`` maps the student's feature to the teacher's shape with :func:`make_adapter` when
            the shapes differ (what an element-wise loss such as FitNets needs); ``None`` passes the student's
            feature unchanged (attention maps and relations compare shapes of their own); or your module.
        **kwargs: keyword arguments of ``loss_fn``.
    """

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        loss_fn: Callable[..., torch.Tensor],
        *,
        weight: float = 1.0,
        name: str | None = None,
        adapter: str | nn.Module | None = "auto",
        warmup: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(weight=weight, name=name or _short_name(loss_fn), warmup=warmup)
        if isinstance(adapter, str) and adapter != "auto":
            raise ValueError(f"adapter must be 'auto', None or an nn.Module, got {adapter!r}")
        self.student_layers = (student_layer,)
        self.teacher_layers = (teacher_layer,)
        self.loss_fn = loss_fn
        self.kwargs = kwargs
        self._auto = adapter == "auto"
        self.adapter: nn.Module = nn.Identity() if adapter is None or self._auto else adapter

    def setup(self, student_shapes: Mapping[str, Shape], teacher_shapes: Mapping[str, Shape], num_samples: int) -> None:
        if self._auto:
            self.adapter = make_adapter(student_shapes[self.student_layers[0]], teacher_shapes[self.teacher_layers[0]])
            self._auto = False

    def compute(self, out: StepOutputs) -> torch.Tensor:
        student = self.adapter(out.student_features[self.student_layers[0]])
        return self.loss_fn(student, out.teacher_features[self.teacher_layers[0]], **self.kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pair=({self.student_layers[0]!r}, {self.teacher_layers[0]!r})"


class CRDTerm(Term):
    """Contrastive representation distillation (:class:`~kdlib.losses.CRDLoss`) on one pair of layers.

    The loss module, with its two embedding heads and its memory, is built when the feature sizes and the
    training-set size are known. ``num_negatives=None`` uses the paper's 16,384 negatives, at most half the
    training set.

    Args:
        student_layer, teacher_layer: usually ``"fc:input"`` (the penultimate embeddings).
        **crd_kwargs: arguments of :class:`~kdlib.losses.CRDLoss` (``embed_dim``, ``memory="queue"``, ...).
    """

    def __init__(
        self,
        student_layer: str = "fc:input",
        teacher_layer: str = "fc:input",
        *,
        weight: float = 0.8,
        name: str = "crd",
        num_negatives: int | None = None,
        **crd_kwargs: Any,
    ) -> None:
        super().__init__(weight=weight, name=name)
        self.stateful = True
        self.student_layers = (student_layer,)
        self.teacher_layers = (teacher_layer,)
        self.num_negatives = num_negatives
        self.crd_kwargs = crd_kwargs
        self.crd: CRDLoss | None = None

    def setup(self, student_shapes: Mapping[str, Shape], teacher_shapes: Mapping[str, Shape], num_samples: int) -> None:
        if self.crd is not None:
            return
        from kdlib.losses.contrastive import CRDLoss

        negatives = self.num_negatives or min(16384, num_samples // 2)
        self.crd = CRDLoss(
            math.prod(student_shapes[self.student_layers[0]]),
            math.prod(teacher_shapes[self.teacher_layers[0]]),
            num_samples,
            num_negatives=negatives,
            **self.crd_kwargs,
        )

    def compute(self, out: StepOutputs) -> torch.Tensor:
        s = out.student_features[self.student_layers[0]]
        t = out.teacher_features[self.teacher_layers[0]]
        return self.crd(s, t, out.batch.index)


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """A small trainable map from the student's feature shape to the teacher's (per sample, batch excluded).

    * equal shapes: :class:`~torch.nn.Identity`;
    * feature maps of the same rank, ``(C, H, W)`` or ``(C, L)``: adaptive average pooling to the teacher's
      spatial size if it differs, then a 1×1 convolution, BatchNorm and ReLU (the regressor of FitNets as
      RepDistiller builds it; the ReLU matches the teacher's post-activation features);
    * anything else (vectors, or maps of different rank): flatten, one linear layer, reshape.
    """
    s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
    if s == t:
        return nn.Identity()
    if len(s) == len(t) == 3:
        pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(t[1:])] if s[1:] != t[1:] else []
        return nn.Sequential(*pool, nn.Conv2d(s[0], t[0], 1, bias=False), nn.BatchNorm2d(t[0]), nn.ReLU())
    if len(s) == len(t) == 2:
        pool = [nn.AdaptiveAvgPool1d(t[1])] if s[1] != t[1] else []
        return nn.Sequential(*pool, nn.Conv1d(s[0], t[0], 1, bias=False), nn.BatchNorm1d(t[0]), nn.ReLU())
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(s), math.prod(t)), nn.Unflatten(1, t))


def _short_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", type(fn).__name__)
    return name.removesuffix("_loss")
