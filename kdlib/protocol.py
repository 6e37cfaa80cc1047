"""The experimental protocol of the book, as functions: validation split, equal tuning budgets, paired tests.

A claim that method A beats method B is only as good as the way it was measured. The book measures every
comparison the same way, and these helpers are that way, for readers to reuse:

1. **Choose hyper-parameters on a validation split** carved from the training data (:func:`holdout`); the test
   set is touched once, for the reported numbers.
2. **Give every arm the same tuning budget** (:func:`grid`, :func:`tune`): the same number of configurations and
   seeds, whether the arm is the student trained alone (learning rate, weight decay, label smoothing) or a
   distillation method (temperature and weight). An untuned baseline makes any method look good.
3. **Pair the seeds and correct for many comparisons** (:func:`paired_test`, :func:`holm`, :func:`compare`): arms
   that share a seed share the initialization and data order, so their difference per seed removes most of
   the noise; a table of ten comparisons at the 5 % level has a 40 % chance of one false "better", which the
   Holm-Bonferroni step-down procedure (Holm, 1979) brings back to 5 %.

The training budget must also be long enough that every arm has converged: show it with a curve over budgets
(chapter 3 does), not with one run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kdlib.data import UNLABELED, Dataset
from kdlib.repro import holm, paired_test

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TuneResult", "compare", "contrasts", "grid", "holdout", "holm", "paired_test", "report", "tune"]  # holm, paired_test: from kdlib.repro


def holdout(data: Dataset, size: int | float = 0.1, *, seed: int = 0) -> Dataset:
    """``data`` with its test split replaced by a validation split carved from its training split.

    The validation samples are drawn per class (stratified), so every class keeps its share, and removed from
    the training split; unlabeled transfer-set samples (:data:`~kdlib.data.UNLABELED`) always stay in training.
    Train on the result and read its ``test`` accuracy to choose hyper-parameters; then train on ``data`` itself
    with the chosen ones and report its test accuracy once.

    Args:
        data: the dataset; its augmentation and everything else are kept.
        size: validation samples, as a count (int) or a fraction of the labeled training samples (float in (0, 1)).
        seed: which samples are held out.

    Returns:
        A :class:`~kdlib.data.Dataset` named ``"<name> (validation)"``.
    """
    labeled = (data.train.y != UNLABELED).nonzero().squeeze(1).cpu()
    n_labeled = labeled.numel()
    if isinstance(size, float) and not isinstance(size, bool):
        if not 0.0 < size < 1.0:
            raise ValueError(f"a fractional validation size must lie in (0, 1), got {size}")
        count = round(size * n_labeled)
    elif isinstance(size, int) and not isinstance(size, bool):
        count = size
    else:
        raise TypeError(f"size must be an int (samples) or a float (fraction), got {type(size).__name__}")
    if not 1 <= count < n_labeled:
        raise ValueError(f"the validation split needs between 1 and {n_labeled - 1} samples, got {count}")
    generator = torch.Generator().manual_seed(seed)
    labels = data.train.y.cpu()[labeled]
    order = labeled[torch.randperm(n_labeled, generator=generator)]
    # Stratify: take each class's share of `count`, rounding so that the shares add up exactly.
    classes, counts = torch.unique(labels, return_counts=True)
    share = counts.double() * count / n_labeled
    take = share.floor().long()
    remainder = count - int(take.sum())
    take[torch.argsort(share - take, descending=True)[:remainder]] += 1
    chosen = torch.cat([order[data.train.y.cpu()[order] == c][:k] for c, k in zip(classes, take)])
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[chosen] = False
    device = data.device
    val_index, train_index = chosen.sort().values.to(device), keep.nonzero().squeeze(1).to(device)
    return replace(
        data,
        name=f"{data.name} (validation)",
        # replace() keeps the split's storage (uint8 pixels keep their mean/std)
        train=replace(data.train, x=data.train.x[train_index], y=data.train.y[train_index]),
        test=replace(data.train, x=data.train.x[val_index], y=data.train.y[val_index]),
    )


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the given values, as a list of configurations.

    ``grid(lr=[1e-3, 3e-3], label_smoothing=[0, 0.1])`` gives four dicts. Its length is the tuning budget.
    """
    for name, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or len(list(values)) == 0:
            raise ValueError(f"grid axis {name!r} needs a non-empty list of values, got {values!r}")
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(list(axes[n]) for n in names))]


@dataclass
class TuneResult:
    """What :func:`tune` found: the best configuration, every trial, and the budget spent.

    Attributes:
        best: the configuration with the highest mean score over the tuning seeds (the first one on ties).
        best_score: that mean score.
        trials: one dict per (configuration, seed): the configuration's values, ``seed`` and ``score``.
        budget: the number of trials, configurations × seeds, which must be equal across compared arms.
    """

    best: dict[str, Any]
    best_score: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    budget: int = 0

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.trials)


def tune(
    run: Callable[[dict[str, Any], int], float],
    configs: Sequence[Mapping[str, Any]],
    *,
    seeds: Sequence[int] = (0,),
) -> TuneResult:
    """Score every configuration on every seed with ``run(config, seed)`` and return the best by mean score.

    ``run`` trains on a validation dataset (:func:`holdout`) and returns the validation score (higher is
    better, e.g. accuracy). It must never look at the test set: that is the point of the protocol.
    """
    configs = [dict(c) for c in configs]
    if not configs:
        raise ValueError("tune needs at least one configuration")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"tune needs distinct seeds, got {seeds}")
    trials, means = [], []
    for config in configs:
        scores = []
        for seed in seeds:
            score = float(run(dict(config), seed))
            if not math.isfinite(score):
                score = -math.inf  # a diverged configuration is never the best
            scores.append(score)
            trials.append({**config, "seed": seed, "score": score})
        means.append(float(np.mean(scores)))
    best = int(np.argmax(means))
    return TuneResult(best=configs[best], best_score=means[best], trials=trials, budget=len(trials))


def compare(
    frame: pd.DataFrame,
    baseline: str,
    *,
    arm: str = "arm",
    value: str = "accuracy",
    pair_on: str | Sequence[str] = "seed",
    level: float = 0.05,
    higher_is_better: bool = True,
) -> pd.DataFrame:
    """Every arm of a tidy results frame against ``baseline``: paired differences, Holm-corrected verdicts.

    Args:
        frame: one row per run, with columns ``arm``, ``value`` and the pairing key(s) ``pair_on`` (the student
            seed, or e.g. ``["teacher_seed", "seed"]``).
        baseline: the arm everything is compared with.
        arm, value, pair_on: column names.
        level: family-wise error rate of the verdicts.
        higher_is_better: ``False`` for a value such as perplexity or error, where a negative difference is
            "better".

    Returns:
        One row per arm (the baseline first): ``mean``, ``std``, ``n``, and for the others the paired ``diff``
        with its 95 % interval ``low``/``high``, the raw ``p``, the Holm-adjusted ``p_holm`` over all arms of the
        frame, and ``verdict``: ``"better"``/``"worse"`` when ``p_holm < level``, else ``"n.s."``. Only pairs
        present in both arms count.
    """
    import pandas as pd

    keys = [pair_on] if isinstance(pair_on, str) else list(pair_on)
    missing = [c for c in (arm, value, *keys) if c not in frame.columns]
    if missing:
        raise KeyError(f"the results frame lacks the columns {missing}; it has {list(frame.columns)}")
    arms = list(dict.fromkeys(frame[arm]))
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} is not in the frame; arms: {arms}")
    base = frame[frame[arm] == baseline].set_index(keys)[value]
    rows = []
    for name in [baseline] + [a for a in arms if a != baseline]:
        runs = frame[frame[arm] == name].set_index(keys)[value]
        row: dict[str, Any] = {arm: name, "mean": runs.mean(), "std": runs.std(ddof=1), "n": len(runs)}
        if name != baseline:
            common = runs.index.intersection(base.index)
            row.update(paired_test(runs.loc[common].tolist(), base.loc[common].tolist()))
            row["n_pairs"] = row.pop("n")
            row["n"] = len(runs)
        rows.append(row)
    table = pd.DataFrame(rows).set_index(arm)
    if len(table) > 1:
        adjusted = holm(table["p"].iloc[1:].tolist())
        table["p_holm"] = [math.nan] + adjusted
        table["verdict"] = ["—"] + _verdicts(adjusted, table["diff"].iloc[1:], level, higher_is_better)
    return table


def contrasts(
    frame: pd.DataFrame,
    comparisons: Mapping[str, tuple[str, str]],
    *,
    arm: str = "arm",
    value: str = "accuracy",
    pair_on: str | Sequence[str] = "seed",
    level: float = 0.05,
) -> pd.DataFrame:
    """Chosen pairs of arms, each paired by seed, Holm-corrected together: ``{name: (arm, baseline)}``.

    Where :func:`compare` puts every arm against one baseline, this answers questions such as "the ensemble
    against the best single teacher" and "confidence against mean weighting" as one corrected family.
    Returns one row per name with the columns of :func:`compare` for ``arm`` against ``baseline``, the Holm
    ``p_holm`` over the family, ``verdict``, and ``comparison`` (``"arm − baseline"``).
    """
    import pandas as pd

    rows = []
    for name, (tested, baseline) in comparisons.items():
        pair = frame[frame[arm].isin([tested, baseline])].assign(
            **{arm: lambda f: np.where(f[arm] == tested, name, f"{name}: baseline")}
        )
        table = compare(pair, f"{name}: baseline", arm=arm, value=value, pair_on=pair_on, level=level)
        rows.append(table.loc[[name]].assign(comparison=f"{tested} − {baseline}"))
    table = pd.concat(rows)
    table["p_holm"] = holm(table["p"].tolist())
    table["verdict"] = _verdicts(table["p_holm"], table["diff"], level)
    return table


def _verdicts(p_holm: Iterable[float], diffs: Iterable[float], level: float, higher_is_better: bool = True) -> list[str]:
    """"better" or "worse" where the corrected p is below ``level`` (by the sign of the difference), else "n.s."."""
    return ["n.s." if not (q < level) else ("better" if (d > 0) == higher_is_better else "worse")
            for q, d in zip(p_holm, diffs)]


def report(table: pd.DataFrame, *, against: str = "baseline", digits: int = 2,
           metric: str = "accuracy (%)") -> pd.DataFrame:
    """A :func:`compare` table as text columns for reading: ``metric`` mean ± std, Δ with its interval, Holm p,
    verdict."""
    import pandas as pd

    f = f"{{:.{digits}f}}"
    out = pd.DataFrame(index=table.index)
    out[metric] = [f"{f.format(m)} ± {f.format(s)}" for m, s in zip(table["mean"], table["std"])]
    out[f"Δ vs {against} [95 % CI]"] = [
        "—" if pd.isna(d) else f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
        for d, lo, hi in zip(table["diff"], table["low"], table["high"])
    ]
    holm_p = table["p_holm"] if "p_holm" in table else [math.nan] * len(table)
    out["Holm p"] = ["—" if pd.isna(p) else f"{p:.2g}" for p in holm_p]
    out["verdict"] = table["verdict"] if "verdict" in table else "—"
    return out
