"""Tests of kdlib.attacks: FGSM, PGD, gradient masking and defensive distillation."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from kdlib import data as kdata
from kdlib import models
from kdlib.attacks import (
    attack_loss,
    attack_success,
    defensive_distillation,
    fgsm,
    normalized_eps,
    normalized_range,
    pgd,
    robust_accuracy,
    with_temperature,
)
from kdlib.evaluation import evaluate
from kdlib.train import fit


@pytest.fixture(scope="module")
def trained(digits: kdata.Dataset) -> nn.Module:
    model = models.create("mlp", input_shape=(1, 8, 8), hidden=(64,), seed=0)
    fit(model, digits, epochs=10, batch_size=64, lr=3e-3, device="cpu")
    model.zero_grad(set_to_none=True)  # training leaves .grad; the attacks must add none
    return model


def _linear(classes: int = 2, features: int = 6) -> nn.Linear:
    torch.manual_seed(3)
    layer = nn.Linear(features, classes)
    with torch.no_grad():  # weights that differ in every coordinate, so every sign is +-1
        layer.weight.copy_(torch.randint(-8, 9, (classes, features)).float() / 4 + torch.arange(classes)[:, None] * 0.125)
        layer.bias.zero_()
    return layer


def _no_grads(model: nn.Module) -> bool:
    return all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("loss", ["ce", "logit_margin"])
def test_fgsm_on_linear_model_moves_along_sign_of_weight_difference(loss: str) -> None:
    model = _linear()
    x = torch.randint(-8, 9, (5, 6)).float() / 8  # dyadic values: x +- eps is exact in float32
    y = model(x).argmax(1)  # attack the predicted class
    eps = 0.25
    x_adv = fgsm(model, x, y, eps, loss=loss)
    w = model.weight.detach()
    direction = torch.sign(w[1 - y] - w[y])  # sign(w_wrong - w_true), per sample
    assert torch.equal(x_adv - x, eps * direction)
    assert torch.equal((x_adv - x).abs().amax(1), torch.full((5,), eps))
    assert _no_grads(model)


def test_logit_margin_picks_the_strongest_wrong_class() -> None:
    model = _linear(classes=4)
    x = torch.randint(-8, 9, (7, 6)).float() / 8
    y = torch.randint(0, 4, (7,))
    logits = model(x).detach()
    runner_up = logits.scatter(1, y[:, None], -math.inf).argmax(1)
    w = model.weight.detach()
    x_adv = fgsm(model, x, y, 0.5, loss="logit_margin")
    assert torch.equal(x_adv - x, 0.5 * torch.sign(w[runner_up] - w[y]))
    assert torch.allclose(attack_loss(logits, y, "logit_margin"), logits.gather(1, runner_up[:, None]).squeeze(1)
                          - logits.gather(1, y[:, None]).squeeze(1))


def test_pgd_stays_in_ball_and_range_at_every_step(trained: nn.Module, digits: kdata.Dataset) -> None:
    x, y = digits.test.inputs[:64], digits.test.y[:64]
    eps, clamp = normalized_eps(digits, 0.2), normalized_range(digits)
    for steps in (1, 3, 7):
        g = torch.Generator().manual_seed(steps)
        x_adv = pgd(trained, x, y, eps, steps=steps, clamp=clamp, generator=g)
        assert float((x_adv - x).abs().max()) <= eps + 1e-6
        assert float(x_adv.min()) >= clamp[0] - 1e-6 and float(x_adv.max()) <= clamp[1] + 1e-6
    assert _no_grads(trained)


def test_pgd_with_one_full_step_equals_fgsm(trained: nn.Module, digits: kdata.Dataset) -> None:
    x, y = digits.test.inputs[:64], digits.test.y[:64]
    for loss in ("ce", "logit_margin"):
        a = fgsm(trained, x, y, 0.3, loss=loss, clamp=normalized_range(digits))
        b = pgd(trained, x, y, 0.3, steps=1, step_size=0.3, random_start=False, loss=loss,
                clamp=normalized_range(digits))
        assert torch.equal(a, b)


def test_pgd_reaches_a_higher_loss_than_fgsm(trained: nn.Module, digits: kdata.Dataset) -> None:
    x, y = digits.test.inputs[:200], digits.test.y[:200]
    eps, clamp = normalized_eps(digits, 0.1), normalized_range(digits)
    with torch.no_grad():
        clean = attack_loss(trained(x), y).mean()
        one = attack_loss(trained(fgsm(trained, x, y, eps, clamp=clamp)), y).mean()
        many = attack_loss(trained(pgd(trained, x, y, eps, steps=10, clamp=clamp)), y).mean()
    assert clean < one <= many


def test_eps_zero_leaves_inputs_unchanged(trained: nn.Module, digits: kdata.Dataset) -> None:
    x, y = digits.test.inputs[:32], digits.test.y[:32]
    assert torch.equal(fgsm(trained, x, y, 0.0), x)
    assert torch.equal(pgd(trained, x, y, 0.0), x)
    assert attack_success(trained, x, y, x_clean=x) == 0.0


def test_mode_restored_and_no_parameter_grads(digits: kdata.Dataset) -> None:
    model = models.create("mlp", input_shape=(1, 8, 8), hidden=(16,), dropout=0.5, seed=0)
    model.train()
    model.fc.eval()  # a mixed state must come back as it was
    x, y = digits.test.inputs[:16], digits.test.y[:16]
    a = fgsm(model, x, y, 0.1)
    b = pgd(model, x, y, 0.1, steps=3)
    # eval mode during the attack: dropout off, so FGSM is deterministic
    assert torch.equal(a, fgsm(model, x, y, 0.1))
    assert b.shape == x.shape and not b.requires_grad
    assert model.training and model.hidden1.training and not model.fc.training
    assert _no_grads(model)


def test_saturated_softmax_masks_ce_but_not_logit_margin(trained: nn.Module, digits: kdata.Dataset) -> None:
    """Logits x 1000 (what defensive distillation does at T = 1): the float32 softmax is one-hot, the CE gradient
    is exactly 0 for almost every sample, so CE-FGSM is ineffective, yet the decision function is the same one
    that falls to FGSM on the logit margin; restoring the temperature un-masks CE."""
    saturated = with_temperature(trained, 1e-3)
    x, y = digits.test.inputs[:200], digits.test.y[:200]
    eps, clamp = normalized_eps(digits, 0.1), normalized_range(digits)
    x_ce = fgsm(saturated, x, y, eps, clamp=clamp)
    unchanged = (x_ce == x).flatten(1).all(1).float().mean()
    assert unchanged > 0.8  # zero gradient: no perturbation at all
    masked = attack_success(saturated, x_ce, y, x_clean=x)
    margin = attack_success(saturated, fgsm(saturated, x, y, eps, loss="logit_margin", clamp=clamp), y, x_clean=x)
    unmasked = attack_success(trained, fgsm(with_temperature(saturated, 1e3), x, y, eps, clamp=clamp), y, x_clean=x)
    assert masked < 0.05
    assert margin > 0.2 and margin > masked + 0.15
    assert unmasked > 0.2


def test_robust_accuracy_counts(trained: nn.Module, digits: kdata.Dataset) -> None:
    split = digits.test.subset(150)
    clean = evaluate(trained, split)["accuracy"]
    none = robust_accuracy(trained, split, lambda m, x, y: x, batch_size=64)
    assert none["clean_accuracy"] == pytest.approx(clean) and none["robust_accuracy"] == pytest.approx(clean)
    assert none["attack_success_rate"] == 0.0 and none["n"] == 150
    attack = functools.partial(pgd, eps=normalized_eps(digits, 0.1), clamp=normalized_range(digits))
    result = robust_accuracy(trained, digits, attack, batch_size=100)
    assert result["robust_accuracy"] < result["clean_accuracy"]
    assert result["robust_accuracy"] == pytest.approx(result["clean_accuracy"] * result["robust_accuracy_on_correct"])


class _Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"eps": -0.1}, "eps"),
    ({"eps": math.nan}, "eps"),
    ({"eps": math.inf}, "eps"),
    ({"eps": 0.1, "steps": 0}, "steps"),
    ({"eps": 0.1, "step_size": 0.0}, "step_size"),
    ({"eps": 0.1, "step_size": -1.0}, "step_size"),
    ({"eps": 0.1, "loss": "hinge"}, "loss must be one of"),
    ({"eps": 0.1, "clamp": (1.0, 0.0)}, "clamp"),
])
def test_bad_settings_raise(kwargs: dict, message: str) -> None:
    model, x, y = _linear(), torch.zeros(3, 6), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        pgd(model, x, y, **kwargs)
    if "steps" not in kwargs and "step_size" not in kwargs:
        with pytest.raises(ValueError, match=message):
            fgsm(model, x, y, **kwargs)


def test_bad_inputs_raise() -> None:
    model = _linear()
    with pytest.raises(ValueError, match="samples but y has"):
        fgsm(model, torch.zeros(3, 6), torch.zeros(2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match=r"\(N, C\) logits"):
        fgsm(nn.Sequential(_linear(), _Flat()), torch.zeros(3, 6), torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="int64"):
        pgd(model, torch.zeros(3, 6), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        fgsm(model, torch.zeros(3, 6), torch.full((3,), 5), 0.1)


def test_defensive_distillation_end_to_end(digits: kdata.Dataset) -> None:
    small = kdata.digits(device="cpu", train_size=400, test_size=200)
    teacher = models.create("mlp", input_shape=(1, 8, 8), hidden=(64,), seed=0)
    student = models.create("mlp", input_shape=(1, 8, 8), hidden=(32,), seed=1)
    result = defensive_distillation(teacher, student, small, temperature=20.0, epochs=8, batch_size=64, lr=3e-2,
                                    device="cpu", teacher_fit={"epochs": 10})
    assert result.student is student and result.temperature == 20.0
    assert result.teacher_result.steps == 10 * 7 and result.student_result.steps == 8 * 7
    assert evaluate(student, small)["accuracy"] > 0.5  # chance is 0.1
    # deployed at T = 1 its logits are those it learned at T = 20: a saturated softmax on most test inputs
    with torch.no_grad():
        confidence = torch.softmax(student(small.test.inputs), 1).amax(1)
    assert float(confidence.median()) > 0.99
