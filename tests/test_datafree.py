"""Data-free distillation (kdlib.datafree): DeepInversion's BatchNorm term and synthesis, the adversarial generator
loop, and distilling a student on synthesized inputs."""

from __future__ import annotations

import pytest
import torch
from tiny import mlp, snapshot
from torch import nn

from kdlib import data, models
from kdlib.data import UNLABELED
from kdlib.datafree import (
    adversarial_distill,
    bn_statistics_loss,
    deep_inversion,
    distill_on_synthetic,
    total_variation,
    transfer_set,
)
from kdlib.evaluation import evaluate
from kdlib.train import fit


@pytest.fixture(scope="module")
def bn_teacher(digits: data.Dataset) -> nn.Module:
    """kdlib's CNN (BatchNorm after every conv) on 8×8 digits, about 98 % test accuracy."""
    teacher = models.create("cnn", in_channels=1, input_size=8, channels=(16, 32), seed=0)
    fit(teacher, digits, epochs=10, batch_size=64, lr=3e-3, seed=0, device="cpu", progress=False)
    return teacher


def _bn_with(mean: torch.Tensor, var: torch.Tensor) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(len(mean))
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    return bn


def test_bn_statistics_loss_is_zero_exactly_at_the_running_moments():
    mean, var = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.25, 4.0])
    bn = _bn_with(mean, var)
    z = torch.randn(16, 3, 5, 5)
    dims = (0, 2, 3)
    z = (z - z.mean(dims, keepdim=True)) / z.var(dims, unbiased=False, keepdim=True).sqrt()  # moments exactly 0, 1
    x = z * var.sqrt().view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    assert float(bn_statistics_loss(x, bn)) == pytest.approx(0.0, abs=1e-5)
    shifted = x + torch.tensor([0.3, 0.0, 0.0]).view(1, 3, 1, 1)  # mean off by 0.3 in one channel, var unchanged
    assert float(bn_statistics_loss(shifted, bn)) == pytest.approx(0.3, abs=1e-5)
    assert float(bn_statistics_loss(2 * x, bn)) > 0.1


def test_bn_statistics_loss_gradient_reaches_the_inputs_not_the_layer():
    bn = _bn_with(torch.zeros(4), torch.ones(4))
    x = (torch.randn(8, 4, 3, 3) * 2 + 1).requires_grad_(True)
    bn_statistics_loss(x, bn).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in bn.parameters())
    with pytest.raises(ValueError, match=r"\(N, 4, \.\.\.\)"):
        bn_statistics_loss(torch.randn(8, 3, 2, 2), bn)


def test_total_variation_is_zero_for_constant_images():
    assert float(total_variation(torch.ones(2, 1, 4, 4))) == 0.0
    assert float(total_variation(torch.randn(2, 1, 4, 4))) > 0


def test_deep_inversion_makes_inputs_the_teacher_labels_as_targets(bn_teacher):
    before = snapshot(bn_teacher)
    bn_teacher.zero_grad(set_to_none=True)  # fit leaves the last step's gradients
    bn_teacher.train()
    result = deep_inversion(bn_teacher, 60, steps=40, lr=0.1, batch_size=30, seed=0)
    assert result.x.shape == (60, 1, 8, 8) and result.y.shape == (60,)
    assert torch.bincount(result.y, minlength=10).tolist() == [6] * 10  # balanced targets
    assert result.teacher_accuracy >= 0.8
    with torch.no_grad():
        bn_teacher.eval()
        assert (bn_teacher(result.x).argmax(1) == result.y).float().mean() == pytest.approx(result.teacher_accuracy)
        bn_teacher.train()
    first, last = result.history[0], result.history[-1]
    assert len(result.history) == 40 and last["bn"] < 0.5 * first["bn"] and last["ce"] < first["ce"]
    assert result.teacher_queries == 40 * 60 + 60
    assert all(torch.equal(before[k], v) for k, v in bn_teacher.state_dict().items())  # running stats too
    assert all(p.grad is None and p.requires_grad for p in bn_teacher.parameters())
    assert bn_teacher.training  # mode restored
    again = deep_inversion(bn_teacher, 60, steps=40, lr=0.1, batch_size=30, seed=0)
    assert torch.equal(again.x, result.x)


def test_deep_inversion_rejects_bad_settings(bn_teacher):
    with pytest.raises(ValueError, match="DeepInversion needs BatchNorm statistics.*adversarial"):
        deep_inversion(models.create("lenet5"), 4, steps=1)
    for kwargs, message in [
        ({"n": 0}, "n must be"), ({"steps": 0}, "steps must be"), ({"bn_weight": -1.0}, "bn_weight"),
        ({"tv_weight": -0.1}, "tv_weight"), ({"input_shape": (1, 28, 28)}, "does not match"),
        ({"num_classes": 5}, "num_classes=5"),
    ]:
        settings = {"n": 4, "steps": 1} | kwargs
        with pytest.raises(ValueError, match=message):
            deep_inversion(bn_teacher, **settings)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))
    with pytest.raises(ValueError, match="does not accept inputs"):
        deep_inversion(plain, 4, steps=1, input_shape=(1, 5, 5))


def test_student_distilled_on_synthetic_inputs_beats_chance(bn_teacher, digits):
    synth = deep_inversion(bn_teacher, 200, steps=60, lr=0.1, batch_size=100, seed=0)
    dataset = transfer_set(synth.x, digits.test, num_classes=10)
    assert bool((dataset.train.y == UNLABELED).all()) and len(dataset.train) == 200
    student = models.create("mlp", input_shape=(1, 8, 8), hidden=(64,), seed=1)
    result = distill_on_synthetic(student, bn_teacher, synth.x, digits.test, epochs=20, batch_size=50, lr=3e-3,
                                  device="cpu", progress=False)
    assert result.config["ce_weight"] == 0.0
    assert result.final_accuracy > 0.35  # chance is 0.1; zero real training images were used


def test_adversarial_generator_loop_counts_queries_and_is_seeded(bn_teacher, digits):
    runs = []
    for _ in range(2):
        student = models.create("mlp", input_shape=(1, 8, 8), hidden=(64,), seed=1)
        start = evaluate(student, digits.test)["accuracy"]
        result = adversarial_distill(student, bn_teacher, steps=20, batch_size=32, student_steps=3, seed=0,
                                     eval_data=digits.test, eval_every=10)
        runs.append((torch.cat([p.flatten() for p in student.parameters()]), result))
    (w1, r1), (w2, r2) = runs
    assert torch.equal(w1, w2) and r1.history == r2.history
    assert r1.teacher_queries == 20 * 32 * (1 + 3)
    assert [h["step"] for h in r1.history if "test_accuracy" in h] == [10, 20]
    assert r1.history[-1]["student_loss"] < r1.history[0]["student_loss"]
    assert r1.final_accuracy > start
    x = r1.generator(torch.randn(5, r1.generator.z_dim))
    assert x.shape == (5, 1, 8, 8)


def test_adversarial_generator_works_for_a_teacher_without_batchnorm(teacher):
    student = mlp(seed=3)
    result = adversarial_distill(student, teacher, input_shape=(8,), steps=3, batch_size=8, student_steps=1)
    assert result.teacher_queries == 3 * 8 * 2 and result.generator(torch.randn(4, 64)).shape == (4, 8)
    with pytest.raises(ValueError, match="steps must be"):
        adversarial_distill(student, teacher, input_shape=(8,), steps=0)


def test_deep_inversion_jitter_and_flip_are_seeded_and_need_images(bn_teacher):
    plain = deep_inversion(bn_teacher, 20, steps=10, batch_size=20, seed=0)
    runs = [deep_inversion(bn_teacher, 20, steps=10, batch_size=20, seed=0, jitter=1, flip=True) for _ in range(2)]
    assert torch.equal(runs[0].x, runs[1].x) and not torch.equal(runs[0].x, plain.x)
    assert torch.equal(runs[0].y, plain.y) and runs[0].teacher_queries == plain.teacher_queries
    with pytest.raises(ValueError, match="jitter must be"):
        deep_inversion(bn_teacher, 4, steps=1, jitter=-1)
    flat = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="need image inputs"):
        deep_inversion(flat, 4, steps=1, input_shape=(8,), flip=True)


def test_class_balance_term_spreads_the_generators_samples_over_classes(bn_teacher):
    def class_entropy(balance_weight: float) -> float:
        student = models.create("mlp", input_shape=(1, 8, 8), hidden=(64,), seed=1)
        result = adversarial_distill(student, bn_teacher, steps=30, batch_size=64, student_steps=1, seed=0,
                                     lr_generator=1e-2, balance_weight=balance_weight)
        with torch.no_grad():
            bn_teacher.eval()
            p = torch.bincount(bn_teacher(result.generator(torch.randn(500, 64))).argmax(1), minlength=10) / 500
        return float(-(p * p.clamp_min(1e-12).log()).sum())
    assert class_entropy(10.0) > class_entropy(0.0) + 0.2
    with pytest.raises(ValueError, match="balance_weight"):
        adversarial_distill(models.create("lenet5"), bn_teacher, steps=1, balance_weight=-1.0)
