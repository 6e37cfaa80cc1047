import pytest
import torch
from tiny import blobs, mlp

from kdlib import plot
from kdlib.distill import distill
from kdlib.fidelity import Fidelity, fidelity_monitor, kl_teacher_student
from kdlib.train import fit


def test_kl_teacher_student_by_formula():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    p, q = t.softmax(1), s.softmax(1)
    assert kl_teacher_student(s, t) == pytest.approx(float((p * (p / q).log()).sum(1).mean()), rel=1e-5)
    assert float(kl_teacher_student(t, t)) == pytest.approx(0.0, abs=1e-7)
    assert float(kl_teacher_student(t + 3.0, t)) == pytest.approx(0.0, abs=1e-6)  # shift invariant (softmax)


def test_a_copy_of_the_teacher_has_full_fidelity(teacher):
    data = blobs()
    monitor = fidelity_monitor(teacher, data, samples=50)
    copy = mlp(hidden=32, seed=1)
    copy.load_state_dict(teacher.state_dict())
    out = monitor(copy)
    assert out["fidelity/train_agreement"] == 1.0 and out["fidelity/test_agreement"] == 1.0
    assert out["fidelity/train_kl"] == pytest.approx(0.0, abs=1e-6)
    assert monitor.inputs["train"].shape[0] == 50
    other = monitor(mlp(hidden=32, seed=5))  # an untrained model disagrees
    assert other["fidelity/test_kl"] > 0.1 and other["fidelity/test_agreement"] < 1.0


def test_fidelity_needs_inputs_and_a_sample_count(teacher):
    with pytest.raises(ValueError, match="at least one"):
        Fidelity(teacher, {})
    with pytest.raises(ValueError, match="positive int"):
        fidelity_monitor(teacher, blobs(), samples=0)


def test_distill_records_fidelity_and_it_improves(teacher):
    data = blobs()
    result = distill(mlp(seed=3), teacher, data, epochs=6, batch_size=16, lr=1e-2, alpha=1.0, temperature=1.0)
    first, last = result.history[0], result.history[-1]
    keys = {"fidelity/train_agreement", "fidelity/train_kl", "fidelity/test_agreement", "fidelity/test_kl"}
    assert keys <= set(last)
    assert last["fidelity/train_kl"] < first["fidelity/train_kl"]
    quiet = distill(mlp(seed=3), teacher, data, epochs=1, batch_size=16, fidelity=False)
    assert not any(k.startswith("fidelity/") for k in quiet.history[-1])
    fig = plot.fidelity({"KD": result.history})
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    with pytest.raises(KeyError, match="fidelity/train_agreement"):
        plot.fidelity({"alone": fit(mlp(), data, epochs=1).history})


def test_fit_monitors_join_the_history_and_must_be_callable():
    data = blobs()
    result = fit(mlp(), data, epochs=2, batch_size=32, monitors=[lambda model: {"probe": 1.5}])
    assert all(r["probe"] == 1.5 for r in result.history)
    with pytest.raises(TypeError, match="monitors must be callables"):
        fit(mlp(), data, epochs=1, monitors=[3])
