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
split and indexed per batch when they fit in ``cache_limit_mb``; otherwise the teacher runs live on each batch.
A :class:`~kdlib.teacher.TeacherCache` passed as ``cache_teacher`` keeps the logits on disk, or only their
top-k. The data may be a kdlib Dataset or any torch Dataset/DataLoader (:mod:`kdlib.sources`), and training runs
under ``torchrun`` unchanged (:mod:`kdlib.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from kdlib.data import Batch
from kdlib.features import FeatureRecorder, feature_shapes
from kdlib.fidelity import fidelity_monitor
from kdlib.repro import seed_everything
from kdlib.run_state import weights_digest
from kdlib.sources import as_source
from kdlib.teacher import TeacherCache, frozen
from kdlib.terms import (  # noqa: F401  (the terms are importable from here too, their historic home)
    CRDTerm,
    FeatureTerm,
    KDLogitTerm,
    LogitTerm,
    StepOutputs,
    Term,
    make_adapter,
)
from kdlib.train import FitResult, LossTerm, check_model_fits_data, fit, training_device

__all__ = ["Distiller"]  # the terms (LogitTerm, FeatureTerm, ...) live in kdlib.terms and are importable here

Shape = tuple[int, ...]


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
        self.cache: TeacherCache | None = None
        self.features: dict[str, torch.Tensor] = {}
        self._batch: Batch | None = None
        self._outputs: tuple[torch.Tensor, dict[str, Any], Any] | None = None

    def fill_cache(self, cache: TeacherCache, source: Any, fingerprint: dict[str, Any]) -> None:
        """Teacher logits (into ``cache``) and features (in memory) of every training sample, un-augmented."""
        def run(x: torch.Tensor) -> torch.Tensor:
            logits, feats = self.run(x)
            for name in self.layers:
                self.features[name].append(feats[name])
            return logits

        self.features = {name: [] for name in self.layers}
        cache.fill(run, source.ordered_train(), source.num_train, fingerprint)
        self.features = {name: torch.cat(parts) for name, parts in self.features.items()}
        self.cache = cache

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
                index, cache, device = batch.index, self.cache, student_logits.device
                features = {name: f[index.to(f.device, non_blocking=True)] for name, f in self.features.items()}
                self._outputs = cache.logits(index, device), features, lambda t: cache.log_probs(index, t, device)
            else:
                self._outputs = (*self.run(batch.x), None)
            self._batch = batch
        t_logits, t_features, t_log_probs = self._outputs
        s_features = self.student_recorder.features if self.student_recorder is not None else {}
        return StepOutputs(batch, student_logits, t_logits, s_features, t_features, t_log_probs)


class Distiller:
    """Train a student from a frozen teacher with a weighted set of distillation terms and cross-entropy.

    Objective per batch: ``ce_weight * CE(s, y) + sum(term.weight * term(...))``.

    Args:
        student: the model to train (in place).
        teacher: a trained model; frozen during :meth:`fit` and restored to its previous state afterwards.
        terms: :class:`Term` s (:class:`LogitTerm`, :class:`FeatureTerm`, :class:`CRDTerm`, or your own).
        ce_weight: weight of the cross-entropy with the labels.
        cache_teacher: ``None`` caches the teacher's outputs in memory when the data is a kdlib Dataset without
            augmentation and the cache fits in ``cache_limit_mb``, and runs it live otherwise (always for torch
            datasets, whose transforms may be random); ``True`` requires the in-memory cache (for a torch dataset
            it first checks that samples come out the same twice); a :class:`~kdlib.teacher.TeacherCache` keeps
            the logits where it says (on disk, memory-mapped, optionally top-k); ``False`` always runs it live.
        cache_limit_mb: the largest in-memory teacher cache (logits and features of the whole training set).
        fidelity: record teacher–student agreement and KL on training and test inputs in the history
            (:func:`kdlib.fidelity.fidelity_monitor`).
        extra_terms: further plain :class:`~kdlib.train.LossTerm` s that do not read the teacher.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        terms: Sequence[Term],
        *,
        ce_weight: float = 1.0,
        cache_teacher: bool | TeacherCache | None = None,
        cache_limit_mb: float = 512.0,
        fidelity: bool = True,
        extra_terms: Sequence[LossTerm] = (),
    ) -> None:
        if student is teacher:
            raise ValueError("the student and the teacher are the same module; distill into a separate copy")
        bad = [type(t).__name__ for t in terms if not isinstance(t, Term)]
        if bad:
            raise TypeError(f"terms must be kdlib.distiller.Term instances (LogitTerm, FeatureTerm, ...), got {bad}")
        names = [t.name for t in [*terms, *extra_terms]]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"term names must be unique (they key the history), repeated: {repeated}; pass name=")
        if not (cache_teacher is None or isinstance(cache_teacher, (bool, TeacherCache))):
            raise TypeError(f"cache_teacher must be None, True, False or a TeacherCache, got {cache_teacher!r}")
        self.student = student
        self.teacher = teacher
        self.terms = list(terms)
        self.extra_terms = list(extra_terms)
        self.ce_weight = float(ce_weight)
        self.cache_teacher = cache_teacher
        self.cache_limit_mb = float(cache_limit_mb)
        self.fidelity = bool(fidelity)

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: the student's and the terms' (adapters and embedding heads exist once
        :meth:`fit` has seen the feature shapes)."""
        params = [p for p in self.student.parameters() if p.requires_grad]
        return params + [p for t in self.terms for p in t.parameters() if p.requires_grad]

    def fit(self, data: Any, **fit_kwargs: Any) -> FitResult:
        """Train with :func:`kdlib.train.fit` (``epochs``/``steps``, optimizer, ``lr``, ``seed``, ``device``, ...).

        ``data`` is anything :func:`~kdlib.train.fit` takes (a kdlib Dataset, a torch Dataset or DataLoader, a
        :class:`~kdlib.sources.TorchData`), with ``eval_data=`` as in fit.

        Returns:
            The student's :class:`~kdlib.train.FitResult`; ``config`` also records the terms (name, weight,
            type) and whether the teacher was cached.

        Raises:
            ValueError: a model whose outputs do not match the data, an unknown layer name, a requested cache
                with augmentation or above the limit, or ``ce_weight``/``loss_terms`` in ``fit_kwargs``.
        """
        if "ce_weight" in fit_kwargs or "loss_terms" in fit_kwargs:
            raise TypeError("Distiller sets ce_weight and loss_terms itself; pass them to Distiller(...)")
        dev = training_device(self.student, fit_kwargs.get("device", "auto"))
        student, teacher = self.student.to(dev), self.teacher.to(dev)
        source = as_source(data, fit_kwargs.pop("eval_data", None)).to(dev)
        classes = check_model_fits_data(teacher, source, role="teacher")
        check_model_fits_data(student, source, role="student")

        probe = source.sample(4)  # read once: a torch dataset's samples cost I/O and transforms
        input_shape = tuple(probe[0].shape[1:])
        s_layers = _unique(layer for t in self.terms for layer in t.student_layers)
        t_layers = _unique(layer for t in self.terms for layer in t.teacher_layers)
        dtype = None if probe[0].is_floating_point() else probe[0].dtype  # token ids stay integers
        s_shapes = feature_shapes(student, input_shape, s_layers, input_dtype=dtype) if s_layers else {}
        t_shapes = feature_shapes(teacher, input_shape, t_layers, input_dtype=dtype) if t_layers else {}
        # Adapters and CRD's heads and memory are initialized here: seed them with the run's seed, so that the
        # same seed gives the same run whatever the process did before (fit() then seeds again, identically).
        seed_everything(fit_kwargs.get("seed", 0))
        for term in self.terms:
            term.setup(s_shapes, t_shapes, source.num_train)
            term.to(dev).eval()  # eval until fit() starts: the check below must not update BatchNorm statistics

        positions = probe[1].shape[1] if probe[1].dim() == 2 else 1  # a sequence model: (length, vocabulary) logits
        cache = self._cache(source, t_shapes, classes, positions=positions)
        with ExitStack() as stack:
            stack.enter_context(frozen(teacher))
            recorder = stack.enter_context(FeatureRecorder(student, s_layers)) if s_layers else None
            t_recorder = stack.enter_context(FeatureRecorder(teacher, t_layers, detach=True)) if t_layers else None
            step = _TeacherStep(teacher, t_recorder, recorder)
            self._check_terms(step, probe)
            if cache is not None:
                step.fill_cache(cache, source, {"teacher": weights_digest(teacher), **source.fingerprint()})
            for term in self.terms:
                term._step = step
            try:
                monitors = list(fit_kwargs.pop("monitors", ()))
                if self.fidelity:
                    monitors.append(fidelity_monitor(teacher, source))
                result = fit(student, source, ce_weight=self.ce_weight, loss_terms=[*self.terms, *self.extra_terms],
                             monitors=monitors, frozen_models=[teacher], **fit_kwargs)
            finally:
                for term in self.terms:
                    term._step = None
        result.config.update(
            cached_teacher=cache is not None,
            distill_terms=[(t.name, t.weight, type(t).__name__) for t in self.terms],
        )
        return result

    def _check_terms(self, step: _TeacherStep, probe: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Compute every stateless term once on four training samples, so that a term that cannot work for
        this pair (e.g. feature shapes that differ without an adapter) fails before training, not at step 1."""
        student = self.student
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                x, y = probe
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

    def _cache(self, source: Any, t_shapes: Mapping[str, Shape], classes: int, *, positions: int) -> TeacherCache | None:
        """The teacher cache to fill, or ``None`` to run the teacher live (see ``cache_teacher``)."""
        choice = self.cache_teacher
        if choice is False:
            return None
        requested = choice is True or isinstance(choice, TeacherCache)
        if source.augments or (source.augments is None and not requested):
            if requested:
                raise ValueError(
                    f"cannot cache the teacher: {source.name} augments its training inputs, so cached outputs would "
                    "belong to other inputs than the student sees; use cache_teacher=None or False"
                )
            return None
        if requested:
            source.check_static()
        cache = choice if isinstance(choice, TeacherCache) else TeacherCache()
        features_mb = source.num_train * sum(math.prod(s) for s in t_shapes.values()) * 4 / 2**20
        if cache.path is not None and t_shapes:
            raise ValueError("a TeacherCache on disk holds logits only; feature terms need cache_teacher=True or None")
        megabytes = features_mb + (0 if cache.path else TeacherCache.megabytes(source.num_train, classes, cache.top_k,
                                                                                 cache.dtype, positions=positions))
        if megabytes > self.cache_limit_mb:
            if requested:
                raise ValueError(
                    f"cannot cache the teacher: the cache of {source.name} needs {megabytes:.0f} MB (limit "
                    f"{self.cache_limit_mb:.0f} MB); raise cache_limit_mb, or pass cache_teacher=TeacherCache(path) "
                    "to keep the logits on disk"
                )
            return None
        return cache


def _unique(names: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
