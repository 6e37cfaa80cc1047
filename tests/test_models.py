"""Tests for the model registry and the model zoo (kdlib.models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlib import models
from kdlib.features import feature_shapes

LANGUAGE_MODELS = {"decoder_lm", "gpt_mini", "gpt_micro"}  # token ids in, (N, L, vocabulary) out
ALL = [name for name in models.available() if name not in LANGUAGE_MODELS]
# Big enough that tests run them once with batch 1 only.
BIG = {"resnet44", "resnet56", "resnet110", "resnet32x4", "wrn_40_2"}

EXPECTED_NAMES = {
    "mlp", "mnist1d_cnn", "lenet5", "cnn", "resnet", "wrn",
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
}  # fmt: skip


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_all_models() -> None:
    assert set(models.available()) == EXPECTED_NAMES | LANGUAGE_MODELS
    assert models.available() == sorted(models.available())


@pytest.mark.parametrize("name", sorted(LANGUAGE_MODELS))
def test_language_models_map_tokens_to_next_token_logits(name: str) -> None:
    model = models.create(name, num_classes=50, seed=0, context=16)
    out = model(torch.randint(0, 50, (2, 16)))
    assert out.shape == (2, 16, 50) and model.fc.out_features == 50
    assert list(feature_shapes(model, (16,), input_dtype=torch.int64).values())[0] == (16, model.token.embedding_dim)


def test_the_student_language_model_is_several_times_smaller_than_the_teacher() -> None:
    teacher, student = models.create("gpt_mini", num_classes=96), models.create("gpt_micro", num_classes=96)
    assert n_params(teacher) >= 4 * n_params(student)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_output_shape_on_native_input(name: str, num_classes: int) -> None:
    model = models.create(name, num_classes=num_classes)
    batch = 1 if name in BIG else 2
    out = model(torch.randn(batch, *model.input_shape))
    assert out.shape == (batch, num_classes)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == num_classes


@pytest.mark.parametrize("name", ALL)
def test_feature_layers_resolve_and_run(name: str) -> None:
    model = models.create(name)
    modules = dict(model.named_modules())
    assert isinstance(model.feature_layers, tuple) and model.feature_layers
    assert all(layer in modules for layer in model.feature_layers)
    shapes = feature_shapes(model, model.input_shape)
    assert list(shapes) == list(model.feature_layers)


EXACT_FEATURE_SHAPES = [
    ("mlp", {}, {"hidden1": (100,), "hidden2": (100,)}),
    ("mlp", {"input_shape": (1, 28, 28), "hidden": (300, 100)}, {"hidden1": (300,), "hidden2": (100,)}),
    ("mnist1d_cnn", {}, {"block1": (25, 19), "block2": (25, 10), "block3": (25, 5)}),
    ("lenet5", {}, {"block1": (6, 14, 14), "block2": (16, 5, 5), "hidden1": (120,), "hidden2": (84,)}),
    (
        "lenet5",
        {"in_channels": 3, "input_size": 32},
        {"block1": (6, 14, 14), "block2": (16, 5, 5), "hidden1": (120,), "hidden2": (84,)},
    ),
    ("cnn", {}, {"block1": (32, 14, 14), "block2": (64, 7, 7), "block3": (128, 4, 4)}),
    ("resnet20", {}, {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8)}),
    (
        "resnet20",
        {"in_channels": 1, "input_size": 28},
        {"layer1": (16, 28, 28), "layer2": (32, 14, 14), "layer3": (64, 7, 7)},
    ),
    ("resnet8x4", {}, {"layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8)}),
    ("wrn_16_2", {}, {"layer1": (32, 32, 32), "layer2": (64, 16, 16), "layer3": (128, 8, 8)}),
    (
        "wrn_16_1",
        {"in_channels": 1, "input_size": 28},
        {"layer1": (16, 28, 28), "layer2": (32, 14, 14), "layer3": (64, 7, 7)},
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), EXACT_FEATURE_SHAPES)
def test_documented_feature_shapes(name: str, kwargs: dict, expected: dict) -> None:
    model = models.create(name, **kwargs)
    assert feature_shapes(model, model.input_shape) == expected


# Parameter counts for 100 classes as published with RepDistiller / CRD (Tian et al. 2020), in millions.
REPDISTILLER_PARAMS_M = {
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
}


@pytest.mark.parametrize(("name", "millions"), REPDISTILLER_PARAMS_M.items())
def test_param_counts_match_repdistiller(name: str, millions: float) -> None:
    assert n_params(models.create(name, num_classes=100)) == pytest.approx(millions * 1e6, rel=0.01)


@pytest.mark.parametrize(
    ("name", "kwargs", "count"),
    [
        ("mlp", {}, 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10),
        ("mlp", {"input_shape": 784, "hidden": ()}, 7850),
        ("mnist1d_cnn", {}, 5210),  # ConvBase in the mnist1d repository
        ("lenet5", {}, 61706),
        ("resnet20", {}, 272474),
    ],
)
def test_exact_param_counts(name: str, kwargs: dict, count: int) -> None:
    assert n_params(models.create(name, **kwargs)) == count


def test_generic_resnet_reproduces_named_ones() -> None:
    pairs = [("resnet20", {"depth": 20}), ("resnet8x4", {"depth": 8, "width": 4}), ("resnet110", {"depth": 110})]
    for name, kwargs in pairs:
        named, generic = models.create(name), models.create("resnet", **kwargs)
        assert [(n, p.shape) for n, p in named.named_parameters()] == [
            (n, p.shape) for n, p in generic.named_parameters()
        ]


def test_generic_wrn_matches_shortcut() -> None:
    assert n_params(models.create("wrn", depth=40, widen=2)) == n_params(models.create("wrn_40_2"))


@pytest.mark.parametrize("name", [n for n in ALL if n not in BIG])
def test_gradient_reaches_every_parameter(name: str) -> None:
    model = models.create(name)
    model(torch.randn(2, *model.input_shape)).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", ALL)
def test_wrong_input_shape_raises_one_clear_error(name: str) -> None:
    model = models.create(name)
    bad = (*model.input_shape[:-1], model.input_shape[-1] + 3)
    with pytest.raises(ValueError, match="expects input of shape") as info:
        model(torch.zeros(2, *bad))
    assert str(tuple(model.input_shape)).strip("(),") in str(info.value)
    assert str((2, *bad)) in str(info.value)


def test_mlp_error_names_expected_and_got() -> None:
    model = models.create("mlp")
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 40\).*got \(5, 784\)"):
        model(torch.zeros(5, 784))


def test_missing_batch_dimension_hint() -> None:
    model = models.create("lenet5")
    with pytest.raises(ValueError, match="missing batch dimension"):
        model(torch.zeros(1, 28, 28))


def test_alternative_input_layouts() -> None:
    mlp = models.create("mlp", input_shape=(1, 28, 28), hidden=(32,))
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(mlp(x), mlp(x.flatten(1)))
    cnn1d = models.create("mnist1d_cnn")
    s = torch.randn(3, 40)
    torch.testing.assert_close(cnn1d(s), cnn1d(s.unsqueeze(1)))


def test_unknown_name_lists_known_names_and_suggests() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnt20'") as info:
        models.create("resnt20")
    message = str(info.value)
    assert "Did you mean 'resnet20'?" in message
    assert all(name in message for name in ALL)


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.5, True, "10", None])
def test_invalid_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        models.create("mlp", num_classes=num_classes)  # type: ignore[arg-type]


def test_unknown_option_names_accepted_ones() -> None:
    with pytest.raises(ValueError, match="unknown option.*widht.*accepts: .*width"):
        models.create("resnet", widht=2)
    with pytest.raises(ValueError, match="accepts: in_channels, input_size$"):
        models.create("resnet20", depth=32)


def test_seed_gives_identical_weights_and_keeps_global_rng() -> None:
    state = torch.random.get_rng_state()
    a, b = models.create("lenet5", seed=3), models.create("lenet5", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    c = models.create("lenet5", seed=4)
    assert not torch.equal(a.fc.weight, c.fc.weight)
    with pytest.raises(ValueError, match="seed"):
        models.create("lenet5", seed=-1)


def test_mlp_width_depth_shortcuts() -> None:
    assert models.create("mlp", width=64, depth=3).hidden_sizes == (64, 64, 64)
    assert models.create("mlp", depth=1).hidden_sizes == (100,)
    assert models.create("mlp", width=800).feature_layers == ("hidden1", "hidden2")
    with pytest.raises(ValueError, match="not both"):
        models.create("mlp", hidden=(10,), width=5)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet", {"depth": 21}),
        ("wrn", {"depth": 20}),
        ("lenet5", {"input_size": 30}),
        ("mlp", {"hidden": (10, 0)}),
        ("mlp", {"dropout": 1.0}),
        ("cnn", {"channels": ()}),
        ("resnet", {"width": 0}),
    ],
)
def test_invalid_options_raise_value_error(name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        models.create(name, **kwargs)


def test_dropout_only_in_training() -> None:
    model = models.create("wrn_16_1", dropout=0.3).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), model(x))
    mlp = models.create("mlp", dropout=0.5).eval()
    s = torch.randn(4, 40)
    torch.testing.assert_close(mlp(s), mlp(s))


def test_register_custom_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))

    @models.register("tiny")
    def tiny(num_classes: int = 10, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(4, width), nn.ReLU(), nn.Linear(width, num_classes))

    assert "tiny" in models.available()
    assert models.create("tiny", num_classes=3, width=5)(torch.zeros(2, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="already registered"):
        models.register("tiny")(tiny)
    with pytest.raises(ValueError, match="accepts: width"):
        models.create("tiny", depth=2)


@pytest.mark.parametrize("name", ["mlp", "mnist1d_cnn", "lenet5", "cnn", "resnet8", "wrn_16_1"])
def test_fx_symbolic_trace_matches_eager(name: str) -> None:
    # FX tracing is what torch.ao FX quantization and torchvision's feature_extraction rely on.
    model = models.create(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *model.input_shape)
    torch.testing.assert_close(traced(x), model(x))


def test_docstrings_cite_papers() -> None:
    assert "LeCun" in models.LeNet5.__doc__
    assert "He et al. 2016" in models.CifarResNet.__doc__
    assert "Zagoruyko" in models.WideResNet.__doc__
    assert "Greydanus" in models.MNIST1DCNN.__doc__
    for name in ALL:
        builder = models._REGISTRY[name]
        assert "Expected input" in (builder.__doc__ or ""), name
