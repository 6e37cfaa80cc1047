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
    assert result.config["cached_teacher"] is True and losses[-1] < losses[0]  # cached: no augmentation
    assert 0 <= result.history[-1]["fidelity/test_agreement"] <= 1


# --- sequence-level and on-policy KD, the teacher cache for sequence outputs --------------------------------------

from kdlib.generate import generate  # noqa: E402
from kdlib.schemes import continue_sequences, on_policy_distill, prompt_tokens, sequence_level_data  # noqa: E402
from kdlib.schemes.sequence import OnPolicySource  # noqa: E402
from kdlib.teacher import TeacherCache, expand_topk, topk_log_probs  # noqa: E402


@pytest.fixture(scope="module")
def trained_teacher() -> tuple[DecoderLM, Dataset]:
    d = data(512)
    teacher = lm(48, 0)
    fit(teacher, d, steps=200, batch_size=64, lr=3e-3)
    return teacher, d


def test_the_prompt_is_what_precedes_the_first_target():
    x, y = reversal(8, 0)
    assert prompt_tokens(y) == K + 1
    assert prompt_tokens(y, 3) == 3
    y2 = y.clone()
    y2[0, K] = UNLABELED  # one row with a longer prompt
    with pytest.raises(ValueError, match="different lengths"):
        prompt_tokens(y2)
    with pytest.raises(ValueError, match="prompt_length"):
        prompt_tokens(y, 0)
    with pytest.raises(ValueError, match="last position"):
        prompt_tokens(torch.full_like(y, UNLABELED))


def test_continued_sequences_keep_the_prompt_and_target_only_what_was_written(trained_teacher):
    teacher, d = trained_teacher
    x, y = d.test.x[:32], d.test.y[:32]
    new_x, new_y = continue_sequences(teacher, x, y, temperature=0.0)
    assert new_x.shape == x.shape and new_y.shape == y.shape
    assert torch.equal(new_x[:, : K + 1], x[:, : K + 1])
    assert torch.equal(new_y == UNLABELED, y == UNLABELED)
    written = generate(teacher, x[:, : K + 1], K, temperature=0.0)
    assert torch.equal(torch.cat([new_x, new_y[:, -1:]], 1), written)


def test_sequence_level_data_holds_the_teachers_answers(trained_teacher):
    teacher, d = trained_teacher
    seq = sequence_level_data(teacher, d)
    full = torch.cat([seq.train.x, seq.train.y[:, -1:]], 1)
    assert exact_match(teacher, full[:, : K + 1], full[:, K + 1 :]) == 1.0  # the teacher agrees with itself
    assert torch.equal(seq.test.x, d.test.x) and torch.equal(seq.test.y, d.test.y)
    assert torch.equal(sequence_level_data(teacher, d, max_samples=100, batch_size=64).train.y, seq.train.y[:100])
    untrained = sequence_level_data(lm(8, 5), d)  # a teacher's mistakes are kept: they are what it teaches
    assert not torch.equal(untrained.train.y, d.train.y)
    assert torch.equal(untrained.train.y == UNLABELED, d.train.y == UNLABELED)


def test_on_policy_distillation_trains_on_the_students_samples(trained_teacher):
    teacher, d = trained_teacher
    seen: list[torch.Tensor] = []
    hook = teacher.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        student = lm(16, 1)
        result = on_policy_distill(student, teacher, d, steps=6, batch_size=32, lr=3e-3, eval_every=6)
    finally:
        hook.remove()
    train_rows = {tuple(r) for r in torch.cat([d.train.x, d.train.y[:, -1:]], 1).tolist()}
    batches = [s for s in seen if s.shape[0] == 32]
    assert len(batches) >= 6
    # the answers the teacher scored were written by the (untrained) student, not taken from the data
    assert sum(tuple(r) not in train_rows for s in batches for r in s.tolist()) > 32
    assert result.config["cached_teacher"] is False and "loss/on_policy" in result.history[-1]


def test_on_policy_with_fraction_zero_is_word_level_distillation(trained_teacher):
    teacher, d = trained_teacher
    kwargs = dict(steps=20, batch_size=32, lr=3e-3, seed=3, eval_every=10)
    a = on_policy_distill(lm(16, 1), teacher, d, on_policy_fraction=0.0, **kwargs)
    term = TokenTerm(token_reverse_kl, name="on_policy")
    b = Distiller(lm(16, 1), teacher, [term], ce_weight=0.0, cache_teacher=False).fit(d, **kwargs)
    assert [r["loss/on_policy"] for r in a.history] == [r["loss/on_policy"] for r in b.history]


def test_on_policy_stream_resumes_where_it_stopped(trained_teacher):
    teacher, d = trained_teacher
    source = OnPolicySource(d, lm(16, 1), on_policy_fraction=0.5)
    s1 = source.stream(16, torch.Generator().manual_seed(0), 0)
    for _ in range(3):
        s1.next()
    state = s1.state_dict()
    expected = [s1.next().x for _ in range(3)]
    s2 = source.stream(16, torch.Generator().manual_seed(99), 0)
    s2.load_state_dict(state)
    assert all(torch.equal(a, s2.next().x) for a in expected)
    with pytest.raises(ValueError, match="cannot be cached"):
        source.check_static()
    with pytest.raises(ValueError, match="on_policy_fraction"):
        OnPolicySource(d, lm(16, 1), on_policy_fraction=1.5)


def test_topk_of_sequence_logits_keeps_each_positions_top_classes():
    logits = torch.randn(3, 5, 11)
    values, index = topk_log_probs(logits, 4)
    full = expand_topk(values, index, 11)
    assert full.shape == logits.shape
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(3, 5))
    exact = logits.log_softmax(-1)
    torch.testing.assert_close(full.gather(-1, index), exact.gather(-1, index))
    torch.testing.assert_close(expand_topk(*topk_log_probs(logits, 11), 11), exact)


@pytest.mark.parametrize("cache", [True, TeacherCache(top_k=DIGITS + 1), "disk"])
def test_a_cached_sequence_teacher_trains_like_a_live_one(trained_teacher, cache, tmp_path):
    teacher, d = trained_teacher
    cache = TeacherCache(tmp_path, top_k=DIGITS + 1) if cache == "disk" else cache
    kwargs = dict(steps=12, batch_size=32, lr=3e-3, seed=2, eval_every=12)
    live = Distiller(lm(16, 1), teacher, [TokenTerm(token_forward_kl)], cache_teacher=False).fit(d, **kwargs)
    cached = Distiller(lm(16, 1), teacher, [TokenTerm(token_forward_kl)], cache_teacher=cache).fit(d, **kwargs)
    assert cached.config["cached_teacher"] is True
    a = [r["loss/forward_kl"] for r in live.history]
    b = [r["loss/forward_kl"] for r in cached.history]
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6)


def test_a_top_k_cache_of_a_sequence_teacher_stores_k_values_per_position(trained_teacher):
    teacher, d = trained_teacher
    cache = TeacherCache(top_k=3)
    result = Distiller(lm(16, 1), teacher, [TokenTerm(token_forward_kl)], cache_teacher=cache).fit(
        d, steps=4, batch_size=32, eval_every=4)
    assert result.config["cached_teacher"] is True
    n, length = d.train.x.shape
    assert cache.nbytes() == n * length * 3 * (4 + 4)
    assert TeacherCache.megabytes(n, DIGITS + 1, 3, positions=length) * 2**20 == cache.nbytes()
