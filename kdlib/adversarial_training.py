r"""Adversarial training and adversarially robust distillation, as loss terms of the one training loop.

Both are :class:`kdlib.train.LossTerm` s for :func:`kdlib.train.fit`: each step they craft a PGD example
(:func:`kdlib.attacks.pgd`) against the model being trained and return a loss on it; fit adds
``weight * term`` to its own clean cross-entropy weighted by ``ce_weight``.

* :class:`AdversarialTraining`, Madry et al. (ICLR 2018), "Towards Deep Learning Models Resistant to Adversarial
  Attacks": :math:`\min_\theta \mathbb{E}\,\max_{\|\delta\|_\infty\le\epsilon} \mathrm{CE}(f_\theta(x+\delta), y)`,
  the inner maximum approximated by PGD. The term returns :math:`\mathrm{CE}(f_\theta(x'), y)`; pure adversarial
  training is ``fit(model, data, ce_weight=0, loss_terms=[AdversarialTraining(model, eps, clamp=...)])``, and
  ``ce_weight=1`` gives Goodfellow et al.'s half-clean, half-adversarial mixture (weights 1 and 1).
* :class:`AdversariallyRobustDistillation` (ARD), Goldblum, Fowl, Feizi & Goldstein (AAAI 2020):

  .. math::

      \begin{aligned}
      \mathcal{L} &= \alpha\, T^2\, \mathrm{KL}\big(\mathrm{softmax}(t(x)/T) \,\|\, \mathrm{softmax}(s(x')/T)\big) \\
                  &\quad + (1-\alpha)\, \mathrm{CE}(s(x), y), \\
      x' &\approx \arg\max_{\|x'-x\|_\infty \le \epsilon} \mathrm{CE}(s(x'), y) \quad \text{(PGD, random start)},
      \end{aligned}

  with the teacher robust, frozen and fed the *clean* input. Checked against the authors' code
  (github.com/goldblum/AdversariallyRobustDistillation, ``main.py``, 2019): the student's example is crafted by
  PGD on the student's cross-entropy with the labels (10 steps of 2/255 from a uniform start, eps 8/255 on
  CIFAR-10), and the defaults are ``T = 30``, ``alpha = 1`` (no clean CE at all), SGD lr 0.1. Their KL is
  ``nn.KLDivLoss()`` with its default mean over the N×C elements, i.e. ours divided by the C classes: the same
  direction, a C-times smaller step (absorb it in the learning rate). ``attack="kl"`` crafts instead by PGD on
  :math:`\mathrm{KL}(\mathrm{softmax}(t(x)) \,\|\, \mathrm{softmax}(s(x')))`, the inner maximization of RSLAD
  (Zi et al., ICCV 2021; ``rslad_loss.py`` of github.com/zibojia/RSLAD), a common variant.

The term returns the :math:`T^2\,\mathrm{KL}` part and has ``weight = alpha``; the :math:`(1-\alpha)` CE on the
clean input is fit's own, from the forward pass it already makes: ``fit(student, data, ce_weight=1 - alpha,
loss_terms=[ard])``, which :func:`robust_distill` writes for you.

Batch-norm mode: the example is crafted with the model in eval mode (running statistics, none updated), as
:func:`kdlib.attacks.pgd` always does, so crafting neither depends on the rest of the batch nor pollutes the
running statistics with the PGD iterates; the loss on :math:`x'` is then computed in train mode, so with BatchNorm
the running statistics see the clean batch (fit's pass) and the adversarial one. The authors of ARD craft in train
mode instead; for models without BatchNorm (LeNet-5) the two are the same. ``steps=0`` or ``eps=0`` means no
attack: :math:`x' = x` and the terms reuse fit's logits, so they equal clean CE and clean KD exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.attacks import Clamp, _ascend, _check_pgd, pgd
from kdlib.data import Batch
from kdlib.device import module_device
from kdlib.evaluation import eval_mode
from kdlib.losses import check_temperature, kd_loss
from kdlib.train import FitResult, fit

__all__ = ["ATTACKS", "AdversarialTraining", "AdversariallyRobustDistillation", "kl_pgd", "robust_distill"]

ATTACKS = ("ce", "kl")


def kl_pgd(student: nn.Module, x: torch.Tensor, teacher_probs: torch.Tensor, eps: float, *, steps: int = 10,
           step_size: float | None = None, clamp: Clamp = None) -> torch.Tensor:
    r"""PGD (:math:`L_\infty`, uniform random start) that ascends :math:`\sum_n \mathrm{KL}(p_n \,\|\,
    \mathrm{softmax}(s(x'_n)))` for fixed teacher probabilities ``teacher_probs`` :math:`p`, with the student in
    eval mode; the update and projection of :func:`kdlib.attacks.pgd`. Returns ``x'`` detached."""
    e, steps, alpha = _check_pgd(eps, steps, step_size, clamp, min_steps=0)
    x = x.detach()
    if e == 0 or steps == 0:
        return x.clone()

    def gradient(x_adv: torch.Tensor) -> torch.Tensor:
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(student(x_adv).float(), 1), teacher_probs, reduction="sum")
            return torch.autograd.grad(kl, x_adv)[0]

    return _ascend(student, x, gradient, e, steps, alpha, clamp)


class AdversarialTraining:
    """PGD adversarial training (Madry et al. 2018) as a :class:`kdlib.train.LossTerm`: returns
    :math:`\\mathrm{CE}(f(x'), y)`, ``x'`` from :func:`kdlib.attacks.pgd` against the current model each step.

    Not an ``nn.Module`` (fit would otherwise optimize the model's parameters twice); it keeps a reference to the
    model fit trains. Each step costs about ``steps + 1`` forward-backward passes of a clean step.

    Args:
        model: the model fit trains.
        eps: :math:`L_\\infty` budget in the model's input units (:func:`kdlib.attacks.normalized_eps`).
        steps: PGD steps (0: no attack, the clean CE). Madry et al.: 40 on MNIST, 7 on CIFAR-10.
        step_size: default :math:`2.5\\,\\epsilon/\\text{steps}`.
        clamp: valid input range (:func:`kdlib.attacks.normalized_range`).
        loss: what PGD ascends, ``"ce"`` or ``"logit_margin"``; the returned loss is always CE.
        weight, name: the term's weight in fit's objective and its history key ``"loss/<name>"``.
    """

    def __init__(self, model: nn.Module, eps: float, *, steps: int = 7, step_size: float | None = None,
                 clamp: Clamp = None, loss: str = "ce", weight: float = 1.0, name: str = "adv_ce") -> None:
        self.eps, self.steps, self.step_size = _check_pgd(eps, steps, step_size, clamp, min_steps=0)
        if loss not in ("ce", "logit_margin"):
            raise ValueError(f"loss must be 'ce' or 'logit_margin', got {loss!r}")
        if not (math.isfinite(float(weight)) and float(weight) >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        self.model, self.clamp, self.loss, self.weight, self.name = model, clamp, loss, float(weight), name

    def __repr__(self) -> str:
        return f"AdversarialTraining(eps={self.eps:g}, steps={self.steps}, step_size={self.step_size:g})"

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial batch ``x'`` (``x`` itself when there is no attack)."""
        if self.eps == 0 or self.steps == 0:
            return x
        return pgd(self.model, x, y, self.eps, steps=self.steps, step_size=self.step_size, clamp=self.clamp,
                   loss=self.loss)

    def __call__(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        x_adv = self.craft(batch.x, batch.y)
        out = logits if x_adv is batch.x else self.model(x_adv)
        return F.cross_entropy(out.float(), batch.y)


class AdversariallyRobustDistillation(AdversarialTraining):
    """ARD (Goldblum et al. 2020) as a :class:`kdlib.train.LossTerm`; see the module docstring for the formula,
    what was checked against the authors' code, and why ``fit(..., ce_weight=1 - alpha)``.

    Returns :math:`T^2\\,\\mathrm{KL}(\\mathrm{softmax}(t(x)/T) \\| \\mathrm{softmax}(s(x')/T))`
    (:func:`kdlib.losses.kd_loss`); its ``weight`` is ``alpha``. The teacher runs in eval mode under
    ``torch.no_grad()`` on the clean batch: no gradient ever reaches it.

    Args:
        student: the model fit trains.
        teacher: the (robust) teacher, frozen; same number of classes as the student.
        eps, steps, step_size, clamp: as for :class:`AdversarialTraining` (ARD: 10 steps).
        alpha: weight of the KL part in [0, 1] (the authors: 1); fit's ``ce_weight`` should be ``1 - alpha``.
        temperature: :math:`T > 0` (the authors: 30).
        attack: ``"ce"`` (ARD: PGD on the student's CE with the labels) or ``"kl"`` (RSLAD: on the KL to the
            teacher's clean prediction at T = 1, :func:`kl_pgd`).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, eps: float, *, steps: int = 10,
                 step_size: float | None = None, clamp: Clamp = None, alpha: float = 1.0, temperature: float = 30.0,
                 attack: str = "ce", name: str = "ard") -> None:
        if not (isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0):
            raise ValueError(f"alpha is the weight of the KL part and must lie in [0, 1], got {alpha!r}")
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
        super().__init__(student, eps, steps=steps, step_size=step_size, clamp=clamp, weight=alpha, name=name)
        self.teacher, self.alpha, self.attack = teacher, float(alpha), attack
        self.temperature = check_temperature(temperature)

    def __repr__(self) -> str:
        return (f"AdversariallyRobustDistillation(eps={self.eps:g}, steps={self.steps}, alpha={self.alpha:g}, "
                f"T={self.temperature:g}, attack={self.attack!r})")

    def __call__(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        if module_device(self.teacher) != batch.x.device:
            self.teacher.to(batch.x.device)  # fit moves the student and the data; the teacher follows them
        with torch.no_grad(), eval_mode(self.teacher):
            t = self.teacher(batch.x).float()
        if t.shape != logits.shape:
            raise ValueError(f"the teacher returns logits of shape {tuple(t.shape)} but the student "
                             f"{tuple(logits.shape)}: they must predict the same classes")
        if self.attack == "kl" and self.eps > 0 and self.steps > 0:
            x_adv = kl_pgd(self.model, batch.x, t.softmax(1), self.eps, steps=self.steps,
                           step_size=self.step_size, clamp=self.clamp)
        else:
            x_adv = self.craft(batch.x, batch.y)
        out = logits if x_adv is batch.x else self.model(x_adv)
        return kd_loss(out.float(), t, self.temperature)


def robust_distill(student: nn.Module, teacher: nn.Module, data: Any, eps: float, *, alpha: float = 1.0,
                   temperature: float = 30.0, steps: int = 10, step_size: float | None = None, clamp: Clamp = None,
                   attack: str = "ce", **fit_kwargs: Any) -> FitResult:
    """Train ``student`` by ARD on :func:`kdlib.train.fit`: ``ce_weight = 1 - alpha``, the teacher frozen (and in
    fit's checkpoint fingerprint). ``fit_kwargs`` go to fit (epochs, lr, seed, device, ...)."""
    term = AdversariallyRobustDistillation(student, teacher, eps, steps=steps, step_size=step_size, clamp=clamp,
                                           alpha=alpha, temperature=temperature, attack=attack)
    return fit(student, data, ce_weight=1.0 - term.alpha, loss_terms=[term],
               frozen_models=[teacher, *fit_kwargs.pop("frozen_models", [])], **fit_kwargs)
