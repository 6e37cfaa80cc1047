import copy

import pytest
import torch
from torch import nn

import kdlib.prune.structured as structured
from kdlib import models
from kdlib.data import Dataset, Split
from kdlib.profile import count_flops
from kdlib.prune import recalibrate_batchnorm
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


# ------------------------------------------------------------------------------- BatchNorm recalibration


def bn_net(seed: int = 0) -> nn.Sequential:
    """conv-BN-ReLU-Dropout-conv-BN-ReLU-pool-linear with stale (random) running statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5, momentum=0.3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-3, 3)
            m.running_var.uniform_(5, 10)
    return model


def bn_input_stats(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and unbiased variance of every BatchNorm's input in one forward pass of a copy of
    ``model`` that normalizes with batch statistics (BatchNorm in train mode, dropout off)."""
    model = copy.deepcopy(model).eval()
    stats, hooks = [], []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            hooks.append(m.register_forward_hook(
                lambda _m, inp, _out: stats.append((inp[0].mean((0, 2, 3)), inp[0].var((0, 2, 3))))))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return stats


XB = 2.0 * torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(2)) + 1.0


def test_recalibrate_batchnorm_sets_the_true_statistics_of_the_data():
    model = bn_net()
    out = recalibrate_batchnorm(model, XB, batches=1, batch_size=64)
    assert out is model
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    expected = bn_input_stats(model, XB)  # with the recalibrated first BN feeding the second, dropout off
    for bn, (mean, var) in zip(bns, expected, strict=True):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-5)
        assert int(bn.num_batches_tracked) == 1
    # Several batches: the first BN's mean is exactly the mean over all images used (cumulative average).
    recalibrate_batchnorm(model, XB, batches=4, batch_size=16)
    with torch.no_grad():
        conv_out = model[0](XB)
    torch.testing.assert_close(bns[0].running_mean, conv_out.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert int(bns[0].num_batches_tracked) == 4


def test_recalibrate_batchnorm_restores_modes_and_momenta_and_leaves_weights_alone():
    model = bn_net().train()
    model[1].eval()  # a mixed state must come back exactly
    before = snapshot(model)
    modes = [m.training for m in model.modules()]
    recalibrate_batchnorm(model, XB, batches=2, batch_size=32)
    assert [m.training for m in model.modules()] == modes
    assert model[1].momentum == 0.1 and model[5].momentum == 0.3
    after = model.state_dict()
    for k, v in before.items():
        stats = k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        assert torch.equal(v, after[k]) != stats, k  # every statistic changed, no weight did


def test_recalibrate_batchnorm_on_a_pruned_network_accepts_kdlib_data_and_tensors():
    model = chain(seed=3)
    labels = torch.zeros(64, dtype=torch.long)
    images = Dataset("images", Split(XB, labels), Split(XB[:8], labels[:8]), 3)
    a, b, c = (
        recalibrate_batchnorm(structured.prune_channels(model, X, 0.5).model, data, batches=2, batch_size=32)
        for data in (images, images.train, XB)  # a Dataset means its training split
    )
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v) and torch.equal(c.state_dict()[k], v), k
    # fewer inputs than one batch: a single batch of all of them
    small = recalibrate_batchnorm(structured.prune_channels(model, X, 0.5).model, XB[:10], batch_size=32)
    for bn, (mean, _) in zip([m for m in small.modules() if isinstance(m, nn.BatchNorm2d)],
                             bn_input_stats(small, XB[:10]), strict=True):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-5)


def test_recalibrate_batchnorm_bad_inputs():
    with pytest.raises(ValueError, match="has no BatchNorm layer with running statistics"):
        recalibrate_batchnorm(models.create("mlp", hidden=(8,), input_shape=4), torch.randn(4, 4))
    untracked = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="Sequential has no BatchNorm layer"):
        recalibrate_batchnorm(untracked, XB)
    with pytest.raises(ValueError, match="data is empty"):
        recalibrate_batchnorm(bn_net(), XB[:0])
    for name, bad in (("batches", 0), ("batches", 1.5), ("batch_size", -1), ("batch_size", True)):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            recalibrate_batchnorm(bn_net(), XB, **{name: bad})
    with pytest.raises(TypeError, match="data must be a kdlib Dataset/Split"):
        recalibrate_batchnorm(bn_net(), [1, 2, 3])
