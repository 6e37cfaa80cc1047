"""Sequence models on the one training loop: fit trains a small language model on a task with exact answers,
evaluation scores only the positions with targets, and a smaller student is distilled token by token."""

from __future__ import annotations

import pytest
import torch

from kdlib.data import UNLABELED, Dataset, Split
from kdlib.distiller import Distiller
from kdlib.generate import exact_match
from kdlib.losses import token_forward_kl, token_reverse_kl
from kdlib.terms import TokenTerm
from kdlib.train import evaluate, fit
from kdlib.transformer import DecoderLM

DIGITS, SEP, K = 10, 10, 4  # tokens 0-9, a separator; sequences of K digits to reverse


def reversal(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``d1..dK SEP dK..d1``: inputs are all tokens but the last; targets the next token, only after SEP."""
    digits = torch.randint(0, DIGITS, (n, K), generator=torch.Generator().manual_seed(seed))
    seq = torch.cat([digits, torch.full((n, 1), SEP), digits.flip(1)], dim=1)
    x, y = seq[:, :-1], seq[:, 1:].clone()
    y[:, : K] = UNLABELED  # the prompt is given, not predicted
    return x, y


def data(n_train: int = 1024) -> Dataset:
    (xt, yt), (xv, yv) = reversal(n_train, 0), reversal(256, 1)
    return Dataset("reversal", Split(xt, yt), Split(xv, yv), num_classes=DIGITS + 1)


def lm(width: int, seed: int) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(DIGITS + 1, context=2 * K + 1, width=width, layers=2, heads=4)


def test_fit_trains_a_language_model_and_scores_only_the_target_positions():
    d = data()
    model = lm(48, 0)
    result = fit(model, d, steps=400, batch_size=64, lr=3e-3, eval_every=200)
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]
    assert result.final_accuracy > 0.5  # per answer token; chance is 1 / 11
    prompts, answers = d.test.x[:, : K + 1], torch.cat([d.test.x[:, K + 1 :], d.test.y[:, -1:]], dim=1)
    assert exact_match(model, prompts, answers) > 0.2
    # evaluation counts the K answer positions of each sequence, nothing else
    assert evaluate(model, d.test)["n"] == 256 * K


@pytest.mark.parametrize("loss_fn", [token_forward_kl, token_reverse_kl])
def test_a_smaller_student_is_distilled_token_by_token(loss_fn):
    d = data(512)
    teacher = lm(48, 0)
    fit(teacher, d, steps=200, batch_size=64, lr=3e-3)
    student = lm(16, 1)
    term = TokenTerm(loss_fn, weight=1.0)
    result = Distiller(student, teacher, [term], ce_weight=0.0).fit(d, steps=100, batch_size=64, lr=3e-3)
    losses = [r[f"loss/{term.name}"] for r in result.history]
    assert result.config["cached_teacher"] is False and losses[-1] < losses[0]
    assert 0 <= result.history[-1]["fidelity/test_agreement"] <= 1
