import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlib.data import RandomShift
from kdlib.distill import distill
from kdlib.distiller import Distiller, FeatureTerm, LogitTerm, Term, make_adapter
from kdlib.losses import kd_loss
from tiny import blobs, mlp, snapshot




def test_a_kd_logit_term_trains_the_same_student_as_distill(teacher):
    a, b = mlp(seed=2), mlp(seed=2)
    distill(a, teacher, blobs(), temperature=3.0, alpha=0.7, epochs=2, batch_size=16)
    terms = [LogitTerm(kd_loss, weight=0.7, temperature=3.0)]
    Distiller(b, teacher, terms, ce_weight=0.3).fit(blobs(), epochs=2, batch_size=16)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, msg=name)


def test_only_the_student_and_its_adapter_learn_and_the_teacher_is_restored(teacher):
    teacher.train()
    teacher.zero_grad(set_to_none=True)
    before = snapshot(teacher)
    student = mlp(hidden=8, seed=2)
    term = FeatureTerm("2:input", "2:input", F.mse_loss, weight=1.0)  # student 8 → teacher 32 features
    distiller = Distiller(student, teacher, [term])
    start = snapshot(student)
    result = distiller.fit(blobs(), epochs=2, batch_size=16)
    assert isinstance(term.adapter, nn.Sequential)
    assert term.adapter[1].in_features == 8 and term.adapter[1].out_features == 32
    adapter_start = {k: v.clone() for k, v in make_adapter((8,), (32,)).state_dict().items()}
    assert adapter_start.keys() == term.adapter.state_dict().keys()
    assert all(p.grad is not None for p in term.adapter.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(start[k], v) for k, v in student.state_dict().items())
    assert {p for p in distiller.parameters()} == {*student.parameters(), *term.adapter.parameters()}
    assert result.config["distill_terms"] == [("mse", 1.0, "FeatureTerm")]
    assert "loss/mse" in result.history[0]


def test_cached_and_live_teacher_train_the_same_student(teacher):
    runs = []
    for cache in (True, False):
        student = mlp(hidden=8, seed=3)
        terms = [
            LogitTerm(kd_loss, weight=0.5, temperature=2.0),
            FeatureTerm("1", "1", F.mse_loss, weight=0.1, name="hint"),
        ]
        result = Distiller(student, teacher, terms, cache_teacher=cache).fit(blobs(), epochs=2, batch_size=16)
        assert result.config["cached_teacher"] is cache
        runs.append(student)
    for pa, pb in zip(runs[0].parameters(), runs[1].parameters()):
        torch.testing.assert_close(pa, pb)


def test_the_teacher_runs_once_per_batch_without_a_graph(teacher):
    calls = []
    def record(module, inputs, output):
        if inputs[0].shape[0] == 16:  # training batches, not the dry runs that check shapes
            calls.append(output.requires_grad or torch.is_grad_enabled())

    hook = teacher.register_forward_hook(record)
    try:
        terms = [LogitTerm(kd_loss, name="a"), LogitTerm(kd_loss, name="b"), FeatureTerm("1", "1", F.mse_loss)]
        Distiller(mlp(hidden=32, seed=4), teacher, terms, cache_teacher=False).fit(blobs(), steps=3, batch_size=16)
    finally:
        hook.remove()
    assert calls == [False, False, False]  # 3 steps: one teacher pass each, shared by the three terms


def test_same_seed_gives_identical_students_whatever_the_rng_did_before(teacher):
    weights = []
    for noise in (0, 1000):
        student = mlp(hidden=8, seed=5)
        torch.rand(noise)  # a different global RNG state when the adapter is created
        Distiller(student, teacher, [FeatureTerm("1", "1", F.mse_loss)]).fit(blobs(), epochs=2, batch_size=16, seed=7)
        weights.append(snapshot(student))
    assert all(torch.equal(weights[0][k], v) for k, v in weights[1].items())


class Constant(Term):
    def __init__(self, warmup):
        super().__init__(weight=1.0, name="constant", warmup=warmup)

    def compute(self, out):
        return out.student_logits.sum() * 0 + 1.0


def test_warmup_ramps_the_term_linearly(teacher):
    result = Distiller(mlp(), teacher, [Constant(warmup=0.5)]).fit(blobs(), steps=4, batch_size=96, eval_every=1)
    assert [r["loss/constant"] for r in result.history] == pytest.approx([0.5, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    ("student", "teacher", "kind"),
    [((8,), (32,), nn.Linear), ((6, 14, 14), (32, 14, 14), nn.Conv2d), ((16, 5, 5), (64, 7, 7), nn.Conv2d),
     ((25, 10), (40, 10), nn.Conv1d), ((100,), (25, 10), nn.Linear), ((4, 4), (4, 4), nn.Identity)],
)
def test_make_adapter_maps_the_student_shape_to_the_teacher_shape(student, teacher, kind):
    adapter = make_adapter(student, teacher)
    assert any(isinstance(m, kind) for m in adapter.modules())
    adapter.train()
    assert adapter(torch.randn(3, *student)).shape == (3, *teacher)


def test_bad_input_gives_one_clear_error(teacher):
    student = mlp()
    with pytest.raises(ValueError, match="same module"):
        Distiller(teacher, teacher, [])
    with pytest.raises(TypeError, match="Term instances"):
        Distiller(student, teacher, [kd_loss])
    with pytest.raises(ValueError, match="unique"):
        Distiller(student, teacher, [LogitTerm(kd_loss), LogitTerm(kd_loss)])
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        LogitTerm(kd_loss, weight=-1.0)
    with pytest.raises(ValueError, match="adapter must be"):
        FeatureTerm("1", "1", F.mse_loss, adapter="conv")
    with pytest.raises(ValueError, match="no submodule 'body'"):
        Distiller(student, teacher, [FeatureTerm("body", "1", F.mse_loss)]).fit(blobs(), steps=1)
    shifted = dataclasses.replace(blobs(), augment=RandomShift(1))
    with pytest.raises(ValueError, match="cannot cache the teacher"):
        Distiller(student, teacher, [LogitTerm(kd_loss)], cache_teacher=True).fit(shifted, steps=1)
    with pytest.raises(TypeError, match="sets ce_weight"):
        Distiller(student, teacher, [LogitTerm(kd_loss)]).fit(blobs(), steps=1, ce_weight=0.5)
    with pytest.raises(RuntimeError, match="inside a Distiller"):
        LogitTerm(kd_loss)(None, torch.zeros(1, 3))
    wrong = nn.Sequential(nn.Linear(8, 5))
    with pytest.raises(ValueError, match="teacher"):
        Distiller(student, wrong, [LogitTerm(kd_loss)]).fit(blobs(), steps=1)


def test_a_term_that_cannot_work_for_the_pair_fails_before_training(teacher):
    from kdlib.losses import fitnet_loss

    student = mlp(hidden=8, seed=2)
    start = snapshot(student)
    term = FeatureTerm("1", "1", fitnet_loss, adapter=None)  # 8 student features vs 32 teacher features
    with pytest.raises(ValueError, match="term 'fitnet' cannot be computed for this pair.*adapter"):
        Distiller(student, teacher, [term]).fit(blobs(), epochs=1, batch_size=16)
    assert all(torch.equal(start[k], v) for k, v in student.state_dict().items())


def test_with_augmentation_the_teacher_runs_live_on_the_augmented_batch(teacher):
    shifted = dataclasses.replace(blobs(), augment=RandomShift(2))
    seen = []
    hook = teacher.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()) if i[0].shape[0] == 16 else None)
    batches = []
    student = mlp(hidden=8, seed=2)
    student.register_forward_hook(lambda m, i, o: batches.append(i[0].clone()) if i[0].shape[0] == 16 else None)
    try:
        result = Distiller(student, teacher, [FeatureTerm("1", "1", F.mse_loss)]).fit(shifted, steps=2, batch_size=16)
    finally:
        hook.remove()
    assert result.config["cached_teacher"] is False
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(seen, batches))  # the same augmented inputs
