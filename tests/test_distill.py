import pytest
import torch

from kdlib.data import Dataset, batches
from kdlib.distill import KDTerm, cached_teacher_logits, distill, frozen
from kdlib.losses import kd_loss, teacher_log_probs
from kdlib.train import fit
from tiny import blobs, mlp, snapshot




def test_distill_trains_only_the_student_and_restores_the_teacher(teacher):
    before = snapshot(teacher)
    teacher.train()
    student = mlp(seed=2)
    start = snapshot(student)
    result = distill(student, teacher, blobs(), epochs=3, batch_size=16, temperature=2.0, alpha=0.7)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert teacher.training  # mode restored
    assert all(p.requires_grad for p in teacher.parameters())  # flags restored
    assert any(not torch.equal(start[k], v) for k, v in student.state_dict().items())
    assert result.config["temperature"] == 2.0 and result.config["alpha"] == 0.7
    assert result.config["cached_teacher"] is True
    assert result.config["ce_weight"] == pytest.approx(0.3)
    assert "loss/kd" in result.history[0]


def test_teacher_never_builds_a_graph(teacher):
    seen = []
    hook = teacher.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.requires_grad)))
    try:
        distill(mlp(seed=3), teacher, blobs(), epochs=1, batch_size=32, cache_teacher=False)
    finally:
        hook.remove()
    assert seen and all(not grad and not req for grad, req in seen)


def test_cached_and_live_teacher_give_the_same_student(teacher):
    runs = []
    for cache in (True, False):
        student = mlp(seed=4)
        result = distill(student, teacher, blobs(), epochs=2, batch_size=16, seed=5, cache_teacher=cache)
        runs.append((torch.cat([p.flatten() for p in student.parameters()]), result.history[-1]["train_loss"]))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-5)


def test_alpha_zero_is_plain_training(teacher):
    a, b = mlp(seed=6), mlp(seed=6)
    distill(a, teacher, blobs(), epochs=2, batch_size=16, seed=1, alpha=0.0)
    fit(b, blobs(), epochs=2, batch_size=16, seed=1)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_cached_logits_and_log_probs_give_the_kd_loss_by_index(teacher):
    data = blobs()
    cached = cached_teacher_logits(teacher, data)
    batch = next(batches(data.train, 10, shuffle=True, generator=torch.Generator().manual_seed(0)))
    with frozen(teacher), torch.no_grad():
        torch.testing.assert_close(cached[batch.index], teacher(batch.x))
    s = torch.randn(10, 3, requires_grad=True)
    by_logits = KDTerm(lambda b: cached[b.index], temperature=3.0)(batch, s)
    log_p = teacher_log_probs(cached, 3.0)
    by_log_probs = KDTerm(None, temperature=3.0, teacher_log_probs=lambda b: log_p[b.index])(batch, s)
    torch.testing.assert_close(by_logits, kd_loss(s, cached[batch.index], 3.0))
    torch.testing.assert_close(by_log_probs, by_logits)
    g1, = torch.autograd.grad(by_logits, s)
    g2, = torch.autograd.grad(by_log_probs, s)
    torch.testing.assert_close(g1, g2)


def test_augmented_data_uses_a_live_teacher_and_refuses_the_cache(teacher):
    data = blobs()
    noisy = Dataset(data.name, data.train, data.test, 3, augment=lambda x, g: x + 0.1 * torch.randn(x.shape, generator=g))
    result = distill(mlp(seed=7), teacher, noisy, epochs=1, batch_size=16)
    assert result.config["cached_teacher"] is False
    with pytest.raises(ValueError, match="augments its training inputs"):
        distill(mlp(seed=7), teacher, noisy, epochs=1, cache_teacher=True)


def test_bad_input_errors(teacher):
    data = blobs()
    with pytest.raises(ValueError, match="teacher outputs 3 classes but blobs has 4"):
        four = Dataset("blobs", data.train, data.test, 4)
        distill(mlp(classes=4), teacher, four, epochs=1)
    with pytest.raises(ValueError, match="student outputs 5 classes but blobs has 3"):
        distill(mlp(classes=5), teacher, data, epochs=1)
    with pytest.raises(ValueError, match="temperature must be"):
        distill(mlp(), teacher, data, epochs=1, temperature=0)
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]"):
        distill(mlp(), teacher, data, epochs=1, alpha=1.2)
    with pytest.raises(TypeError, match="use alpha= and extra_terms="):
        distill(mlp(), teacher, data, epochs=1, ce_weight=0.5)


def test_transfer_set_inputs_reach_only_the_kd_term(teacher):
    from kdlib.data import with_unlabeled

    data = blobs()
    transfer = with_unlabeled(data, blobs(seed=9).train.x)
    result = distill(mlp(seed=8), teacher, transfer, epochs=2, batch_size=16, alpha=0.5)
    assert result.config["cached_teacher"] is True and "loss/kd" in result.history[-1]
