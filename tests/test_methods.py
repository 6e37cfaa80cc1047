import pytest
import torch

from kdlib import models
from kdlib.distiller import FeatureTerm
from kdlib.methods import METHODS, Layers, NotApplicable, default_layers, distill_with, method_terms
from kdlib.train import fit
from tiny import blobs


def test_default_layers_pair_maps_of_the_same_size():
    teacher = models.create("cnn", 10)
    student = models.create("lenet5", 10)
    layers = default_layers(student, teacher, (1, 28, 28))
    assert layers.maps == (("block1", "block1"),)  # 14x14 in both; lenet's 5x5 block2 has no 5x5 partner
    assert layers.hint == ("block1", "block1")
    assert layers.last == ("hidden2", "block3")
    assert layers.embedding == ("fc:input", "fc:input")


def test_an_mlp_student_has_no_maps_and_attention_transfer_says_so():
    teacher, student = models.create("mnist1d_cnn", 10), models.create("mlp", 10)
    layers = default_layers(student, teacher, (40,))
    assert layers.maps == () and layers.hint == ("hidden1", "block2")
    with pytest.raises(NotApplicable, match="same spatial size"):
        method_terms("at", student, teacher, (40,))


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown distillation method 'kdd'.*dkd"):
        method_terms("kdd", None, None, (40,))


def test_a_model_without_feature_layers_needs_explicit_layers():
    import torch.nn as nn

    plain = nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
    with pytest.raises(ValueError, match="pass layers="):
        method_terms("fitnet", plain, models.create("mlp", 10), (40,))
    terms, _ = method_terms("fitnet", plain, plain, (40,), Layers(("1:input",) * 2, (), ("1",) * 2, ("1:input",) * 2))
    assert isinstance(terms[0], FeatureTerm) and terms[0].student_layers == ("1:input",)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_a_student_for_a_few_steps(name):
    data = blobs(n_train=64, n_test=16, features=40, classes=10)
    teacher = models.create("mnist1d_cnn", 10, seed=0)
    fit(teacher, data, steps=2, batch_size=32)
    student = models.create("mnist1d_cnn", 10, channels=8, seed=1)
    before = [p.clone() for p in student.parameters()]
    result = distill_with(name, student, teacher, data, steps=3, batch_size=32, seed=0)
    assert result.config["method"] == name
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    expected_terms = {t.name for t in method_terms(name, student, teacher, (40,))[0]}
    assert expected_terms == {k.removeprefix("loss/") for k in result.history[-1] if k.startswith("loss/")}
