"""Schemes that distill along a chain of models: born-again networks, teacher assistants, Tf-KD (self),
reversed and defective-teacher KD.

Each link is :func:`kdlib.distill.distill` (the one training loop) from the previous, already-trained model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from kdlib.distill import distill
from kdlib.repro import seed_everything
from kdlib.schemes.ensemble import Ensemble
from kdlib.schemes.result import SchemeResult, named_models, prepare
from kdlib.train import fit


def distill_chain(
    models: Mapping[str, nn.Module] | Sequence[nn.Module],
    data: Any,
    *,
    train_first: bool = True,
    stage_fit: Sequence[Mapping[str, Any]] | None = None,
    roles: Sequence[str] | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    scheme: str = "chain",
    **fit_kwargs: Any,
) -> SchemeResult:
    """Train ``models[0]`` (unless ``train_first=False``), then distill each model from the one before it.

    Args:
        models: ``{name: module}`` in chain order, or a list (named ``"model 0"``, ...).
        data: the dataset; every model must predict its classes (checked before any training).
        train_first: train the first model alone with cross-entropy; ``False`` means it is already trained.
        stage_fit: per-model overrides of ``fit_kwargs`` (one mapping per model, e.g. a longer budget for
            the teacher); model ``i`` trains with ``{**fit_kwargs, **stage_fit[i]}``.
        roles: per-model roles for the result (default: teacher, assistant..., student).
        temperature, alpha: of each distillation link (:func:`~kdlib.distill.distill`).
        seed: model ``i`` is trained with seed ``seed + i`` (batch order, dropout).
        scheme: the name recorded in the result.
        **fit_kwargs: passed to :func:`~kdlib.train.fit` / :func:`~kdlib.distill.distill`.

    Returns:
        A :class:`~kdlib.schemes.SchemeResult` with one row per model, in chain order.
    """
    named = named_models(models, "model")
    names = list(named)
    if stage_fit is not None and len(stage_fit) != len(names):
        raise ValueError(f"stage_fit needs one mapping per model ({len(names)}), got {len(stage_fit)}")
    if roles is None:
        roles = ["teacher"] + ["assistant"] * (len(names) - 2) + ["student"] if len(names) > 1 else ["student"]
    if len(roles) != len(names):
        raise ValueError(f"roles needs one entry per model ({len(names)}), got {len(roles)}")
    data = prepare(named, data, fit_kwargs.pop("device", "auto"))
    result = SchemeResult(scheme, config=dict(temperature=temperature, alpha=alpha, seed=seed, train_first=train_first))
    fit_kwargs.pop("desc", None)
    for i, (name, model) in enumerate(named.items()):
        kwargs = _stage_kwargs(fit_kwargs, stage_fit[i] if stage_fit is not None else {}, seed + i)
        if i == 0:
            run = fit(model, data, desc=name, **kwargs) if train_first else None
            result.add(name, roles[i], model, data, fit=run)
            continue
        run = distill(model, named[names[i - 1]], data, temperature=temperature, alpha=alpha, desc=name, **kwargs)
        result.add(name, roles[i], model, data, teacher=names[i - 1], fit=run)
    return result


def _stage_kwargs(base: Mapping[str, Any], override: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """``base`` updated by ``override``; a budget given in ``override`` (epochs or steps) replaces the base's."""
    if "seed" in override:
        raise ValueError("stage_fit cannot set seed; the chain seeds model i with seed + i")
    if {"epochs", "steps"} & set(override):
        base = {k: v for k, v in base.items() if k not in ("epochs", "steps")}
    return {**base, **override, "seed": seed}


def born_again(
    make_model: Callable[[], nn.Module],
    data: Any,
    *,
    generations: int = 3,
    teacher: nn.Module | None = None,
    ensemble: bool = True,
    temperature: float = 1.0,
    alpha: float = 1.0,
    seed: int = 0,
    **fit_kwargs: Any,
) -> SchemeResult:
    r"""Born-again networks: generation :math:`g` is the same architecture distilled from generation :math:`g-1`.

    Generation 0 is trained alone (or is ``teacher``, already trained); generations ``1..generations`` are
    each created by ``make_model()`` right after seeding with ``seed + g`` and distilled from the previous
    one (Furlanello et al., "Born-Again Neural Networks", ICML 2018). The paper's students match the
    teacher's output only, at :math:`T = 1`, hence the defaults ``temperature=1, alpha=1``.

    With ``ensemble=True`` (and at least two generations) the result also holds ``"ensemble"``: the mean
    of the predicted probabilities of generations 1.., the paper's BAN ensemble.
    """
    if not isinstance(generations, int) or generations < 1:
        raise ValueError(f"generations must be an int >= 1, got {generations!r}")
    models: dict[str, nn.Module] = {}
    for g in range(generations + 1):
        if g == 0 and teacher is not None:
            models["generation 0"] = teacher
            continue
        seed_everything(seed + g)
        model = make_model()
        if not isinstance(model, nn.Module) or any(model is m for m in models.values()):
            raise TypeError("make_model must return a new nn.Module on every call (e.g. lambda: models.create('mlp'))")
        models[f"generation {g}"] = model
    result = distill_chain(
        models, data, train_first=teacher is None, roles=["teacher"] + ["student"] * generations,
        temperature=temperature, alpha=alpha, seed=seed, scheme="born-again", **fit_kwargs,
    )
    if ensemble and generations >= 2:
        result.add("ensemble", "ensemble", Ensemble([r.model for r in result.rows[1:]]), data)
    return result


def teacher_free_self(
    make_model: Callable[[], nn.Module],
    data: Any,
    *,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    **fit_kwargs: Any,
) -> SchemeResult:
    """Tf-KD\\ :sub:`self`: a pre-trained copy of the student is its own teacher (Yuan et al., CVPR 2020).

    It is one born-again generation, but with the usual KD objective (cross-entropy plus a softened KD
    term) rather than born-again's output matching. Rows: ``"generation 0"`` (the pre-trained copy, trained
    here unless ``teacher`` is given) and ``"generation 1"`` (the student).
    """
    return born_again(
        make_model, data, generations=1, teacher=teacher, ensemble=False, temperature=temperature, alpha=alpha,
        seed=seed, **fit_kwargs,
    )


def teacher_assistant(
    teacher: nn.Module,
    assistants: Sequence[nn.Module],
    student: nn.Module,
    data: Any,
    *,
    train_teacher: bool = False,
    assistant_fit: Mapping[str, Any] | None = None,
    teacher_fit: Mapping[str, Any] | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    **fit_kwargs: Any,
) -> SchemeResult:
    """Teacher-assistant KD: teacher → assistant(s) of intermediate size → student (Mirzadeh et al., AAAI 2020).

    A large capacity gap can make a better teacher a worse one (Cho & Hariharan, ICCV 2019); an assistant
    bridges it. ``assistants`` is ordered from large to small; the rows are named ``"teacher"``,
    ``"assistant 1"``, ... and ``"student"``. ``assistant_fit`` and ``teacher_fit`` (used when
    ``train_teacher``) override ``fit_kwargs`` for those models.
    """
    if isinstance(assistants, nn.Module):
        assistants = [assistants]
    models = {"teacher": teacher, **{f"assistant {i + 1}": a for i, a in enumerate(assistants)}, "student": student}
    stages = [dict(teacher_fit or {})] + [dict(assistant_fit or {})] * len(assistants) + [{}]
    return distill_chain(
        models, data, train_first=train_teacher, stage_fit=stages, temperature=temperature, alpha=alpha,
        seed=seed, scheme="teacher-assistant", **fit_kwargs,
    )


def reversed_kd(
    strong: nn.Module,
    weak: nn.Module,
    data: Any,
    *,
    weak_fit: Mapping[str, Any] | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    **fit_kwargs: Any,
) -> SchemeResult:
    """Reversed KD (Re-KD): train a ``weak`` model alone, then distill the ``strong`` one from it (Yuan et al. 2020).

    Rows: ``"weak teacher"`` and ``"strong student"``. ``weak_fit`` overrides ``fit_kwargs`` for the weak model.
    """
    return distill_chain(
        {"weak teacher": weak, "strong student": strong}, data, stage_fit=[dict(weak_fit or {}), {}],
        temperature=temperature, alpha=alpha, seed=seed, scheme="reversed KD", **fit_kwargs,
    )


def defective_kd(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    teacher_fit: Mapping[str, Any],
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    **fit_kwargs: Any,
) -> SchemeResult:
    """Defective-teacher KD (De-KD): distill from a *poorly trained* teacher (Yuan et al. 2020).

    ``teacher_fit`` gives the teacher's short budget (e.g. ``dict(steps=100)``); rows ``"defective teacher"``
    and ``"student"``.
    """
    return distill_chain(
        {"defective teacher": teacher, "student": student}, data, stage_fit=[dict(teacher_fit), {}],
        temperature=temperature, alpha=alpha, seed=seed, scheme="defective KD", **fit_kwargs,
    )
