"""Tests of the training schemes: chains (born-again, Tf-KD, TA, Re-KD, De-KD), multi-teacher KD,
mutual learning and the virtual-teacher scheme, each on the tiny blobs for a few steps."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlib.data import UNLABELED, Batch, batches, with_unlabeled
from kdlib.distill import distill
from kdlib.losses import confidence_weights, cross_entropy, multi_teacher_kd_loss, tf_kd_reg_loss
from kdlib.schemes import (
    Ensemble,
    MultiTeacherTerm,
    MutualLearningTerm,
    SchemeResult,
    VirtualTeacherTerm,
    born_again,
    defective_kd,
    distill_chain,
    multi_teacher_distill,
    mutual_learning,
    reversed_kd,
    teacher_assistant,
    teacher_free_reg,
    teacher_free_self,
)
from kdlib.train import evaluate, fit
from tiny import blobs, mlp, snapshot

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FIT = dict(steps=8, batch_size=16, lr=1e-2)


def fresh() -> nn.Module:
    """An MLP initialised from the global RNG (no reseeding), so a scheme's seeding decides its weights."""
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def same(a: dict[str, torch.Tensor], model: nn.Module) -> bool:
    """``model``'s state is bit-identical to the snapshot ``a``."""
    return all(torch.equal(a[k], v) for k, v in model.state_dict().items())


def check_rows(result: SchemeResult, names: list[str], roles: list[str], teachers: list[str | None] | None = None):
    """Names, roles and teachers of the rows, and the JSON / frame views of the result."""
    assert [r.name for r in result.rows] == names
    assert [r.role for r in result.rows] == roles
    if teachers is not None:
        assert [r.teacher for r in result.rows] == teachers
    records = result.records()
    assert json.loads(json.dumps(records)) == records
    assert [r["name"] for r in records] == names
    for row, rec in zip(result.rows, records):
        assert 0.0 <= rec["accuracy"] <= 1.0 and rec["params"] == sum(p.numel() for p in row.model.parameters())
        assert ("steps" in rec) == (row.fit is not None)
    frame = result.to_frame()
    assert list(frame["name"]) == names and len(frame) == len(names)
    for name in names:
        assert result[name].name == name
    # accuracies are the models' own test accuracies
    data = blobs()
    for row in result.rows:
        assert row.accuracy == pytest.approx(evaluate(row.model, data)["accuracy"])


def bn_mlp(seed: int = 0) -> nn.Module:
    """An MLP with BatchNorm and dropout: in train mode its forward pass changes its state and its output."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


@pytest.fixture(scope="module")
def teachers() -> list[nn.Module]:
    """Two different trained teachers on the blobs."""
    out = []
    for hidden, seed in ((32, 1), (24, 2)):
        model = mlp(hidden=hidden, seed=seed)
        fit(model, blobs(), steps=12, batch_size=16, lr=1e-2)
        out.append(model)
    return out


# ---------------------------------------------------------------- rows of each scheme


def test_born_again_rows_and_ensemble():
    result = born_again(fresh, blobs(), generations=2, **FIT)
    check_rows(
        result,
        ["generation 0", "generation 1", "generation 2", "ensemble"],
        ["teacher", "student", "student", "ensemble"],
        [None, "generation 0", "generation 1", None],
    )
    assert result.scheme == "born-again"
    assert result.config["temperature"] == 1.0 and result.config["alpha"] == 1.0
    assert all(result[f"generation {g}"].fit.steps == 8 for g in range(3)) and result["ensemble"].fit is None
    ens = result["ensemble"].model
    assert isinstance(ens, Ensemble) and list(ens.members) == [result["generation 1"].model, result["generation 2"].model]
    # three distinct models
    assert len({id(r.model) for r in result.rows[:3]}) == 3
    with pytest.raises(KeyError, match=r"no model named 'student' in this born-again result; names: \['generation 0', "):
        result["student"]


@pytest.mark.parametrize("kwargs", [dict(generations=1), dict(generations=2, ensemble=False)])
def test_born_again_without_ensemble(kwargs):
    result = born_again(fresh, blobs(), **kwargs, **FIT)
    n = kwargs["generations"]
    check_rows(result, [f"generation {g}" for g in range(n + 1)], ["teacher"] + ["student"] * n)


def test_born_again_from_a_given_teacher_leaves_it_untouched(teacher):
    before = snapshot(teacher)
    result = born_again(fresh, blobs(), generations=2, teacher=teacher, **FIT)
    assert result["generation 0"].model is teacher and result["generation 0"].fit is None
    assert result.config["train_first"] is False
    assert same(before, teacher)
    assert all(p.requires_grad for p in teacher.parameters())


def test_teacher_free_self_rows():
    result = teacher_free_self(fresh, blobs(), **FIT)
    check_rows(result, ["generation 0", "generation 1"], ["teacher", "student"], [None, "generation 0"])
    assert result.config["temperature"] == 4.0 and result.config["alpha"] == 0.9
    assert result["generation 1"].fit.config["ce_weight"] == pytest.approx(0.1)


def test_teacher_assistant_rows_budgets_and_untouched_teacher(teacher):
    before = snapshot(teacher)
    assistants = [mlp(hidden=12, seed=3), mlp(hidden=8, seed=4)]
    result = teacher_assistant(teacher, assistants, mlp(hidden=4, seed=5), blobs(), assistant_fit=dict(steps=4), **FIT)
    check_rows(
        result,
        ["teacher", "assistant 1", "assistant 2", "student"],
        ["teacher", "assistant", "assistant", "student"],
        [None, "teacher", "assistant 1", "assistant 2"],
    )
    assert result.scheme == "teacher-assistant"
    assert result["teacher"].fit is None and same(before, teacher)
    assert [result[n].fit.steps for n in ("assistant 1", "assistant 2", "student")] == [4, 4, 8]
    # a single assistant module, and a teacher trained here with its own budget
    result = teacher_assistant(mlp(seed=6), mlp(hidden=8, seed=7), mlp(hidden=4, seed=8), blobs(),
                               train_teacher=True, teacher_fit=dict(steps=12), **FIT)
    check_rows(result, ["teacher", "assistant 1", "student"], ["teacher", "assistant", "student"])
    assert [r.fit.steps for r in result.rows] == [12, 8, 8]


def test_reversed_and_defective_kd_rows_and_budgets():
    result = reversed_kd(mlp(hidden=32, seed=1), mlp(hidden=4, seed=2), blobs(), weak_fit=dict(steps=5), **FIT)
    check_rows(result, ["weak teacher", "strong student"], ["teacher", "student"], [None, "weak teacher"])
    assert result.scheme == "reversed KD"
    assert result["weak teacher"].model[0].out_features == 4 and result["strong student"].model[0].out_features == 32
    assert [r.fit.steps for r in result.rows] == [5, 8]
    result = defective_kd(mlp(seed=3), mlp(hidden=32, seed=4), blobs(), teacher_fit=dict(steps=2), **FIT)
    check_rows(result, ["defective teacher", "student"], ["teacher", "student"], [None, "defective teacher"])
    assert result.scheme == "defective KD"
    assert [r.fit.steps for r in result.rows] == [2, 8]


def test_multi_teacher_rows(teachers):
    result = multi_teacher_distill(mlp(seed=3), teachers, blobs(), **FIT)
    check_rows(
        result,
        ["teacher 0", "teacher 1", "ensemble", "student"],
        ["teacher", "teacher", "ensemble", "student"],
        [None, None, None, "ensemble"],
    )
    assert result.scheme == "multi-teacher"
    assert [r.fit is None for r in result.rows] == [True, True, True, False]
    assert result.config == dict(temperature=4.0, alpha=0.9, cached_teacher=True, weighting="mean")
    assert "loss/multi_kd" in result["student"].fit.history[-1]
    assert list(result["ensemble"].model.members) == teachers
    named = multi_teacher_distill(mlp(seed=3), {"big": teachers[0], "small": teachers[1]}, blobs(),
                                  weighting=[0.75, 0.25], **FIT)
    check_rows(named, ["big", "small", "ensemble", "student"], ["teacher", "teacher", "ensemble", "student"])
    assert named.config["weighting"] == [0.75, 0.25]
    assert torch.equal(named["ensemble"].model.weights, torch.tensor([0.75, 0.25]))


def test_mutual_learning_rows():
    result = mutual_learning([mlp(seed=1), mlp(seed=2), mlp(hidden=8, seed=3)], blobs(), **FIT)
    check_rows(
        result,
        ["peer 0", "peer 1", "peer 2", "ensemble"],
        ["peer", "peer", "peer", "ensemble"],
        ["peer 1, peer 2", "peer 0, peer 2", "peer 0, peer 1", None],
    )
    assert result.scheme == "mutual learning" and result.config == dict(temperature=1.0, peers=3)
    assert result["peer 0"].fit is not None and result["peer 1"].fit is None and result["peer 2"].fit is None
    assert "loss/dml" in result["peer 0"].fit.history[-1]
    result = mutual_learning({"a": mlp(seed=1), "b": mlp(seed=2)}, blobs(), ensemble=False, **FIT)
    check_rows(result, ["a", "b"], ["peer", "peer"], ["b", "a"])


def test_teacher_free_reg_trains_and_logs_its_term():
    student = mlp(seed=2)
    start = snapshot(student)
    result = teacher_free_reg(student, blobs(), correct_prob=0.8, temperature=5.0, alpha=0.4, **FIT)
    check_rows(result, ["student"], ["student"], [None])
    assert not same(start, student)
    run = result["student"].fit
    assert all("loss/tf_kd_reg" in rec and rec["loss/tf_kd_reg"] >= 0 for rec in run.history)
    assert run.config["ce_weight"] == pytest.approx(0.6) and run.config["terms"] == [("tf_kd_reg", 0.4)]
    assert result.config == dict(correct_prob=0.8, temperature=5.0, alpha=0.4)


def test_teacher_free_reg_at_t1_trains_like_label_smoothing():
    # alpha = 1, T = 1: the loss is label-smoothed CE minus a constant, so the same gradients at every step
    a, b = mlp(seed=2), mlp(seed=2)
    teacher_free_reg(a, blobs(), correct_prob=0.8, temperature=1.0, alpha=1.0, seed=3, **FIT)
    fit(b, blobs(), label_smoothing=(1 - 0.8) * 3 / 2, seed=3, **FIT)
    torch.testing.assert_close(flat(a), flat(b), rtol=1e-4, atol=1e-5)


def test_virtual_teacher_term_skips_unlabeled_samples():
    term = VirtualTeacherTerm(correct_prob=0.7, temperature=3.0)
    s = torch.randn(4, 3)
    y = torch.tensor([0, UNLABELED, 2, UNLABELED])
    batch = Batch(torch.zeros(4, 8), y, torch.arange(4))
    keep = y != UNLABELED
    torch.testing.assert_close(term(batch, s), tf_kd_reg_loss(s[keep], y[keep], correct_prob=0.7, temperature=3.0))
    none = Batch(torch.zeros(2, 8), torch.full((2,), UNLABELED), torch.arange(2))
    assert term(none, s[:2]).item() == 0.0


# ---------------------------------------------------------------- what trains and what stays frozen


def test_chain_is_fit_then_distill_and_leaves_each_teacher_alone():
    # the chain must equal training model 0 with seed s, then distilling model 1 from it with seed s + 1
    m0, m1, m2 = mlp(seed=1), mlp(hidden=8, seed=2), mlp(hidden=4, seed=3)
    c0, c1, c2 = copy.deepcopy(m0), copy.deepcopy(m1), copy.deepcopy(m2)
    result = distill_chain([m0, m1, m2], blobs(), seed=4, temperature=2.0, alpha=0.5, **FIT)
    check_rows(result, ["model 0", "model 1", "model 2"], ["teacher", "assistant", "student"],
               [None, "model 0", "model 1"])
    fit(c0, blobs(), seed=4, **FIT)
    distill(c1, c0, blobs(), seed=5, temperature=2.0, alpha=0.5, **FIT)
    distill(c2, c1, blobs(), seed=6, temperature=2.0, alpha=0.5, **FIT)
    for model, ref in ((m0, c0), (m1, c1), (m2, c2)):
        assert torch.equal(flat(model), flat(ref))
    # every model is trainable again afterwards
    assert all(p.requires_grad for m in (m0, m1, m2) for p in m.parameters())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_chain_without_training_the_first_model_keeps_it_frozen_and_restored(mode):
    first = bn_mlp(seed=1)
    fit(first, blobs(), steps=10, batch_size=16, lr=1e-2)
    first.train(mode == "train")
    first[0].bias.requires_grad_(False)  # a mixed set of flags must come back as it was
    flags = [p.requires_grad for p in first.parameters()]
    before = snapshot(first)
    student = mlp(seed=2)
    start = snapshot(student)
    result = distill_chain({"t": first, "s": student}, blobs(), train_first=False, **FIT)
    assert result["t"].fit is None and result["s"].fit is not None
    assert same(before, first)
    assert [p.requires_grad for p in first.parameters()] == flags
    assert first.training is (mode == "train")
    assert not same(start, student)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("weighting", ["mean", "confidence"])
def test_multi_teacher_trains_only_the_student_and_restores_the_teachers(teachers, mode, weighting):
    bn_teacher = bn_mlp(seed=5)
    fit(bn_teacher, blobs(), steps=10, batch_size=16, lr=1e-2)
    models = [copy.deepcopy(teachers[0]), bn_teacher]
    for m in models:
        m.train(mode == "train")
        m.zero_grad(set_to_none=True)
    models[1][4].weight.requires_grad_(False)
    flags = [[p.requires_grad for p in m.parameters()] for m in models]
    before = [snapshot(m) for m in models]
    student = mlp(seed=3)
    start = snapshot(student)
    multi_teacher_distill(student, models, blobs(), weighting=weighting, cache_teacher=False, **FIT)
    for m, b, f in zip(models, before, flags):
        assert same(b, m)
        assert [p.requires_grad for p in m.parameters()] == f
        assert all(p.grad is None for p in m.parameters())
        assert m.training is (mode == "train")
    assert not same(start, student)


def test_mutual_learning_trains_every_peer():
    peers = [mlp(seed=1), mlp(seed=2), mlp(hidden=8, seed=3)]
    starts = [snapshot(p) for p in peers]
    result = mutual_learning(peers, blobs(), **FIT)
    for peer, start in zip(peers, starts):
        assert all(not torch.equal(start[k], v) for k, v in peer.state_dict().items())
        assert all(p.requires_grad for p in peer.parameters())
    assert [result[f"peer {i}"].model for i in range(3)] == peers
    # evaluating the ensemble row does not change the mode the peers are handed back in
    alone = [mlp(seed=1), mlp(seed=2), mlp(hidden=8, seed=3)]
    mutual_learning(alone, blobs(), ensemble=False, **FIT)
    for peer, other in zip(peers, alone):
        assert [m.training for m in peer.modules()] == [m.training for m in other.modules()]
        assert torch.equal(flat(peer), flat(other))  # the ensemble row is evaluated after training


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_one_backward_of_the_mutual_term_gives_each_peer_the_gradient_of_its_own_loss(T):
    peers = [mlp(seed=1), mlp(seed=2), mlp(hidden=8, seed=3)]
    data = blobs()
    batch = next(batches(data.train, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    k = len(peers)
    term = MutualLearningTerm(peers[1:], temperature=T)
    assert list(term.others) == peers[1:]  # the trainer optimizes the other peers as the term's parameters
    logits0 = peers[0](batch.x)
    value = term(batch, logits0)

    def own_loss(i):
        """L_i = CE_i + 1/(K-1) sum_{l != i} T^2 KL(p_l || p_i), the other peers held constant."""
        z = [p(batch.x) for p in peers]
        loss = F.cross_entropy(z[i], batch.y)
        for j in range(k):
            if j != i:
                p = torch.softmax(z[j].detach() / T, 1)
                log_q = torch.log_softmax(z[i] / T, 1)
                loss = loss + T * T * (p * (p.log() - log_q)).sum(1).mean() / (k - 1)
        return loss

    for i, peer in enumerate(peers):
        params = list(peer.parameters())
        expected = torch.autograd.grad(own_loss(i), params)
        # the trainer adds peer 0's cross-entropy itself; the term covers the rest
        total = value + cross_entropy(logits0, batch.y) if i == 0 else value
        got = torch.autograd.grad(total, params, retain_graph=True)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


def test_mutual_learning_term_value():
    # the term's value is L_0 - CE_0 + sum_{k >= 1} L_k
    peers = [mlp(seed=1), mlp(seed=2)]
    batch = next(batches(blobs().train, 16, shuffle=False))
    z0, z1 = peers[0](batch.x), peers[1](batch.x)
    kl = lambda p, q: (torch.softmax(p, 1) * (torch.log_softmax(p, 1) - torch.log_softmax(q, 1))).sum(1).mean()  # noqa: E731
    expected = kl(z1, z0) + F.cross_entropy(z1, batch.y) + kl(z0, z1)
    torch.testing.assert_close(MutualLearningTerm([peers[1]])(batch, z0), expected)


# ---------------------------------------------------------------- determinism


def test_born_again_is_deterministic_per_seed():
    runs = [born_again(fresh, blobs(), generations=2, seed=s, **FIT) for s in (0, 0, 1)]
    for g in range(3):
        name = f"generation {g}"
        assert torch.equal(flat(runs[0][name].model), flat(runs[1][name].model))
        assert not torch.equal(flat(runs[0][name].model), flat(runs[2][name].model))
    assert [r.accuracy for r in runs[0].rows] == [r.accuracy for r in runs[1].rows]
    untimed = lambda run: [{k: v for k, v in h.items() if k != "train_seconds"} for h in run.history]  # noqa: E731
    assert untimed(runs[0]["generation 2"].fit) == untimed(runs[1]["generation 2"].fit)


def test_multi_teacher_confidence_is_deterministic_per_seed(teachers):
    students = [mlp(seed=3) for _ in range(3)]
    results = [multi_teacher_distill(s, teachers, blobs(), weighting="confidence", seed=seed, **FIT)
               for s, seed in zip(students, (1, 1, 2))]
    assert torch.equal(flat(students[0]), flat(students[1]))
    assert not torch.equal(flat(students[0]), flat(students[2]))
    assert results[0]["student"].accuracy == results[1]["student"].accuracy
    assert [h["train_loss"] for h in results[0]["student"].fit.history] == [
        h["train_loss"] for h in results[1]["student"].fit.history
    ]


def test_mutual_learning_is_deterministic_per_seed():
    cohorts = [[mlp(seed=1), mlp(hidden=8, seed=2)] for _ in range(3)]
    results = [mutual_learning(c, blobs(), seed=seed, **FIT) for c, seed in zip(cohorts, (0, 0, 5))]
    for i in range(2):
        assert torch.equal(flat(cohorts[0][i]), flat(cohorts[1][i]))
        assert not torch.equal(flat(cohorts[0][i]), flat(cohorts[2][i]))
    assert [r.accuracy for r in results[0].rows] == [r.accuracy for r in results[1].rows]


# ---------------------------------------------------------------- budgets per stage


def test_stage_fit_overrides_the_budget_per_model():
    result = distill_chain([mlp(seed=1), mlp(seed=2), mlp(seed=3)], blobs(), steps=10, batch_size=16,
                           stage_fit=[dict(steps=30), {}, dict(lr=1e-3)])
    assert [r.fit.steps for r in result.rows] == [30, 10, 10]
    assert [r.fit.config["lr"] for r in result.rows] == [1e-3, 1e-3, 1e-3]
    # steps in stage_fit replace epochs in fit_kwargs (one epoch of 96 samples at batch 16 is 6 steps)
    result = distill_chain([mlp(seed=1), mlp(seed=2)], blobs(), epochs=1, batch_size=16, lr=1e-2,
                           stage_fit=[dict(steps=5), {}])
    assert [r.fit.steps for r in result.rows] == [5, 6]
    assert result.rows[0].fit.config["epochs"] is None and result.rows[1].fit.config["epochs"] == 1
    # and epochs in stage_fit replace steps
    result = distill_chain([mlp(seed=1), mlp(seed=2)], blobs(), steps=3, batch_size=16,
                           stage_fit=[dict(epochs=2), {}])
    assert [r.fit.steps for r in result.rows] == [12, 3]


def test_stage_fit_and_roles_are_validated():
    with pytest.raises(ValueError, match=r"stage_fit needs one mapping per model \(2\), got 1"):
        distill_chain([mlp(seed=1), mlp(seed=2)], blobs(), stage_fit=[{}], **FIT)
    with pytest.raises(ValueError, match="stage_fit cannot set seed"):
        distill_chain([mlp(seed=1), mlp(seed=2)], blobs(), stage_fit=[dict(seed=3), {}], **FIT)
    with pytest.raises(ValueError, match=r"roles needs one entry per model \(2\), got 3"):
        distill_chain([mlp(seed=1), mlp(seed=2)], blobs(), roles=["a", "b", "c"], **FIT)


# ---------------------------------------------------------------- multi-teacher equivalences


def test_multi_teacher_cached_and_live_teachers_give_the_same_student(teachers):
    for weighting in ("mean", "confidence"):
        students = []
        for cache in (True, False):
            student = mlp(seed=4)
            result = multi_teacher_distill(student, teachers, blobs(), weighting=weighting, cache_teacher=cache,
                                           seed=5, **FIT)
            assert result.config["cached_teacher"] is cache
            students.append(flat(student))
        torch.testing.assert_close(students[0], students[1], rtol=1e-5, atol=1e-6)


def test_multi_teacher_mean_of_one_teacher_is_distill(teacher):
    a, b = mlp(seed=4), mlp(seed=4)
    multi_teacher_distill(a, [teacher], blobs(), temperature=3.0, alpha=0.7, seed=2, **FIT)
    distill(b, teacher, blobs(), temperature=3.0, alpha=0.7, seed=2, **FIT)
    assert torch.equal(flat(a), flat(b))


def test_multi_teacher_fixed_weights_one_zero_is_the_first_teacher_alone(teachers):
    a, b, c = mlp(seed=4), mlp(seed=4), mlp(seed=4)
    multi_teacher_distill(a, teachers, blobs(), weighting=[1.0, 0.0], seed=2, **FIT)
    multi_teacher_distill(b, teachers[:1], blobs(), seed=2, **FIT)
    multi_teacher_distill(c, teachers, blobs(), weighting=[0.0, 1.0], seed=2, **FIT)
    assert torch.equal(flat(a), flat(b))
    assert not torch.equal(flat(a), flat(c))


def test_multi_teacher_confidence_weighting_with_unlabeled_samples(teachers):
    data = with_unlabeled(blobs(), blobs(seed=9).train.x[:32])
    student = mlp(seed=4)
    start = snapshot(student)
    result = multi_teacher_distill(student, teachers, data, weighting="confidence", alpha=0.5, **FIT)
    assert not same(start, student)
    assert all(torch.isfinite(torch.tensor(h["loss/multi_kd"])) for h in result["student"].fit.history)
    # per sample: CA-MKD weights on labeled samples, uniform 1/K on unlabeled ones
    z = torch.randn(3, 5, 3)
    y = torch.tensor([0, UNLABELED, 2, UNLABELED, 1])
    term = MultiTeacherTerm(lambda b: z, "confidence")
    w = term.sample_weights(z, y)
    keep = y != UNLABELED
    torch.testing.assert_close(w[:, keep], confidence_weights(z[:, keep], y[keep]))
    torch.testing.assert_close(w[:, ~keep], torch.full((3, 2), 1 / 3))
    all_unlabeled = term.sample_weights(z, torch.full((5,), UNLABELED))
    torch.testing.assert_close(all_unlabeled, torch.full((3, 5), 1 / 3))
    assert MultiTeacherTerm(lambda b: z, "mean").sample_weights(z, y) is None


def test_multi_teacher_term_value():
    z = torch.randn(2, 4, 3)
    y = torch.tensor([0, 1, 2, 0])
    batch = Batch(torch.zeros(4, 8), y, torch.arange(4))
    s = torch.randn(4, 3)
    term = MultiTeacherTerm(lambda b: z, "confidence", temperature=2.0)
    torch.testing.assert_close(term(batch, s), multi_teacher_kd_loss(s, z, 2.0, confidence_weights(z, y)))
    fixed = MultiTeacherTerm(lambda b: z, torch.tensor([0.3, 0.7]), temperature=2.0)
    torch.testing.assert_close(fixed(batch, s), multi_teacher_kd_loss(s, z, 2.0, torch.tensor([0.3, 0.7])))


# ---------------------------------------------------------------- the ensemble module


def test_ensemble_outputs_log_probabilities_of_the_mean():
    a, b = mlp(seed=1), mlp(hidden=8, seed=2)
    x = blobs().test.x
    with torch.no_grad():
        out = Ensemble([a, b])(x)
        torch.testing.assert_close(out.exp().sum(1), torch.ones(len(x)))
        torch.testing.assert_close(out.exp(), (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2)
        weighted = Ensemble([a, b], [0.2, 0.8])(x)
        torch.testing.assert_close(weighted.exp(), 0.2 * torch.softmax(a(x), 1) + 0.8 * torch.softmax(b(x), 1))
    assert not Ensemble([a, b])(x).requires_grad


def test_ensemble_of_identical_models_is_the_model(teacher):
    ens = Ensemble([teacher, copy.deepcopy(teacher), copy.deepcopy(teacher)])
    data = blobs()
    assert evaluate(ens, data)["accuracy"] == evaluate(teacher, data)["accuracy"]
    with torch.no_grad():
        torch.testing.assert_close(ens(data.test.x), torch.log_softmax(teacher(data.test.x), 1))


def test_evaluating_an_ensemble_restores_each_members_mode():
    a, b = mlp(seed=1), bn_mlp(seed=2)
    a.eval()
    b.train()
    ens = Ensemble([a, b])
    before = snapshot(b)
    evaluate(ens, blobs())
    assert ens.training and not a.training and b.training
    assert same(before, b)  # evaluated in eval mode: BatchNorm statistics untouched


def test_ensemble_validates_its_members_and_weights():
    a, b = mlp(seed=1), mlp(seed=2)
    with pytest.raises(ValueError, match="an ensemble needs at least one model"):
        Ensemble([])
    with pytest.raises(ValueError, match="weights must sum to 1"):
        Ensemble([a, b], [0.7, 0.7])
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        Ensemble([a, b], [1.5, -0.5])
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        Ensemble([a, b], [1.0])
    with pytest.raises(ValueError, match=r"ensemble members disagree on the number of classes: \[3, 4\]"):
        Ensemble([a, mlp(classes=4)])(torch.zeros(2, 8))


# ---------------------------------------------------------------- validation before any training


def test_a_model_with_the_wrong_classes_is_named_before_training(teachers):
    good, bad = mlp(seed=1), mlp(classes=4, seed=2)
    before = snapshot(good)
    with pytest.raises(ValueError, match="teacher 1 outputs 4 classes but blobs has 3"):
        multi_teacher_distill(good, [teachers[0], bad], blobs(), **FIT)
    with pytest.raises(ValueError, match="student outputs 4 classes but blobs has 3"):
        multi_teacher_distill(bad, teachers, blobs(), **FIT)
    with pytest.raises(ValueError, match="peer 1 outputs 4 classes but blobs has 3"):
        mutual_learning([good, bad], blobs(), **FIT)
    with pytest.raises(ValueError, match="assistant 1 outputs 4 classes"):
        teacher_assistant(copy.deepcopy(teachers[0]), [bad], mlp(seed=3), blobs(), **FIT)
    with pytest.raises(ValueError, match="model 2 outputs 4 classes"):
        distill_chain([good, mlp(seed=3), bad], blobs(), **FIT)
    with pytest.raises(ValueError, match="strong student outputs 4 classes"):
        reversed_kd(bad, good, blobs(), **FIT)
    assert same(before, good)  # the good model was first in line in every call and never trained


def test_born_again_names_a_bad_generation_before_training():
    made = []

    def make_model():
        model = mlp(classes=4 if len(made) == 2 else 3, seed=len(made))
        made.append((model, snapshot(model)))
        return model

    with pytest.raises(ValueError, match="generation 2 outputs 4 classes but blobs has 3"):
        born_again(make_model, blobs(), generations=3, **FIT)
    assert len(made) == 4
    assert all(same(start, model) for model, start in made)


def test_the_same_module_twice_is_refused(teachers):
    m = mlp(seed=1)
    before = snapshot(m)
    with pytest.raises(ValueError, match="the same module object appears twice"):
        distill_chain([m, m], blobs(), **FIT)
    with pytest.raises(ValueError, match="the same module object appears twice"):
        mutual_learning([m, mlp(seed=2), m], blobs(), **FIT)
    with pytest.raises(ValueError, match="the same module object appears twice"):
        multi_teacher_distill(m, [teachers[0], teachers[0]], blobs(), **FIT)
    with pytest.raises(ValueError, match="the same module object appears twice"):
        multi_teacher_distill(teachers[1], teachers, blobs(), **FIT)
    assert same(before, m)
    model = mlp(seed=1)
    with pytest.raises(TypeError, match="make_model must return a new nn.Module on every call"):
        born_again(lambda: model, blobs(), generations=2, **FIT)
    with pytest.raises(TypeError, match="make_model must return a new nn.Module"):
        born_again(lambda: "mlp", blobs(), **FIT)
    with pytest.raises(TypeError, match="make_model must return a new nn.Module"):
        born_again(lambda: model, blobs(), generations=1, teacher=model, **FIT)


def test_other_bad_settings_are_refused_before_training(teachers):
    m = mlp(seed=1)
    before = snapshot(m)
    with pytest.raises(ValueError, match="mutual learning needs at least two peers, got 1"):
        mutual_learning([m], blobs(), **FIT)
    with pytest.raises(ValueError, match="need at least one peer"):
        mutual_learning([], blobs(), **FIT)
    with pytest.raises(ValueError, match="mutual learning needs at least two peers"):
        MutualLearningTerm([])
    with pytest.raises(ValueError, match=r"weighting must be one of \('mean', 'confidence'\) or 2 fixed weights, got 'max'"):
        multi_teacher_distill(m, teachers, blobs(), weighting="max", **FIT)
    with pytest.raises(ValueError, match="weights must sum to 1"):
        multi_teacher_distill(m, teachers, blobs(), weighting=[0.5, 0.6], **FIT)
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        multi_teacher_distill(m, teachers, blobs(), weighting=[0.2, 0.3, 0.5], **FIT)
    with pytest.raises(ValueError, match="teacher names 'student' and 'ensemble' are reserved"):
        multi_teacher_distill(m, {"student": teachers[0]}, blobs(), **FIT)
    with pytest.raises(TypeError, match="expected several models"):
        multi_teacher_distill(m, teachers[0], blobs(), **FIT)
    with pytest.raises(TypeError, match="sets ce_weight and loss_terms itself"):
        multi_teacher_distill(m, teachers, blobs(), ce_weight=0.5, **FIT)
    with pytest.raises(ValueError, match="temperature must be"):
        multi_teacher_distill(m, teachers, blobs(), temperature=0, **FIT)
    with pytest.raises(ValueError, match=r"correct_prob must lie in \[1/C, 1\) = \[0.333, 1\)"):
        teacher_free_reg(m, blobs(), correct_prob=0.2, **FIT)
    with pytest.raises(ValueError, match="correct_prob must lie in"):
        teacher_free_reg(m, blobs(), correct_prob=1.0, **FIT)
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]"):
        teacher_free_reg(m, blobs(), alpha=1.5, **FIT)
    with pytest.raises(ValueError, match="generations must be an int >= 1, got 0"):
        born_again(fresh, blobs(), generations=0, **FIT)
    assert same(before, m)


# ---------------------------------------------------------------- device


@cuda
def test_schemes_on_cuda():
    result = born_again(fresh, blobs(), generations=2, device="cuda", **FIT)
    assert all(next(r.model.parameters()).device.type == "cuda" for r in result.rows)
    assert result["generation 2"].fit.config["device"].startswith("cuda")
    peers = [mlp(seed=1), mlp(seed=2)]
    result = mutual_learning(peers, blobs(), device="cuda", **FIT)
    assert all(next(p.parameters()).device.type == "cuda" for p in peers)
    assert 0.0 <= result["ensemble"].accuracy <= 1.0
