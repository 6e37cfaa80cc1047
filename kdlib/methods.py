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

from torch import nn

from kdlib.data import Dataset
from kdlib.distiller import CRDTerm, Distiller, FeatureTerm, LogitTerm, Term
from kdlib.features import feature_shapes
from kdlib.losses import at_loss, dist_loss, dkd_loss, fitnet_loss, kd_loss, mse_logit_loss, pkt_loss, rkd_loss, sp_loss
from kdlib.train import FitResult, fit

__all__ = ["METHODS", "Layers", "Method", "NotApplicable", "default_layers", "distill_with", "method_terms"]

Pair = tuple[str, str]


class NotApplicable(ValueError):
    """The method cannot be applied to this student/teacher pair (e.g. attention transfer to an MLP)."""


@dataclass(frozen=True)
class Layers:
    """Which (student layer, teacher layer) pairs the feature methods read.

    Attributes:
        hint: the FitNets hint pair (an adapter maps the student's feature to the teacher's shape).
        maps: pairs of feature maps with the same spatial size, for attention transfer (one term per pair).
        last: the last feature layers, for similarity-preserving KD.
        embedding: the penultimate embeddings, for RKD, PKT and CRD.
    """

    hint: Pair
    maps: tuple[Pair, ...]
    last: Pair
    embedding: Pair


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
    """A distillation method: its terms (built for a pair of models) and the cross-entropy weight beside them.

    Attributes:
        name: registry key.
        title: the name the papers use.
        family: ``"baseline"``, ``"logit"``, ``"feature"``, ``"relation"`` or ``"contrastive"``.
        cite: the BibTeX key of the paper.
        ce_weight: weight of the cross-entropy with the labels.
        build: ``build(layers) -> terms``.
        recipe: the hyper-parameters, for tables.
    """

    name: str
    title: str
    family: str
    cite: str
    ce_weight: float
    build: Callable[[Layers], list[Term]]
    recipe: dict[str, float] = field(default_factory=dict)


def _attention_terms(layers: Layers) -> list[Term]:
    if not layers.maps:
        raise NotApplicable(
            "attention transfer needs feature maps of the same spatial size in both models; "
            "this pair has none (an MLP has no spatial maps)"
        )
    return [
        FeatureTerm(s, t, at_loss, weight=1000.0, adapter=None, name=f"at{i}")
        for i, (s, t) in enumerate(layers.maps, start=1)
    ]


def _method(name: str, title: str, family: str, cite: str, ce_weight: float, build, **recipe: float) -> Method:
    return Method(name, title, family, cite, ce_weight, build, dict(recipe))


#: Every method in kdlib, with the reference recipes. Weights: RepDistiller's table runs for the feature,
#: relation and contrastive methods (CE 1 + beta * loss), mdistiller for DKD and DIST, the logit-standardization
#: code for "kd_ls" and "dkd_ls". DIST's CIFAR values (beta = gamma = 2, T = 4) come from re-implementations.
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        _method("student", "Student alone (cross-entropy)", "baseline", "hinton2015distilling", 1.0, lambda l: []),
        _method("kd", "KD", "logit", "hinton2015distilling", 0.1,
                lambda l: [LogitTerm(kd_loss, weight=0.9, temperature=4.0)], weight=0.9, T=4.0),
        _method("mse", "Logit matching (MSE)", "logit", "ba2014deep", 0.1,
                lambda l: [LogitTerm(mse_logit_loss, weight=0.9)], weight=0.9),
        _method("dkd", "DKD", "logit", "zhao2022decoupled", 1.0,
                lambda l: [LogitTerm(dkd_loss, targets=True, alpha=1.0, beta=8.0, temperature=4.0, warmup=20 / 240)],
                alpha=1.0, beta=8.0, T=4.0),
        _method("dist", "DIST", "logit", "huang2022knowledge", 1.0,
                lambda l: [LogitTerm(dist_loss, beta=2.0, gamma=2.0, temperature=4.0)], beta=2.0, gamma=2.0, T=4.0),
        _method("kd_ls", "KD + logit standardization", "logit", "sun2024logit", 0.1,
                lambda l: [LogitTerm(kd_loss, weight=9.0, temperature=2.0, standardize=True, name="kd_ls")],
                weight=9.0, T=2.0),
        _method("dkd_ls", "DKD + logit standardization", "logit", "sun2024logit", 1.0,
                lambda l: [LogitTerm(dkd_loss, targets=True, alpha=1.0, beta=8.0, temperature=4.0, standardize=True,
                                     warmup=20 / 240, name="dkd_ls")],
                alpha=1.0, beta=8.0, T=4.0),
        _method("fitnet", "FitNets", "feature", "romero2015fitnets", 1.0,
                lambda l: [FeatureTerm(*l.hint, fitnet_loss, weight=100.0)], weight=100.0),
        _method("at", "Attention transfer", "feature", "zagoruyko2017attention", 1.0, _attention_terms, weight=1000.0),
        _method("sp", "Similarity-preserving", "relation", "tung2019similarity", 1.0,
                lambda l: [FeatureTerm(*l.last, sp_loss, weight=3000.0, adapter=None)], weight=3000.0),
        _method("rkd", "RKD (distance + angle)", "relation", "park2019relational", 1.0,
                lambda l: [FeatureTerm(*l.embedding, rkd_loss, weight=1.0, adapter=None)],
                weight=1.0, distance=25.0, angle=50.0),
        _method("pkt", "PKT", "relation", "passalis2018learning", 1.0,
                lambda l: [FeatureTerm(*l.embedding, pkt_loss, weight=30000.0, adapter=None)], weight=30000.0),
        _method("crd", "CRD", "contrastive", "tian2020contrastive", 1.0,
                lambda l: [CRDTerm(*l.embedding, weight=0.8, shared_negatives=True)], weight=0.8),
    ]
}


def method_terms(
    name: str,
    student: nn.Module,
    teacher: nn.Module,
    input_shape: Sequence[int],
    layers: Layers | None = None,
) -> tuple[list[Term], float]:
    """The terms and the cross-entropy weight of method ``name`` for this pair of models.

    Raises:
        ValueError: an unknown method (the message lists them).
        NotApplicable: the method cannot use this pair (see :func:`default_layers`).
    """
    method = _lookup(name)
    if method.family in ("baseline", "logit"):
        return method.build(layers), method.ce_weight  # type: ignore[arg-type]
    return method.build(layers or default_layers(student, teacher, input_shape)), method.ce_weight


def distill_with(
    name: str,
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    *,
    layers: Layers | None = None,
    cache_teacher: bool | None = None,
    **fit_kwargs,
) -> FitResult:
    """Train ``student`` with method ``name`` (``"student"`` trains it alone, without the teacher).

    ``fit_kwargs`` go to :func:`kdlib.train.fit` (epochs/steps, lr, seed, device, ...). The result's
    ``config["method"]`` records the method's name.
    """
    terms, ce_weight = method_terms(name, student, teacher, data.input_shape, layers)
    if not terms:
        result = fit(student, data, **fit_kwargs)
    else:
        result = Distiller(student, teacher, terms, ce_weight=ce_weight, cache_teacher=cache_teacher).fit(
            data, **fit_kwargs
        )
    result.config["method"] = name
    return result


def _lookup(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]

