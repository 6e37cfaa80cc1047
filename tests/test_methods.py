import pytest
import torch

from kdlib import models
from kdlib.distiller import FeatureTerm
from kdlib.methods import METHODS, Layers, NotApplicable, default_layers, distill_with, method_terms, standardized_dkd
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
    terms, _ = method_terms("fitnet", plain, plain, (40,), Layers(hint=("1:input",) * 2))
    assert isinstance(terms[0], FeatureTerm) and terms[0].student_layers == ("1:input",)
    terms, _ = method_terms("rkd", plain, plain, (40,), Layers(embedding=("1:input",) * 2))
    assert terms[0].teacher_layers == ("1:input",)
    with pytest.raises(ValueError, match=r"sp reads layers.last; pass Layers\(last="):
        method_terms("sp", plain, plain, (40,), Layers(hint=("1:input",) * 2))


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


def test_logit_standardization_recipes_follow_the_reference_code():
    # sunshangquan/logit-standardization-KD, tools/train.py (2024-05-18): with --logit-stand --base-temp 2
    # --kd-weight 9, KD gets weight 9 and T 2; DKD gets ALPHA * 9, BETA * 9 and T 2. mdistiller's CIFAR-100 DKD is
    # alpha 1, beta 8, T 4, CE 1; the reference config of 2024-03-10 sets KD's CE weight to 0.1.
    assert METHODS["kd_ls"].recipe == {"weight": 9.0, "T": 2.0} and METHODS["kd_ls"].ce_weight == 0.1
    assert METHODS["dkd_ls"].recipe == {"alpha": 9.0, "beta": 72.0, "T": 2.0} and METHODS["dkd_ls"].ce_weight == 1.0
    assert METHODS["dkd"].recipe == {"alpha": 1.0, "beta": 8.0, "T": 4.0} and METHODS["dkd"].ce_weight == 1.0
    assert standardized_dkd(beta=2.0) == {"alpha": 9.0, "beta": 18.0, "T": 2.0}  # mdistiller's res56 -> res20 beta
    student, teacher = models.create("mlp", 10, seed=0), models.create("mlp", 10, seed=1)
    (term,), ce = method_terms("dkd_ls", student, teacher, (40,))
    assert term.kwargs == {"alpha": 9.0, "beta": 72.0, "temperature": 2.0, "standardize": True} and ce == 1.0


def test_recipe_overrides_and_cross_entropy_weight():
    student, teacher = models.create("mlp", 10, seed=0), models.create("mlp", 10, seed=1)
    (term,), ce = method_terms("kd", student, teacher, (40,), weight=1.0, ce_weight=0.0, T=1.0)
    assert term.weight == 1.0 and term.kwargs["temperature"] == 1.0 and ce == 0.0
    (term,), _ = method_terms("dkd", student, teacher, (40,), beta=0.5, T=1.0)  # DKD's ImageNet recipe
    assert term.kwargs["beta"] == 0.5 and term.kwargs["temperature"] == 1.0 and term.kwargs["alpha"] == 1.0
    with pytest.raises(ValueError, match="has no recipe keys \\['gamma'\\]"):
        method_terms("kd", student, teacher, (40,), gamma=2.0)
    data = blobs(n_train=64, n_test=16, features=40, classes=10)
    result = distill_with("kd", student, teacher, data, steps=2, batch_size=32, recipe={"weight": 0.5, "ce_weight": 0.5})
    assert result.config["recipe"] == {"weight": 0.5, "T": 4.0, "ce_weight": 0.5} and result.config["ce_weight"] == 0.5


def test_cifar100_overrides_derive_dkd_ls_from_dkd_by_the_same_rule():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cifar100_recipe.py"
    spec = importlib.util.spec_from_file_location("cifar100_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.OVERRIDES["resnet56-resnet20"] == {"dkd": {"beta": 2.0}, "dkd_ls": {"alpha": 9.0, "beta": 18.0, "T": 2.0}}
