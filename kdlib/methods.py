"""The distillation method zoo: every method of :mod:`kdlib.losses` as ready-made :class:`~kdlib.distiller.Distiller` terms.

Each :class:`Method` records the paper's recipe: the loss weights next to cross-entropy and the temperature
that the reference code used for its CIFAR-100 tables (RepDistiller, mdistiller, the logit-standardization
code), and which layers it reads. Layers are chosen from the models' ``feature_layers`` and ``fc``
(see :func:`default_layers`); pass ``layers=`` to choose them yourself::

    result = distill_with("dkd", student, teacher, data, epochs=5, seed=0)

One deliberate deviation: CRD draws one set of negatives per batch, shared by its anchors
(``shared_negatives=True``, the same expected loss as the reference's per-anchor draws), because gathering
thousands of negatives per anchor costs about a second per step on a CPU.

The weights were tuned for CIFAR-100 ResNets trained for 240 epochs with SGD; on other data and schedules
they are a starting point, not an optimum, and the book's chapter 5 reports what they give here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdlib.data import Dataset
from kdlib.distiller import Distiller
from kdlib.features import feature_shapes
from kdlib.losses import (
    at_loss,
    dist_loss,
    dkd_loss,
    fitnet_loss,
    kd_loss,
    mse_logit_loss,
    pkt_loss,
    rkd_loss,
    sp_loss,
)
from kdlib.sources import as_source
from kdlib.terms import CRDTerm, FeatureTerm, LogitTerm, Term
from kdlib.train import FitResult, fit

__all__ = ["METHODS", "Layers", "Method", "NotApplicable", "default_layers", "distill_with", "method_terms"]

Pair = tuple[str, str]


class NotApplicable(ValueError):
    """The method cannot be applied to this student/teacher pair (e.g. attention transfer to an MLP)."""


@dataclass(frozen=True)
class Layers:
    """Which (student layer, teacher layer) pairs the feature methods read.

    Give only the pairs the method you run reads; a method that needs a pair left out says so.

    Attributes:
        hint: the FitNets hint pair (an adapter maps the student's feature to the teacher's shape).
        maps: pairs of feature maps with the same spatial size, for attention transfer (one term per pair).
        last: the last feature layers, for similarity-preserving KD.
        embedding: the penultimate embeddings, for RKD, PKT and CRD; ``("fc:input", "fc:input")`` by default.
    """

    hint: Pair | None = None
    maps: tuple[Pair, ...] = ()
    last: Pair | None = None
    embedding: Pair = ("fc:input", "fc:input")

    def pair(self, field_name: str, method: str) -> Pair:
        """The pair ``field_name``, or an error that says to give it."""
        value = getattr(self, field_name)
        if value is None:
            raise ValueError(f"{method} reads layers.{field_name}; pass Layers({field_name}=(student_layer, teacher_layer))")
        return value


def default_layers(student: nn.Module, teacher: nn.Module, input_shape: Sequence[int]) -> Layers:
    """Pick layer pairs from ``feature_layers`` (kdlib's models have them) and the input of ``fc``.

    * ``maps``: walking both models' feature layers in order, each student map is paired with the first
      later teacher map of the same spatial size (AT needs equal sizes; channels may differ);
    * ``hint``: the middle pair of ``maps``, or, when there is none, the middle feature layer of each model
      (FitNets uses a middle layer: "the hint should not be too deep", Romero et al. 2015 §2.2);
    * ``last``: the last feature layer of each; ``embedding``: ``("fc:input", "fc:input")``.

    Raises:
        ValueError: a model without ``feature_layers`` or without an ``fc`` layer; pass ``layers=`` instead.
    """
    for role, model in (("student", student), ("teacher", teacher)):
        if not getattr(model, "feature_layers", None) or not isinstance(getattr(model, "fc", None), nn.Module):
            raise ValueError(
                f"the {role} ({type(model).__name__}) has no feature_layers or no fc layer to choose layers "
                "from; pass layers=Layers(hint=..., maps=..., last=..., embedding=...)"
            )
    s_names, t_names = tuple(student.feature_layers), tuple(teacher.feature_layers)
    s_shapes = feature_shapes(student, input_shape, s_names)
    t_shapes = feature_shapes(teacher, input_shape, t_names)
    maps, start = [], 0
    for s in s_names:
        if len(s_shapes[s]) < 2:
            continue
        for j in range(start, len(t_names)):
            t = t_names[j]
            if len(t_shapes[t]) == len(s_shapes[s]) and t_shapes[t][1:] == s_shapes[s][1:]:
                maps.append((s, t))
                start = j + 1
                break
    hint = maps[(len(maps) - 1) // 2] if maps else (s_names[(len(s_names) - 1) // 2], t_names[(len(t_names) - 1) // 2])
    return Layers(hint=hint, maps=tuple(maps), last=(s_names[-1], t_names[-1]), embedding=("fc:input", "fc:input"))


@dataclass(frozen=True)
class Method:
    """A distillation method: its terms (built for a pair of models from a recipe) and the cross-entropy weight.

    Attributes:
        name: registry key.
        title: the name the papers use.
        family: ``"baseline"``, ``"logit"``, ``"feature"``, ``"relation"`` or ``"contrastive"``.
        cite: the BibTeX key of the paper.
        ce_weight: weight of the cross-entropy with the labels in the reference recipe.
        build: ``build(layers, **recipe) -> terms``.
        recipe: the reference hyper-parameters, the keyword arguments of ``build``.
        main: the recipe key that sets how strongly the method pulls (a loss weight), the one to tune first.
    """

    name: str
    title: str
    family: str
    cite: str
    ce_weight: float
    build: Callable[..., list[Term]]
    recipe: dict[str, float] = field(default_factory=dict)
    main: str | None = None


def _attention_terms(layers: Layers, weight: float) -> list[Term]:
    if not layers.maps:
        raise NotApplicable(
            "attention transfer needs feature maps of the same spatial size in both models; "
            "this pair has none (an MLP has no spatial maps)"
        )
    return [
        FeatureTerm(s, t, at_loss, weight=weight, adapter=None, name=f"at{i}")
        for i, (s, t) in enumerate(layers.maps, start=1)
    ]


#: Logit standardization's recipe (Sun et al. 2024; ``tools/train.py`` of the reference code, whose README runs
#: every method with ``--logit-stand --base-temp 2 --kd-weight 9``): KD's weight becomes 9 and its T 2, with
#: cross-entropy weight 0.1 (``CFG.KD.LOSS.CE_WEIGHT`` of the config since 2024-03-10; 1 before); DKD keeps its
#: cross-entropy weight 1 and has its alpha and beta multiplied by 9 and its T set to 2.
LS_KD_WEIGHT = 9.0
LS_BASE_TEMPERATURE = 2.0
LS_KD_CE_WEIGHT = 0.1


def standardized_dkd(alpha: float = 1.0, beta: float = 8.0) -> dict[str, float]:
    """DKD's recipe under logit standardization, from DKD's own alpha and beta (rule of :data:`LS_KD_WEIGHT`)."""
    return dict(alpha=alpha * LS_KD_WEIGHT, beta=beta * LS_KD_WEIGHT, T=LS_BASE_TEMPERATURE)


def _method(name: str, title: str, family: str, cite: str, ce_weight: float, build, main: str | None = None,
            **recipe: float) -> Method:
    return Method(name, title, family, cite, ce_weight, build, dict(recipe), main)


def _dkd(standardize: bool, name: str) -> Callable[..., list[Term]]:
    def build(layers: Layers, alpha: float, beta: float, T: float) -> list[Term]:
        return [LogitTerm(dkd_loss, targets=True, alpha=alpha, beta=beta, temperature=T, standardize=standardize,
                          warmup=20 / 240, name=name)]

    return build


#: Every method in kdlib, with the reference recipes. Weights: RepDistiller's table runs for the feature,
#: relation and contrastive methods (CE 1 + beta * loss), mdistiller for DKD and DIST, the logit-standardization
#: code for "kd_ls" and "dkd_ls" (see :data:`LS_KD_WEIGHT`). DIST's CIFAR values (beta = gamma = 2, T = 4) come
#: from re-implementations.
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        _method("student", "Student alone (cross-entropy)", "baseline", "hinton2015distilling", 1.0, lambda l: []),
        _method("kd", "KD", "logit", "hinton2015distilling", 0.1,
                lambda l, weight, T: [LogitTerm(kd_loss, weight=weight, temperature=T)], "weight", weight=0.9, T=4.0),
        _method("mse", "Logit matching (MSE)", "logit", "ba2014deep", 0.1,
                lambda l, weight: [LogitTerm(mse_logit_loss, weight=weight)], "weight", weight=0.9),
        _method("dkd", "DKD", "logit", "zhao2022decoupled", 1.0, _dkd(False, "dkd"), "beta",
                alpha=1.0, beta=8.0, T=4.0),
        _method("dist", "DIST", "logit", "huang2022knowledge", 1.0,
                lambda l, beta, gamma, T: [LogitTerm(dist_loss, beta=beta, gamma=gamma, temperature=T)], "beta",
                beta=2.0, gamma=2.0, T=4.0),
        _method("kd_ls", "KD + logit standardization", "logit", "sun2024logit", LS_KD_CE_WEIGHT,
                lambda l, weight, T: [LogitTerm(kd_loss, weight=weight, temperature=T, standardize=True, name="kd_ls")],
                "weight", weight=LS_KD_WEIGHT, T=LS_BASE_TEMPERATURE),
        _method("dkd_ls", "DKD + logit standardization", "logit", "sun2024logit", 1.0, _dkd(True, "dkd_ls"), "beta",
                **standardized_dkd()),
        _method("fitnet", "FitNets", "feature", "romero2015fitnets", 1.0,
                lambda l, weight: [FeatureTerm(*l.pair("hint", "fitnet"), fitnet_loss, weight=weight)], "weight", weight=100.0),
        _method("at", "Attention transfer", "feature", "zagoruyko2017attention", 1.0, _attention_terms, "weight",
                weight=1000.0),
        _method("sp", "Similarity-preserving", "relation", "tung2019similarity", 1.0,
                lambda l, weight: [FeatureTerm(*l.pair("last", "sp"), sp_loss, weight=weight, adapter=None)], "weight",
                weight=3000.0),
        _method("rkd", "RKD (distance + angle)", "relation", "park2019relational", 1.0,
                lambda l, weight, distance, angle: [FeatureTerm(*l.embedding, rkd_loss, weight=weight, adapter=None,
                                                                distance_weight=distance, angle_weight=angle)],
                "weight", weight=1.0, distance=25.0, angle=50.0),
        _method("pkt", "PKT", "relation", "passalis2018learning", 1.0,
                lambda l, weight: [FeatureTerm(*l.embedding, pkt_loss, weight=weight, adapter=None)], "weight",
                weight=30000.0),
        _method("crd", "CRD", "contrastive", "tian2020contrastive", 1.0,
                lambda l, weight: [CRDTerm(*l.embedding, weight=weight, shared_negatives=True)], "weight", weight=0.8),
    ]
}


def method_terms(
    name: str,
    student: nn.Module,
    teacher: nn.Module,
    input_shape: Sequence[int],
    layers: Layers | None = None,
    **overrides: float,
) -> tuple[list[Term], float]:
    """The terms and the cross-entropy weight of method ``name`` for this pair of models.

    ``overrides`` replace entries of the method's recipe (e.g. ``beta=1.0`` for DKD), and ``ce_weight=``
    replaces its cross-entropy weight: how a tuning grid or another paper's settings are expressed.

    Raises:
        ValueError: an unknown method or recipe key (the message lists them).
        NotApplicable: the method cannot use this pair (see :func:`default_layers`).
    """
    method = _lookup(name)
    ce_weight = float(overrides.pop("ce_weight", method.ce_weight))
    unknown = sorted(set(overrides) - set(method.recipe))
    if unknown:
        raise ValueError(f"{name} has no recipe keys {unknown}; its recipe is {method.recipe} (and ce_weight)")
    recipe = {**method.recipe, **overrides}
    if method.family not in ("baseline", "logit"):
        layers = layers or default_layers(student, teacher, input_shape)
    return method.build(layers, **recipe), ce_weight


def distill_with(
    name: str,
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    layers: Layers | None = None,
    cache_teacher: bool | None = None,
    recipe: dict[str, float] | None = None,
    **fit_kwargs,
) -> FitResult:
    """Train ``student`` with method ``name`` (``"student"`` trains it alone, without the teacher).

    ``recipe`` overrides entries of the method's recipe and its ``ce_weight`` (see :func:`method_terms`);
    ``fit_kwargs`` go to :func:`kdlib.train.fit` (epochs/steps, lr, seed, device, ...). The result's
    ``config`` records the method's name and the recipe used.
    """
    input_shape = data.input_shape if isinstance(data, Dataset) else tuple(as_source(data).sample(1)[0].shape[1:])
    terms, ce_weight = method_terms(name, student, teacher, input_shape, layers, **(recipe or {}))
    if not terms:
        result = fit(student, data, ce_weight=ce_weight, **fit_kwargs)
    else:
        result = Distiller(student, teacher, terms, ce_weight=ce_weight, cache_teacher=cache_teacher).fit(
            data, **fit_kwargs
        )
    result.config.update(method=name, recipe={**_lookup(name).recipe, **(recipe or {})})
    return result


def _lookup(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]

