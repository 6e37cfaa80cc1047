"""Distillation with any weighted set of loss terms on logits and on pairs of intermediate features.

:func:`kdlib.distill.distill` is Hinton's KD. A :class:`Distiller` generalizes it to every method of the
zoo (:mod:`kdlib.methods`) while reusing the one training loop, :func:`kdlib.train.fit`::

    terms = [
        LogitTerm(kd_loss, weight=0.9, temperature=4.0),
        FeatureTerm("block1", "block1", fitnet_loss, weight=100.0),      # adapter created when shapes differ
        FeatureTerm("fc:input", "fc:input", rkd_loss, adapter=None),     # relations need no adapter
    ]
    result = Distiller(student, teacher, terms, ce_weight=0.1).fit(data, epochs=5, seed=0)

Each term is an :class:`~torch.nn.Module` that :func:`~kdlib.train.fit` treats as a loss term: its value is
logged under ``"loss/<name>"`` and its own parameters (adapters, CRD's embedding heads) are optimized with
the student's. The teacher is frozen (eval mode, ``requires_grad=False``, no autograd graph) and runs once
per batch, however many terms read it. Features are read with forward hooks
(:class:`~kdlib.features.FeatureRecorder`), so any ``nn.Module`` can be either model; the student's are
references to the activations of its own forward pass, not copies.

Without augmentation, the teacher's logits *and* requested features are computed once for the whole training
split and indexed per batch (as :func:`~kdlib.distill.distill` caches logits) when they fit in
``cache_limit_mb``; otherwise the teacher runs live on each batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdlib.data import Batch, Dataset
from kdlib.device import module_device, resolve
from kdlib.distill import frozen, with_fidelity
from kdlib.features import FeatureRecorder, feature_shapes
from kdlib.repro import seed_everything
from kdlib.train import DEFAULT_BATCH_SIZE, FitResult, check_model_fits_data, count_steps, fit

if TYPE_CHECKING:
    from kdlib.losses.contrastive import CRDLoss

__all__ = ["CRDTerm", "Distiller", "FeatureTerm", "LogitTerm", "StepOutputs", "Term", "make_adapter"]

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
    """

    batch: Batch
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_features: Mapping[str, Any]
    teacher_features: Mapping[str, Any]


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


class _TeacherStep:
    """The teacher's outputs for the current batch, computed once however many terms read them."""

    def __init__(
        self,
        teacher: nn.Module,
        teacher_recorder: FeatureRecorder | None,
        student_recorder: FeatureRecorder | None,
    ):
        self.teacher = teacher
        self.teacher_recorder = teacher_recorder  # detached, hooks registered once for the whole run
        self.layers = teacher_recorder.layers if teacher_recorder is not None else ()
        self.student_recorder = student_recorder
        self.cache: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self._batch: Batch | None = None
        self._outputs: tuple[torch.Tensor, dict[str, Any]] | None = None

    def fill_cache(self, x: torch.Tensor, batch_size: int = 512) -> None:
        """Teacher logits and features for every row of ``x`` (the un-augmented training inputs)."""
        logits, features = [], {name: [] for name in self.layers}
        for start in range(0, x.shape[0], batch_size):
            out, feats = self.run(x[start : start + batch_size])
            logits.append(out)
            for name in self.layers:
                features[name].append(feats[name])
        self.cache = torch.cat(logits), {name: torch.cat(parts) for name, parts in features.items()}

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        with torch.no_grad():
            logits = self.teacher(x)
        return logits, self.teacher_recorder.features if self.teacher_recorder is not None else {}

    def forget(self) -> None:
        """Drop the outputs of the last batch (and the graphs they keep alive)."""
        self._batch, self._outputs = None, None
        for recorder in (self.student_recorder, self.teacher_recorder):
            if recorder is not None:
                recorder.clear()

    def outputs(self, batch: Batch, student_logits: torch.Tensor) -> StepOutputs:
        if batch is not self._batch:
            if self.cache is not None:
                logits, features = self.cache
                self._outputs = logits[batch.index], {name: f[batch.index] for name, f in features.items()}
            else:
                self._outputs = self.run(batch.x)
            self._batch = batch
        t_logits, t_features = self._outputs
        s_features = self.student_recorder.features if self.student_recorder is not None else {}
        return StepOutputs(batch, student_logits, t_logits, s_features, t_features)


class Distiller:
    """Train a student from a frozen teacher with a weighted set of distillation terms and cross-entropy.

    Objective per batch: ``ce_weight * CE(s, y) + sum(term.weight * term(...))``.

    Args:
        student: the model to train (in place).
        teacher: a trained model; frozen during :meth:`fit` and restored to its previous state afterwards.
        terms: :class:`Term` s (:class:`LogitTerm`, :class:`FeatureTerm`, :class:`CRDTerm`, or your own).
        ce_weight: weight of the cross-entropy with the labels.
        cache_teacher: ``None`` caches the teacher's outputs when the data has no augmentation and the cache
            fits in ``cache_limit_mb``; ``True`` requires the cache; ``False`` always runs the teacher live.
        cache_limit_mb: the largest teacher cache (logits and features of the whole training split) to keep.
        fidelity: record teacher–student agreement and KL on training and test inputs in the history
            (:func:`kdlib.fidelity.fidelity_monitor`).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        terms: Sequence[Term],
        *,
        ce_weight: float = 1.0,
        cache_teacher: bool | None = None,
        cache_limit_mb: float = 512.0,
        fidelity: bool = True,
    ) -> None:
        if student is teacher:
            raise ValueError("the student and the teacher are the same module; distill into a separate copy")
        bad = [type(t).__name__ for t in terms if not isinstance(t, Term)]
        if bad:
            raise TypeError(f"terms must be kdlib.distiller.Term instances (LogitTerm, FeatureTerm, ...), got {bad}")
        names = [t.name for t in terms]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"term names must be unique (they key the history), repeated: {repeated}; pass name=")
        self.student = student
        self.teacher = teacher
        self.terms = list(terms)
        self.ce_weight = float(ce_weight)
        self.cache_teacher = cache_teacher
        self.cache_limit_mb = float(cache_limit_mb)
        self.fidelity = bool(fidelity)

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: the student's and the terms' (adapters and embedding heads exist once
        :meth:`fit` has seen the feature shapes)."""
        params = [p for p in self.student.parameters() if p.requires_grad]
        return params + [p for t in self.terms for p in t.parameters() if p.requires_grad]

    def fit(self, data: Dataset, **fit_kwargs: Any) -> FitResult:
        """Train with :func:`kdlib.train.fit` (``epochs``/``steps``, optimizer, ``lr``, ``seed``, ``device``, ...).

        Returns:
            The student's :class:`~kdlib.train.FitResult`; ``config`` also records the terms (name, weight,
            type) and whether the teacher was cached.

        Raises:
            ValueError: a model whose outputs do not match the data, an unknown layer name, a requested cache
                with augmentation or above the limit, or ``ce_weight``/``loss_terms`` in ``fit_kwargs``.
        """
        if "ce_weight" in fit_kwargs or "loss_terms" in fit_kwargs:
            raise TypeError("Distiller sets ce_weight and loss_terms itself; pass them to Distiller(...)")
        device = fit_kwargs.get("device")
        dev = module_device(self.student) if device is None else resolve(device)
        student, teacher = self.student.to(dev), self.teacher.to(dev)
        data = data.to(dev)
        check_model_fits_data(teacher, data, role="teacher")
        check_model_fits_data(student, data, role="student")

        s_layers = _unique(layer for t in self.terms for layer in t.student_layers)
        t_layers = _unique(layer for t in self.terms for layer in t.teacher_layers)
        s_shapes = feature_shapes(student, data.input_shape, s_layers) if s_layers else {}
        t_shapes = feature_shapes(teacher, data.input_shape, t_layers) if t_layers else {}
        total_steps = count_steps(
            len(data.train),
            epochs=fit_kwargs.get("epochs"),
            steps=fit_kwargs.get("steps"),
            batch_size=fit_kwargs.get("batch_size", DEFAULT_BATCH_SIZE),
        )
        # Adapters and CRD's heads and memory are initialized here: seed them with the run's seed, so that the
        # same seed gives the same run whatever the process did before (fit() then seeds again, identically).
        seed_everything(fit_kwargs.get("seed", 0))
        for term in self.terms:
            term.setup(s_shapes, t_shapes, len(data.train))
            term.to(dev).eval()  # eval until fit() starts: the check below must not update BatchNorm statistics
            term._warmup_steps = round(term.warmup * total_steps)
            term._calls = 0

        use_cache = self._use_cache(data, t_shapes)
        with ExitStack() as stack:
            stack.enter_context(frozen(teacher))
            recorder = stack.enter_context(FeatureRecorder(student, s_layers)) if s_layers else None
            t_recorder = stack.enter_context(FeatureRecorder(teacher, t_layers, detach=True)) if t_layers else None
            step = _TeacherStep(teacher, t_recorder, recorder)
            self._check_terms(step, data)
            if use_cache:
                step.fill_cache(data.train.x)
            for term in self.terms:
                term._step = step
            try:
                monitors = with_fidelity(fit_kwargs.pop("monitors", ()), teacher, data, self.fidelity)
                result = fit(student, data, ce_weight=self.ce_weight, loss_terms=self.terms, monitors=monitors,
                             **fit_kwargs)
            finally:
                for term in self.terms:
                    term._step = None
        result.config.update(
            cached_teacher=use_cache,
            distill_terms=[(t.name, t.weight, type(t).__name__) for t in self.terms],
        )
        return result

    def _check_terms(self, step: _TeacherStep, data: Dataset) -> None:
        """Compute every stateless term once on four training samples, so that a term that cannot work for
        this pair (e.g. feature shapes that differ without an adapter) fails before training, not at step 1."""
        student = self.student
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                x, y = data.train.x[:4], data.train.y[:4]
                batch = Batch(x, y, torch.arange(x.shape[0], device=x.device))
                out = step.outputs(batch, student(x))
                for term in self.terms:
                    if term.stateful:
                        continue
                    try:
                        term.compute(out)
                    except (ValueError, TypeError, RuntimeError) as err:
                        raise type(err)(f"distillation term {term.name!r} cannot be computed for this pair: {err}") from err
        finally:
            student.train(was_training)
            step.forget()

    def _use_cache(self, data: Dataset, t_shapes: Mapping[str, Shape]) -> bool:
        if self.cache_teacher is False:
            return False
        per_sample = data.num_classes + sum(math.prod(s) for s in t_shapes.values())
        megabytes = len(data.train) * per_sample * 4 / 2**20
        if data.augment is not None or megabytes > self.cache_limit_mb:
            if self.cache_teacher:
                why = "augments its inputs" if data.augment is not None else f"needs {megabytes:.0f} MB"
                raise ValueError(
                    f"cannot cache the teacher: {data.name} {why} (limit {self.cache_limit_mb:.0f} MB); "
                    "use cache_teacher=None or False, or raise cache_limit_mb"
                )
            return False
        return True


def _unique(names: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _short_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", type(fn).__name__)
    return name.removesuffix("_loss")
