"""When to prune: one shot, iterative prune → fine-tune rounds, and gradual (AGP) pruning during training.

Every fine-tune goes through the one training loop: :func:`fine_tune` calls :func:`kdlib.train.fit` (plain
cross-entropy) or :func:`kdlib.distill.distill` (KD from a teacher, typically the dense model). The masks of
:mod:`torch.nn.utils.prune` stay applied during training (a forward pre-hook recomputes
``weight = weight_orig * weight_mask``, and the gradient reaching ``weight_orig`` is zero where the mask is),
so pruned weights stay zero. ``kdlib.train`` is not modified: gradual pruning alternates short ``fit`` calls
with pruning steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch import nn

from kdlib.data import Dataset
from kdlib.prune.unstructured import check_sparsity, copy_model, prune_global, prune_layerwise, sparsity_report
from kdlib.train import FitResult, evaluate, fit

Scope = Literal["global", "layerwise"]
Teacher = nn.Module | Literal["dense"] | None


def _pruner(scope: str) -> Callable[..., nn.Module]:
    if scope == "global":
        return prune_global
    if scope == "layerwise":
        return prune_layerwise
    raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")


def overall_sparsity(model: nn.Module, layers: Sequence[str] | None = None) -> float:
    """Fraction of zeros over all prunable weights (the ``overall`` row of :func:`sparsity_report`)."""
    return float(sparsity_report(model, layers)[-1]["sparsity"])


def fine_tune(model: nn.Module, data: Dataset, teacher: nn.Module | None = None, **fit_kwargs: Any) -> FitResult:
    """Fine-tune a (pruned) model with the one training loop; masks stay applied.

    ``teacher=None`` calls :func:`kdlib.train.fit` (cross-entropy); a teacher calls
    :func:`kdlib.distill.distill` (Hinton KD, :math:`(1-\\alpha)\\,CE + \\alpha T^2 KL`), so ``temperature=`` and
    ``alpha=`` may be given with the other ``fit`` keywords (``epochs=``/``steps=``, ``lr=``, ...).
    """
    if teacher is None:
        return fit(model, data, **fit_kwargs)
    from kdlib.distill import distill

    return distill(model, teacher, data, **fit_kwargs)


def _resolve_teacher(model: nn.Module, teacher: Teacher) -> nn.Module | None:
    if isinstance(teacher, str):
        if teacher != "dense":
            raise ValueError(f"teacher must be a model, 'dense' or None, got {teacher!r}")
        return copy_model(model)
    return teacher


def round_sparsities(target: float, rounds: int, initial: float = 0.0) -> list[float]:
    r"""Per-round targets when each round removes the same fraction of the weights that remain.

    :math:`s_r = 1 - (1 - s_0)\left(\frac{1 - s}{1 - s_0}\right)^{r/R}`, ``r = 1..R`` (Han et al., 2015;
    Frankle & Carbin, 2019 prune a fixed fraction of the surviving weights per round); ``s_R = target``.
    """
    check_sparsity(target)
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds/steps must be a positive integer, got {rounds!r}")
    keep = (1.0 - target) / (1.0 - initial)
    return [1.0 - (1.0 - initial) * keep ** (r / rounds) for r in range(1, rounds)] + [float(target)]


def iterative(
    model: nn.Module,
    data: Dataset,
    target: float,
    *,
    steps: int = 3,
    fine_tune: dict[str, Any] | None = None,
    scope: Scope = "global",
    teacher: Teacher = None,
) -> list[dict[str, float]]:
    """Iterative pruning: ``steps`` rounds of prune → fine-tune up to ``target`` sparsity (in place).

    Round targets follow :func:`round_sparsities` (the same fraction of the remaining weights per round;
    Han et al., 2015). ``fine_tune`` holds the keywords of :func:`fine_tune` (those of
    :func:`kdlib.train.fit`, e.g. ``{"epochs": 2, "lr": 1e-3}``, plus ``temperature``/``alpha`` with a
    teacher); ``None`` skips fine-tuning. ``teacher="dense"`` distils from a frozen copy of the model as it
    was before pruning (or pass any model).

    Returns rows ``round``, ``sparsity`` (overall, measured), ``pruned_accuracy`` (before fine-tuning) and
    ``accuracy`` (after), test accuracies from :func:`kdlib.train.evaluate`.
    """
    prune_fn = _pruner(scope)
    targets = round_sparsities(target, steps, 0.0)
    if fine_tune is not None and "epochs" not in fine_tune and "steps" not in fine_tune:
        raise TypeError("fine_tune must give the length of each fine-tune: {'epochs': n} or {'steps': n}")
    dense = _resolve_teacher(model, teacher)
    rows = []
    for r, s in enumerate(targets, start=1):
        prune_fn(model, s)
        pruned = evaluate(model, data)["accuracy"]
        accuracy = pruned if fine_tune is None else _fine_tune(model, data, dense, **fine_tune).final_accuracy
        rows.append(dict(round=r, sparsity=overall_sparsity(model), pruned_accuracy=pruned, accuracy=accuracy))
    return rows


def one_shot(
    model: nn.Module,
    data: Dataset,
    sparsity: float,
    *,
    fine_tune: dict[str, Any] | None = None,
    scope: Scope = "global",
    teacher: Teacher = None,
) -> list[dict[str, float]]:
    """One-shot pruning: prune once to ``sparsity``, then fine-tune with ``fine_tune`` keywords (if given).

    :func:`iterative` with one round; returns its single row.
    """
    return iterative(model, data, sparsity, steps=1, fine_tune=fine_tune, scope=scope, teacher=teacher)


def agp_sparsity(
    step: int, final: float, *, initial: float = 0.0, start: int = 0, num_prunes: int, interval: int = 1
) -> float:
    r"""Sparsity at training step ``t`` under automated gradual pruning (Zhu & Gupta, 2017, "To prune, or not
    to prune").

    .. math:: s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3,
              \quad t \in [t_0,\ t_0 + n\Delta t]

    with :math:`s_i` = ``initial``, :math:`s_f` = ``final``, :math:`t_0` = ``start``, :math:`n` =
    ``num_prunes`` pruning steps every :math:`\Delta t` = ``interval`` training steps. Before :math:`t_0` it
    is :math:`s_i`, after the end :math:`s_f`. Pruning is fast at first and slows as fewer weights remain.
    """
    s_f, s_i = check_sparsity(final), check_sparsity(initial)
    if s_i > s_f:
        raise ValueError(f"initial sparsity {initial} exceeds the final {final}")
    if num_prunes < 1 or interval < 1:
        raise ValueError(f"num_prunes and interval must be >= 1, got {num_prunes} and {interval}")
    progress = min(max((step - start) / (num_prunes * interval), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def gradual(
    model: nn.Module,
    data: Dataset,
    final: float,
    *,
    num_prunes: int,
    interval: int,
    initial: float = 0.0,
    recovery_steps: int = 0,
    scope: Scope = "global",
    teacher: Teacher = None,
    seed: int = 0,
    **fit_kwargs: Any,
) -> list[dict[str, float]]:
    """Gradual (AGP) pruning during training, with the unmodified :func:`kdlib.train.fit` (in place).

    At pruning step ``j = 0..num_prunes`` the model is pruned to :func:`agp_sparsity` of training step
    ``j * interval`` (``start = 0``) and then trained for ``interval`` optimizer steps (the last chunk for
    ``recovery_steps``, which may be 0). Each chunk is one ``fit`` call with ``seed + j``, so the optimizer
    state and learning-rate schedule restart per chunk: pass ``schedule="constant"`` for the usual AGP setup
    at a fixed rate. ``fit_kwargs`` must not contain ``epochs``/``steps``.

    Returns rows ``prune_step``, ``train_step`` (optimizer steps done before this pruning step),
    ``sparsity`` (measured) and ``accuracy`` (after that chunk's training).
    """
    if "epochs" in fit_kwargs or "steps" in fit_kwargs:
        raise TypeError("gradual sets the training length itself (interval=, num_prunes=, recovery_steps=)")
    prune_fn = _pruner(scope)
    dense = _resolve_teacher(model, teacher)
    rows = []
    for j in range(num_prunes + 1):
        prune_fn(model, agp_sparsity(j * interval, final, initial=initial, num_prunes=num_prunes, interval=interval))
        chunk = interval if j < num_prunes else recovery_steps
        if chunk > 0:
            accuracy = _fine_tune(model, data, dense, steps=chunk, seed=seed + j, **fit_kwargs).final_accuracy
        else:
            accuracy = evaluate(model, data)["accuracy"]
        rows.append(dict(prune_step=j, train_step=j * interval, sparsity=overall_sparsity(model), accuracy=accuracy))
    return rows

"""Alias of :func:`fine_tune` (``iterative``/``one_shot`` use ``fine_tune=`` for its keywords)."""


_fine_tune = fine_tune  # for iterative(), whose `fine_tune=` argument (the fit settings) shadows the function
