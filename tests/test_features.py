"""Tests for hook-based feature access (kdlib.features)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from kdlib import models
from kdlib.features import FeatureRecorder, extract_features, feature_shapes, resolve_layers


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_features_equal_submodule_outputs() -> None:
    net = small_net()
    x = torch.randn(5, 4)
    with FeatureRecorder(net, ["0", "1"]) as rec:
        logits = net(x)
    h = net[0](x)
    torch.testing.assert_close(rec.features["0"], h)
    torch.testing.assert_close(rec.features["1"], torch.relu(h))
    torch.testing.assert_close(logits, net[2](torch.relu(h)))
    assert list(rec.features) == ["0", "1"]


def test_features_follow_given_order_not_execution_order() -> None:
    net = small_net()
    with FeatureRecorder(net, ["2", "0"]) as rec:
        net(torch.randn(2, 4))
    assert list(rec.features) == ["2", "0"]


def test_features_are_references_not_copies() -> None:
    net = small_net()
    seen: dict[str, torch.Tensor] = {}
    net[2].register_forward_pre_hook(lambda m, args: seen.update(relu_out=args[0]))
    with FeatureRecorder(net, ["1"]) as rec:
        net(torch.randn(3, 4))
    assert rec.features["1"] is seen["relu_out"]
    assert rec.features["1"].data_ptr() == seen["relu_out"].data_ptr()


def test_gradients_flow_through_recorded_features() -> None:
    net = small_net()
    with FeatureRecorder(net, ["1"]) as rec:
        net(torch.randn(3, 4))
    assert rec.features["1"].requires_grad
    rec.features["1"].sum().backward()
    assert net[0].weight.grad is not None and net[2].weight.grad is None


def test_detach_stores_detached_views() -> None:
    net = small_net()
    seen: dict[str, torch.Tensor] = {}
    net[2].register_forward_pre_hook(lambda m, args: seen.update(relu_out=args[0]))
    with FeatureRecorder(net, ["1"], detach=True) as rec:
        net(torch.randn(3, 4))
    feature = rec.features["1"]
    assert not feature.requires_grad and feature.grad_fn is None
    assert feature.data_ptr() == seen["relu_out"].data_ptr()  # detach is a view: still no copy


def test_latest_output_and_clear() -> None:
    net = small_net()
    rec = FeatureRecorder(net, ["0"])
    net(torch.randn(2, 4))
    x = torch.randn(7, 4)
    net(x)
    torch.testing.assert_close(rec.features["0"], net[0](x))
    rec.clear()
    assert rec.features == {}
    rec.remove()


def test_hooks_removed_on_exit_and_by_remove() -> None:
    net = small_net()
    with FeatureRecorder(net, ["0", "1", "2"]) as rec:
        assert not no_hooks_left(net) and rec.active
    assert no_hooks_left(net) and not rec.active
    rec2 = FeatureRecorder(net, ["0"])
    assert not no_hooks_left(net)
    rec2.remove()
    rec2.remove()  # idempotent
    assert no_hooks_left(net)
    net(torch.randn(1, 4))
    assert rec2.features == {}


def test_hooks_removed_after_exception() -> None:
    net = small_net()
    with pytest.raises(RuntimeError, match="boom"), FeatureRecorder(net, ["0", "1"]):
        net(torch.randn(2, 4))
        raise RuntimeError("boom")
    assert no_hooks_left(net)
    # An error inside the forward pass itself (wrong input size) also leaves no hooks behind.
    with pytest.raises(RuntimeError), FeatureRecorder(net, ["0"]):
        net(torch.randn(2, 5))
    assert no_hooks_left(net)


def test_default_layers_from_feature_layers() -> None:
    model = models.create("resnet8")
    with FeatureRecorder(model) as rec:
        model(torch.randn(2, 3, 32, 32))
    assert list(rec.features) == ["layer1", "layer2", "layer3"]
    assert rec.features["layer3"].shape == (2, 64, 8, 8)


def test_model_without_feature_layers_needs_names() -> None:
    with pytest.raises(ValueError, match="pass layer names.*0, 1, 2"):
        FeatureRecorder(small_net())


def test_unknown_layer_lists_close_matches() -> None:
    model = models.create("resnet8")
    with pytest.raises(ValueError, match="no submodule 'layr2'.*close matches: layer2"):
        FeatureRecorder(model, ["layer1", "layr2"])
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="sequence of names"):
        FeatureRecorder(model, "layer1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        FeatureRecorder(model, [])
    with pytest.raises(ValueError, match="more than once: layer1"):
        FeatureRecorder(model, ["layer1", "layer2", "layer1"])


def test_nested_dotted_names() -> None:
    model = models.create("resnet8")
    assert resolve_layers(model, ["layer2.0.conv1", "layer3.0.downsample.1"]) == (
        "layer2.0.conv1",
        "layer3.0.downsample.1",
    )
    _, feats = extract_features(model, torch.randn(2, 3, 32, 32), ["layer2.0.conv1"])
    assert feats["layer2.0.conv1"].shape == (2, 32, 16, 16)


def test_torchvision_resnet18() -> None:
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    layers = ["layer1", "layer2", "layer3", "layer4"]
    x = torch.randn(2, 3, 64, 64)
    logits, feats = extract_features(net, x, layers)
    assert logits.shape == (2, 10)
    assert [f.shape[1:] for f in feats.values()] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    torch.testing.assert_close(net.eval()(x), extract_features(net, x, layers)[0])
    assert no_hooks_left(net)


def test_hooks_agree_with_torchvision_feature_extraction() -> None:
    from torchvision.models.feature_extraction import create_feature_extractor

    model = models.create("resnet8").eval()
    x = torch.randn(2, 3, 32, 32)
    traced = create_feature_extractor(model, {name: name for name in model.feature_layers})(x)
    _, hooked = extract_features(model, x)
    for name in model.feature_layers:
        torch.testing.assert_close(hooked[name], traced[name])


def test_extract_features_logits_match_forward() -> None:
    model = models.create("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    logits, feats = extract_features(model, x)
    torch.testing.assert_close(logits, model(x))
    assert list(feats) == list(model.feature_layers)
    _, detached = extract_features(model, x, detach=True)
    assert all(not f.requires_grad for f in detached.values())


def test_feature_shapes_restores_modes_and_leaves_bn_stats() -> None:
    model = models.create("resnet8")
    model.train()
    model.layer2.eval()  # a mixed state, as with frozen BatchNorm
    before = {m: m.training for m in model.modules()}
    stats = model.bn1.running_mean.clone()
    shapes = feature_shapes(model, (3, 32, 32))
    assert shapes == {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8)}
    assert {m: m.training for m in model.modules()} == before
    torch.testing.assert_close(model.bn1.running_mean, stats)
    assert no_hooks_left(model)


def test_feature_shapes_explicit_layers_and_tuple_outputs() -> None:
    class TwoHeads(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x.sum(-1)

    net = nn.Sequential(nn.Linear(3, 5), TwoHeads())
    net.eval()
    shapes = feature_shapes(net, (7, 3), ["0", "1"], device="cpu")
    assert shapes == {"0": (7, 5), "1": ((7, 5), (7,))}
    assert not net.training


def test_detach_handles_tuple_outputs() -> None:
    gru = nn.GRU(3, 4, batch_first=True)
    with FeatureRecorder(nn.Sequential(gru), ["0"], detach=True) as rec:
        rec.model(torch.randn(2, 6, 3))
    out, h = rec.features["0"]
    assert not out.requires_grad and not h.requires_grad


def test_inplace_modification_is_reported() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
    with FeatureRecorder(net, ["0"]) as rec:
        with torch.no_grad():
            net(torch.randn(3, 4))
        with pytest.warns(RuntimeWarning, match="modified in place"):
            rec.features  # noqa: B018
    with FeatureRecorder(net, ["1"]) as rec, warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            net(torch.randn(3, 4))
        assert rec.features["1"].min() >= 0


def test_works_under_inference_mode() -> None:
    model = models.create("mlp")
    with torch.inference_mode(), FeatureRecorder(model) as rec:
        model(torch.randn(2, 40))
    assert rec.features["hidden1"].shape == (2, 100)


def test_repr_mentions_state() -> None:
    rec = FeatureRecorder(small_net(), ["0"])
    assert "active" in repr(rec)
    rec.remove()
    assert "removed" in repr(rec)


def test_input_suffix_records_what_the_module_receives():
    model = models.create("lenet5", 10, seed=0)
    x = torch.randn(3, 1, 28, 28)
    with FeatureRecorder(model, ["fc:input", "hidden2"]) as rec:
        logits = model(x)
    torch.testing.assert_close(rec.features["fc:input"], rec.features["hidden2"])
    torch.testing.assert_close(model.fc(rec.features["fc:input"]), logits)
    assert feature_shapes(model, model.input_shape, ["fc:input"]) == {"fc:input": (84,)}


def test_input_suffix_of_an_unknown_module_names_the_module():
    model = models.create("lenet5", 10)
    with pytest.raises(ValueError, match="no submodule 'head'"):
        resolve_layers(model, ["head:input"])
