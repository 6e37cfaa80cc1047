"""Tests of kdlib.adversarial_training: PGD adversarial training and ARD as loss terms of fit."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from tiny import blobs, mlp, snapshot
from torch import nn

from kdlib.adversarial_training import (
    AdversariallyRobustDistillation,
    AdversarialTraining,
    kl_pgd,
    robust_distill,
)
from kdlib.attacks import pgd, robust_accuracy
from kdlib.data import Batch
from kdlib.losses import kd_loss
from kdlib.train import fit

CLAMP = (-4.0, 4.0)


def _batch(n: int = 12, features: int = 8, classes: int = 3) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(n, features, generator=g), torch.arange(n) % classes, torch.arange(n))


class _Recorder(nn.Module):
    """Wraps a model and records the inputs it sees, to inspect the crafted batch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x)


@pytest.mark.parametrize("attack", ["at", "ard-ce", "ard-kl"])
def test_crafted_example_stays_in_the_ball_and_the_valid_range(attack: str) -> None:
    student, b, eps = _Recorder(mlp(seed=0)), _batch(), 0.5
    x = b.x.clamp(*CLAMP)
    b = Batch(x, b.y, b.index)
    if attack == "at":
        term = AdversarialTraining(student, eps, steps=5, clamp=CLAMP)
    else:
        term = AdversariallyRobustDistillation(student, mlp(seed=1), eps, steps=5, clamp=CLAMP, attack=attack[4:])
    term(b, student(x))
    x_adv = student.seen[-1]  # the term's last forward pass is on x'
    assert not torch.equal(x_adv, x)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= CLAMP[0] and float(x_adv.max()) <= CLAMP[1]


def test_kl_pgd_increases_the_kl_to_the_teacher() -> None:
    student, teacher, b = mlp(seed=0), mlp(seed=1), _batch()
    p = teacher(b.x).softmax(1).detach()

    def kl(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(student(x), 1), p, reduction="sum"))

    torch.manual_seed(0)
    x_adv = kl_pgd(student, b.x, p, 0.5, steps=10)
    noise = b.x + 0.5 * torch.sign(torch.randn(b.x.shape, generator=torch.Generator().manual_seed(2)))
    assert kl(x_adv) > kl(b.x) and kl(x_adv) > kl(noise)  # PGD ascends the KL, more than a random corner


@pytest.mark.parametrize("eps, steps", [(0.0, 5), (0.5, 0)])
def test_no_attack_is_exactly_clean_ce_and_clean_kd(eps: float, steps: int) -> None:
    student, teacher, b = mlp(seed=0), mlp(seed=1), _batch()
    logits = student(b.x)
    at = AdversarialTraining(student, eps, steps=steps)
    assert torch.equal(at(b, logits), F.cross_entropy(logits, b.y))
    ard = AdversariallyRobustDistillation(student, teacher, eps, steps=steps, temperature=4.0, attack="kl")
    assert torch.equal(ard(b, logits), kd_loss(logits, teacher(b.x).detach(), 4.0))


def test_gradients_reach_the_student_only() -> None:
    student, teacher, b = mlp(seed=0), mlp(seed=1), _batch()
    before = snapshot(teacher)
    for attack in ("ce", "kl"):
        ard = AdversariallyRobustDistillation(student, teacher, 0.3, steps=3, attack=attack)
        ard(b, student(b.x)).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("kwargs", [dict(eps=-0.1), dict(eps=float("nan")), dict(steps=-1), dict(steps=1.5),
                                    dict(step_size=0.0), dict(alpha=1.5), dict(alpha=-0.1), dict(temperature=0.0),
                                    dict(temperature=-2.0), dict(attack="cw")])
def test_bad_settings_raise_one_clear_error(kwargs: dict) -> None:
    settings = dict(eps=0.1) | kwargs
    with pytest.raises(ValueError):
        AdversariallyRobustDistillation(mlp(), mlp(), **settings)
    if set(kwargs) <= {"eps", "steps", "step_size"}:
        with pytest.raises(ValueError):
            AdversarialTraining(mlp(), **settings)


def test_teacher_with_other_classes_is_refused() -> None:
    student, b = mlp(classes=3), _batch()
    ard = AdversariallyRobustDistillation(student, mlp(classes=4), 0.1, steps=1)
    with pytest.raises(ValueError, match="same classes"):
        ard(b, student(b.x))


def test_adversarial_training_beats_normal_training_under_pgd() -> None:
    data = blobs(n_train=192, n_test=96, classes=3, seed=0)
    attack = functools.partial(pgd, eps=2.0, steps=10, generator=torch.Generator().manual_seed(0))
    normal, robust = mlp(seed=0), mlp(seed=0)
    fit(normal, data, epochs=15, batch_size=32, lr=1e-2, device="cpu", seed=0)
    result = fit(robust, data, epochs=15, batch_size=32, lr=1e-2, device="cpu", seed=0, ce_weight=0,
                 loss_terms=[AdversarialTraining(robust, 2.0, steps=5)])
    assert "loss/adv_ce" in result.history[-1]
    plain, adv = robust_accuracy(normal, data, attack), robust_accuracy(robust, data, attack)
    assert adv["robust_accuracy"] > plain["robust_accuracy"] + 0.2  # 0.67 against 0.29 when written
    ard = robust_distill(mlp(seed=2), robust, data, 2.0, alpha=0.5, temperature=2.0, steps=3, epochs=2,
                         batch_size=32, lr=1e-2, device="cpu", seed=0)
    assert ard.config["ce_weight"] == 0.5 and ard.config["terms"] == [("ard", 0.5)]
