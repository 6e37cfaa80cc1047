import pytest
import torch
from torch import nn

import kdlib.prune.structured as structured
from kdlib import models
from kdlib.data import Dataset, Split
from kdlib.profile import count_flops
from kdlib.train import evaluate, fit
from tiny import blobs, snapshot


def chain(bias: bool = False, flatten_head: bool = False, seed: int = 0) -> nn.Sequential:
    """A plain conv chain for 1×8×8 inputs with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)

    def block(cin: int, cout: int, pool: bool) -> nn.Sequential:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU()]
        return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

    body = [block(1, 8, True), block(8, 16, True), nn.Conv2d(16, 12, 3, padding=1, bias=bias), nn.ReLU()]
    if flatten_head:
        head = [nn.Flatten(), nn.Linear(12 * 2 * 2, 3)]
    else:
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3)]
    model = nn.Sequential(*body, *head)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


X = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.7])
@pytest.mark.parametrize("bias,flatten_head", [(False, False), (True, True)])
def test_from_scratch_chain_matches_torch_pruning(ratio, bias, flatten_head):
    model = chain(bias, flatten_head)
    before = snapshot(model)
    mine, kept = structured.prune_conv_chain_l1(model, ratio)
    library = structured.prune_channels(model, X, ratio, importance="l1")
    expected = {n: list(range(m.out_channels)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert kept == (library.kept if ratio > 0 else expected)
    assert structured.channels(mine) == library.channels_after
    with torch.no_grad():
        torch.testing.assert_close(mine(X), library.model(X), rtol=0, atol=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input untouched
    assert all(len(k) == int(model.get_submodule(n).out_channels * (1 - ratio)) for n, k in kept.items())


def test_from_scratch_works_on_kdlib_cnn_viewed_as_a_chain():
    cnn = models.create("cnn", seed=0, channels=(8, 16, 16)).eval()
    as_chain = nn.Sequential(cnn.stem, cnn.block1, cnn.block2, cnn.block3, cnn.pool, nn.Flatten(), cnn.fc)
    x = torch.randn(2, 1, 28, 28)
    mine, _ = structured.prune_conv_chain_l1(as_chain, 0.5)
    library = structured.prune_channels(cnn, x, 0.5)  # the CNN itself, traced by DepGraph
    with torch.no_grad():
        torch.testing.assert_close(mine(x), library.model(x))
    assert library.channels_after["fc"] == 10 and library.channels_after["stem.0"] == 4


@pytest.mark.parametrize("importance", ["l1", "bn_scale"])
def test_structural_removal_equals_masking_channels_that_output_zero(importance):
    model = chain(bias=True)
    ratio = 0.5
    zeroed = {"0.0": [1, 4, 5, 7], "1.0": [0, 2, 3, 8, 9, 10, 13, 15]}  # half of each conv+BN layer
    with torch.no_grad():
        for conv_name, idx in zeroed.items():
            conv = model.get_submodule(conv_name)
            bn = model.get_submodule(conv_name[:-1] + "1")
            conv.weight[idx] = 0
            conv.bias[idx] = 0
            bn.weight[idx] = 0  # BN output = beta + gamma (0 - mean) / sqrt(var + eps) = 0 for these channels
            bn.bias[idx] = 0
        masked = model(X)
    ignored = [model[-1], model[2]]  # keep the last conv (no BN) whole, so only the zeroed channels go
    result = structured.prune_channels(model, X, ratio, importance=importance, ignored_layers=ignored)
    for name, idx in zeroed.items():
        assert result.kept[name] == sorted(set(range(model.get_submodule(name).out_channels)) - set(idx))
    assert result.channels_after["2"] == 12
    with torch.no_grad():
        torch.testing.assert_close(result.model(X), masked, rtol=1e-5, atol=1e-6)


def test_params_and_flops_drop_by_about_the_square_of_the_kept_fraction():
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()]
    for cin in (8, 64, 64):
        convs += [nn.Conv2d(cin, 64, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4))
    x = torch.randn(2, 3, 8, 8)
    for ratio in (0.25, 0.5):
        result = structured.prune_channels(model, x, ratio)
        expected = (1 - ratio) ** 2
        assert result.params_ratio == pytest.approx(expected, rel=0.05)
        assert result.flops_ratio == pytest.approx(expected, rel=0.05)
        assert result.flops_before == count_flops(model, x)
        assert result.params_before > result.params_after == sum(p.numel() for p in result.model.parameters())
        assert result.channels_before["6"] == 64 and result.channels_after["6"] == int(64 * (1 - ratio))
        assert result.channels_after["10"] == 4  # the classifier keeps its outputs


def test_pruned_model_still_trains_and_evaluates():
    data = blobs(n_train=32, n_test=16, features=64, classes=3)
    images = Dataset(
        "blob-images",
        Split(data.train.x.view(-1, 1, 8, 8), data.train.y),
        Split(data.test.x.view(-1, 1, 8, 8), data.test.y),
        data.num_classes,
    )
    model = chain().train()
    result = structured.prune_channels(model, images.train.x[:4], 0.5, importance="taylor", data=images)
    pruned = result.model
    assert pruned.training  # the mode is restored
    assert all(p.grad is None for p in pruned.parameters())
    before = snapshot(pruned)
    fit(pruned, images, steps=1, batch_size=16, progress=False)
    assert any(not torch.equal(v, pruned.state_dict()[k]) for k, v in before.items())
    metrics = evaluate(pruned, images)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 16


def test_mlp_hidden_neurons_are_pruned_and_round_to_is_respected():
    mlp = models.create("mlp", seed=0, hidden=(20, 12), input_shape=8)
    result = structured.prune_channels(mlp, torch.randn(3, 8), 0.3, round_to=4)
    assert result.channels_after == {"hidden1.0": 12, "hidden2.0": 8, "fc": 10}
    assert result.model(torch.randn(2, 8)).shape == (2, 10)
    # bn_scale has no BatchNorm to score in an MLP: nothing is pruned
    assert structured.prune_channels(mlp, torch.randn(3, 8), 0.3, importance="bn_scale").kept == {}


def test_bad_inputs_give_one_clear_error_each():
    model = chain()
    for ratio in (-0.1, 1.0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
            structured.prune_channels(model, X, ratio)
        with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
            structured.prune_conv_chain_l1(model, ratio)
    with pytest.raises(ValueError, match="importance must be one of"):
        structured.prune_channels(model, X, 0.5, importance="l2")
    with pytest.raises(ValueError, match="taylor importance needs data"):
        structured.prune_channels(model, X, 0.5, importance="taylor")
    with pytest.raises(ValueError, match="round_to must be a positive integer"):
        structured.prune_channels(model, X, 0.5, round_to=0)

    one_channel = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))
    with pytest.raises(ValueError, match="would remove every channel of layer '0' \\(1 channel\\)"):
        structured.prune_channels(one_channel, X, 0.5)
    with pytest.raises(ValueError, match="would remove every channel of layer '0' \\(1 channel\\)"):
        structured.prune_conv_chain_l1(one_channel, 0.5)
    three = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(108, 3))
    with pytest.raises(ValueError, match="every channel of layer '0' \\(3 channels\\)"):
        structured.prune_channels(three, X, 0.7)  # int(3 * 0.3) = 0
    every = r"round_to=16 would remove every channel of layers '0.0' \(8 channels\), '1.0' \(16 channels\), '2'"
    with pytest.raises(ValueError, match=every):
        structured.prune_channels(model, X, 0.5, round_to=16)

    for no_layers in (nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), nn.Sequential(nn.Flatten(), nn.ReLU())):
        with pytest.raises(ValueError, match="has no prunable Conv/Linear layer"):
            structured.prune_channels(no_layers, X, 0.5)

    with pytest.raises(ValueError, match="needs an nn.Sequential"):
        structured.prune_conv_chain_l1(models.create("lenet5"), 0.5)
    with pytest.raises(ValueError, match="no Conv2d layer"):
        structured.prune_conv_chain_l1(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), 0.5)
    with pytest.raises(ValueError, match="exactly one nn.Linear"):
        structured.prune_conv_chain_l1(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), 0.5)
    gelu = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(144, 3))
    with pytest.raises(ValueError, match="'1': GELU is not supported"):
        structured.prune_conv_chain_l1(gelu, 0.5)


def test_residual_network_prunes_coupled_layers_together():
    resnet = models.create("resnet8", seed=0, in_channels=1, input_size=8)
    before = snapshot(resnet)
    x = torch.randn(2, 1, 8, 8)
    result = structured.prune_channels(resnet, x, 0.5)
    after = result.channels_after
    # the stem and the first block's output are added together, so DepGraph prunes them as one group
    assert after["conv1"] == after["layer1.0.conv2"] == 8
    assert after["layer2.0.conv2"] == after["layer2.0.downsample.0"] == 16 and after["fc"] == 10
    assert result.params_ratio == pytest.approx(0.25, rel=0.1) and result.flops_ratio == pytest.approx(0.25, rel=0.1)
    assert result.model(x).shape == (2, 10) and resnet.training and result.model.training
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in before.items())
