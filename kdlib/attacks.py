r"""Adversarial examples (FGSM, PGD) and defensive distillation, to measure robustness honestly.

Attacks (white-box, :math:`L_\infty`):

* :func:`fgsm`, Goodfellow, Shlens & Szegedy (ICLR 2015), "Explaining and Harnessing Adversarial Examples":
  :math:`x' = x + \epsilon\,\mathrm{sign}(\nabla_x L(f(x), y))`.
* :func:`pgd`, Madry et al. (ICLR 2018), "Towards Deep Learning Models Resistant to Adversarial Attacks":
  iterated FGSM steps of size :math:`\alpha`, each projected back onto the ball
  :math:`\{x' : \|x' - x\|_\infty \le \epsilon\}` (and the valid input range), from a random start in the ball.

Two losses :math:`L` to ascend (``loss=``):

* ``"ce"``: cross-entropy of the softmax, :math:`-\log \mathrm{softmax}(z)_y`. Its gradient w.r.t. the logits is
  :math:`p - e_y`, which is exactly zero in float32 once the softmax saturates (:math:`p_y` rounds to 1). That is
  what defensive distillation does at deployment, and why CE attacks then *look* defeated.
* ``"logit_margin"``: Carlini & Wagner (S&P 2017), "Towards Evaluating the Robustness of Neural Networks", their
  :math:`f_6` on the logits, :math:`\max_{j \ne y} z_j - z_y`. No softmax, so scaling the logits by any
  temperature does not change the sign of its gradient: it sees through the masking. Restoring the training
  temperature (:func:`with_temperature`) un-saturates the softmax and un-masks the CE gradient too.

Input range (``clamp=``): kdlib inputs are *normalized*, ``(pixel - mean) / std`` (:mod:`kdlib.data`), so the
valid range of pixels [0, 1] is ``((0 - mean) / std, (1 - mean) / std)`` and a budget of ``eps`` pixel units is
``eps / std`` normalized units; :func:`normalized_range` and :func:`normalized_eps` compute both from a Dataset.
``eps`` and ``step_size`` are in the units of ``x`` as the model sees it.

Attacks run the model in eval mode (its modes restored afterwards), differentiate w.r.t. the input only
(:func:`torch.autograd.grad`; no ``.grad`` ever lands on the model's parameters), and follow the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.data import Dataset, Split
from kdlib.device import module_device
from kdlib.distill import distill
from kdlib.evaluation import eval_mode
from kdlib.losses import check_temperature
from kdlib.train import FitResult, fit

__all__ = [
    "LOSSES", "DefensiveDistillation", "Tempered", "attack_success", "defensive_distillation", "fgsm",
    "normalized_eps", "normalized_range", "pgd", "robust_accuracy", "with_temperature",
]

LOSSES = ("ce", "logit_margin")
Clamp = tuple[float | torch.Tensor, float | torch.Tensor] | None
#: ``attack(model, x, y) -> x_adv``, e.g. ``functools.partial(pgd, eps=0.3, clamp=...)``.
Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class Tempered(nn.Module):
    """``model`` with its logits divided by ``temperature``: :math:`z / T` (parameters shared, not copied)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = check_temperature(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def with_temperature(model: nn.Module, temperature: float) -> Tempered:
    """A view of ``model`` whose logits are divided by ``temperature`` (argmax, hence accuracy, unchanged).

    Used to train at temperature :math:`T` (cross-entropy of :math:`\\mathrm{softmax}(z/T)`) and to attack a
    defensively distilled model at its training temperature, which un-saturates its softmax.
    """
    return Tempered(model, temperature)


def normalized_range(data: Dataset) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """The pixel range [0, 1] in the normalized units of ``data``'s inputs: ``((0 - mean)/std, (1 - mean)/std)``;
    floats for one channel, ``(C, 1, 1)`` tensors on the data's device for several."""
    if not data.mean or not data.std:
        raise ValueError(f"{data.name} has no mean/std to map the pixel range with")
    low = [-m / s for m, s in zip(data.mean, data.std)]
    high = [(1 - m) / s for m, s in zip(data.mean, data.std)]
    if len(low) == 1:
        return low[0], high[0]
    return tuple(torch.tensor(v, device=data.device).view(-1, 1, 1) for v in (low, high))  # type: ignore[return-value]


def normalized_eps(data: Dataset, eps: float) -> float:
    """``eps`` pixel units as normalized units, ``eps / std`` (one channel; several need one std, not a list)."""
    if len(data.std) != 1:
        raise ValueError(f"{data.name} has {len(data.std)} channel stds; an L-inf ball of one eps needs one std")
    return float(eps) / data.std[0]


def _check_eps(eps: float) -> float:
    e = float(eps)
    if not (math.isfinite(e) and e >= 0):
        raise ValueError(f"eps is the L-inf budget and must be a finite number >= 0, got {eps!r}")
    return e


def _check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def _prepare(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (float) and ``y`` (int64 ``(N,)``) checked and moved to the model's device."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating-point inputs (normalized), got {x.dtype}")
    if y.dim() != 1 or y.dtype != torch.int64:
        raise ValueError(f"y must be int64 class indices of shape (N,), got {y.dtype} of shape {tuple(y.shape)}")
    if x.dim() < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0] if x.dim() else 0} samples but y has {y.shape[0]}; they must match")
    device = module_device(model)
    return x.detach().to(device), y.to(device)


def _logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return (N, C) logits; for inputs {tuple(x.shape)} it returned {shape}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= out.shape[1]):
        raise ValueError(f"y must lie in [0, {out.shape[1]}) for a model with {out.shape[1]} classes")
    return out.float()


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    r"""Per-sample loss an attack ascends, ``(N,)``: ``"ce"`` :math:`-\log\mathrm{softmax}(z)_y`, or
    ``"logit_margin"`` :math:`\max_{j\ne y} z_j - z_y` (C&W :math:`f_6`, > 0 exactly when misclassified)."""
    if _check_loss(loss) == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(1) - true


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """:math:`\\nabla_x \\sum_n L_n`: the sum, not the mean, so one sample's gradient does not shrink with N."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        total = attack_loss(_logits(model, x, y), y, loss).sum()
        (grad,) = torch.autograd.grad(total, x)
    return grad


def _clamp(x: torch.Tensor, clamp: Clamp) -> torch.Tensor:
    if clamp is None:
        return x
    low, high = clamp
    if isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
        return torch.max(torch.min(x, torch.as_tensor(high, device=x.device)), torch.as_tensor(low, device=x.device))
    return x.clamp(float(low), float(high))


def _check_clamp(clamp: Clamp) -> None:
    if clamp is not None and (len(clamp) != 2 or bool(torch.any(torch.as_tensor(clamp[0]) > torch.as_tensor(clamp[1])))):
        raise ValueError(f"clamp must be a (low, high) pair with low <= high, got {clamp!r}")


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, loss: str = "ce",
         clamp: Clamp = None) -> torch.Tensor:
    r"""Fast Gradient Sign Method (Goodfellow et al., 2015): :math:`x' = \mathrm{clip}(x + \epsilon\,
    \mathrm{sign}(\nabla_x L(f(x), y)))`.

    Args:
        model: a classifier returning ``(N, C)`` logits; run in eval mode, its modes restored, no parameter grads.
        x: inputs ``(N, ...)`` as the model takes them (normalized); moved to the model's device.
        y: true labels ``(N,)``, int64.
        eps: :math:`L_\infty` budget :math:`\ge 0`, in the units of ``x`` (see :func:`normalized_eps`).
        loss: ``"ce"`` or ``"logit_margin"`` (see the module docstring).
        clamp: optional ``(low, high)`` valid input range (floats or broadcastable tensors), applied last:
            for kdlib data, :func:`normalized_range` (pixels [0, 1] in normalized units).

    Returns:
        Adversarial inputs, detached, on the model's device. Where the gradient is exactly 0 (a saturated
        softmax), ``sign`` is 0 and the input is left unchanged.
    """
    e, loss = _check_eps(eps), _check_loss(loss)
    _check_clamp(clamp)
    x, y = _prepare(model, x, y)
    with eval_mode(model):
        grad = _input_gradient(model, x, y, loss)
    return _clamp(x + e * grad.sign(), clamp).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True, loss: str = "ce", clamp: Clamp = None,
        generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Projected Gradient Descent on the loss (Madry et al., 2018), :math:`L_\infty`.

    .. math::

        \begin{aligned}
        x^{0} &= x + \delta,\quad \delta \sim U[-\epsilon, \epsilon]^d \text{ (or 0)}, \\
        x^{k+1} &= \mathrm{clip}\Big(\Pi_{B_\infty(x,\epsilon)}\big(x^k + \alpha\,\mathrm{sign}(\nabla_x L(f(x^k), y))
            \big)\Big)
        \end{aligned}

    where :math:`\Pi` clips each coordinate to :math:`[x - \epsilon, x + \epsilon]` and clip to ``clamp``; every
    iterate lies in both. ``steps=1, random_start=False, step_size=eps`` is exactly :func:`fgsm`.

    Args:
        model, x, y, eps, loss, clamp: as for :func:`fgsm`.
        steps: iterations :math:`\ge 1`.
        step_size: :math:`\alpha > 0`; default :math:`2.5\,\epsilon / \text{steps}` (Madry et al.).
        random_start: start from a uniform point of the ball (then clipped to ``clamp``).
        generator: RNG of the random start (on any device; the noise is moved to the model's).

    Returns:
        Adversarial inputs, detached, on the model's device (the last iterate).
    """
    e, steps, alpha = _check_pgd(eps, steps, step_size, clamp)
    loss = _check_loss(loss)
    x, y = _prepare(model, x, y)
    if e == 0:
        return _clamp(x.clone(), clamp)
    return _ascend(model, x, lambda z: _input_gradient(model, z, y, loss), e, steps, alpha, clamp,
                   random_start=random_start, generator=generator)


def _check_pgd(eps: float, steps: int, step_size: float | None, clamp: Clamp, *,
               min_steps: int = 1) -> tuple[float, int, float]:
    r"""PGD's settings checked: ``(eps, steps, step size)``, the step size defaulting to :math:`2.5\,\epsilon/\text{steps}`."""
    e = _check_eps(eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < min_steps:
        raise ValueError(f"steps must be an int >= {min_steps}, got {steps!r}")
    if step_size is not None and not (math.isfinite(float(step_size)) and float(step_size) > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
    _check_clamp(clamp)
    return e, steps, 2.5 * e / max(steps, 1) if step_size is None else float(step_size)


def _ascend(model: nn.Module, x: torch.Tensor, gradient: Callable[[torch.Tensor], torch.Tensor], eps: float,
            steps: int, alpha: float, clamp: Clamp, *, random_start: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The PGD iterations from ``x`` (on the model's device) up the input ``gradient(x')``, the model in eval mode:
    signed steps of ``alpha``, each projected onto the ``eps`` ball and ``clamp``."""
    low, high = x - eps, x + eps
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype,
                           device=generator.device if generator is not None else x.device)
        x_adv = _clamp(x + (2 * noise.to(x.device) - 1) * eps, clamp)
    with eval_mode(model):
        for _ in range(steps):
            step = x_adv + alpha * gradient(x_adv).sign()
            x_adv = _clamp(torch.min(torch.max(step, low), high), clamp).detach()
    return x_adv


@torch.no_grad()
def attack_success(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, *,
                   x_clean: torch.Tensor | None = None) -> float:
    """Success rate of an attack: the share of ``x_adv`` that ``model`` misclassifies, in [0, 1].

    With ``x_clean``, only over the samples whose clean input the model classifies correctly (the usual
    definition: an attack cannot "succeed" on a sample already wrong); NaN if there are none.
    """
    x_adv, y = _prepare(model, x_adv, y)
    with eval_mode(model):
        wrong = _logits(model, x_adv, y).argmax(1) != y
        if x_clean is not None:
            x_clean, _ = _prepare(model, x_clean, y)
            kept = _logits(model, x_clean, y).argmax(1) == y
            return float(wrong[kept].float().mean()) if bool(kept.any()) else math.nan
    return float(wrong.float().mean())


def robust_accuracy(model: nn.Module, data: Split | Dataset, attack: Attack, batch_size: int = 500) -> dict[str, float]:
    """Clean and adversarial accuracy of ``model`` on a split (a Dataset: its test split), batch by batch.

    ``attack(model, x, y)`` makes each batch's adversarial inputs (e.g. ``functools.partial(pgd, eps=...)``).

    Returns:
        ``clean_accuracy``: share of all samples classified correctly;
        ``robust_accuracy``: share of ALL samples classified correctly after the attack (the usual headline;
        a sample wrong on its clean input counts as wrong even if the attack changed it);
        ``robust_accuracy_on_correct``: share of the clean-correct samples still correct after the attack
        (``1 - attack_success_rate``);
        ``attack_success_rate``; ``n``: samples.
    """
    split = data.test if isinstance(data, Dataset) else data
    if not isinstance(split, Split):
        raise TypeError(f"data must be a kdlib Split or Dataset, got {type(data).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device = module_device(model)
    clean = robust = both = 0
    for start in range(0, len(split), batch_size):
        x, y = split.take(slice(start, start + batch_size)).to(device), split.y[start:start + batch_size].to(device)
        x_adv = attack(model, x, y)
        with torch.no_grad(), eval_mode(model):
            ok = _logits(model, x, y).argmax(1) == y
            ok_adv = _logits(model, x_adv, y).argmax(1) == y
        clean, robust, both = clean + int(ok.sum()), robust + int(ok_adv.sum()), both + int((ok & ok_adv).sum())
    n = len(split)
    on_correct = both / clean if clean else math.nan
    return {"clean_accuracy": clean / n, "robust_accuracy": both / n, "robust_accuracy_on_correct": on_correct,
            "attack_success_rate": 1 - on_correct, "n": n}


class DefensiveDistillation(NamedTuple):
    """What :func:`defensive_distillation` returns: the student (deploy it as is, at T = 1) and both fits."""

    student: nn.Module
    teacher_result: FitResult
    student_result: FitResult
    temperature: float


def defensive_distillation(teacher: nn.Module, student: nn.Module, data: Any, *, temperature: float = 20.0,
                           teacher_fit: Mapping[str, Any] | None = None, **fit_kwargs: Any) -> DefensiveDistillation:
    r"""Defensive distillation (Papernot et al., S&P 2016, "Distillation as a Defense to Adversarial Perturbations
    against Deep Neural Networks").

    1. The teacher is trained with cross-entropy of :math:`\mathrm{softmax}(z_t / T)` (:func:`kdlib.train.fit` on
       :func:`with_temperature`).
    2. The student is trained on the teacher's soft labels :math:`\mathrm{softmax}(z_t/T)` at the same :math:`T`,
       with no hard labels (:func:`kdlib.distill.distill` with ``alpha=1``: :math:`T^2\,\mathrm{KL}(p^T_t\|p^T_s)`,
       Papernot's soft-label cross-entropy up to a constant).
    3. The student is deployed at :math:`T = 1`, its logits unchanged: they are about :math:`T` times larger than
       a normally trained model's, so its softmax saturates and the CE gradient vanishes in float32. Carlini &
       Wagner (2017) showed this masks gradients rather than adding robustness: attack with
       ``loss="logit_margin"`` or through ``with_temperature(student, T)``.

    Args:
        teacher, student: untrained classifiers (both trained in place).
        data: anything :func:`~kdlib.train.fit` takes.
        temperature: :math:`T` of both trainings (Papernot et al. use up to 100; 20 to 40 is typical).
        teacher_fit: settings for the teacher's fit that differ from ``fit_kwargs`` (e.g. ``{"epochs": 10}``).
        **fit_kwargs: passed to both fits (epochs/steps, lr, seed, device, ...). Fitting at temperature
            :math:`T` asks for logits about :math:`T` times larger, which Adam reaches slowly at ``lr=1e-3``: a
            larger ``lr`` (1e-2 for T = 20 on small models) or more epochs are needed.

    Returns:
        A :class:`DefensiveDistillation`; its ``student`` is the model to deploy, at :math:`T = 1`, as is.
    """
    t = check_temperature(temperature)
    teacher_result = fit(with_temperature(teacher, t), data, **{**fit_kwargs, **dict(teacher_fit or {})})
    student_result = distill(student, teacher, data, temperature=t, alpha=1.0, **fit_kwargs)
    return DefensiveDistillation(student, teacher_result, student_result, t)
