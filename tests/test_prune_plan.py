"""kdlib.prune.plan: a channel-pruned model saved as plan + weights reloads, without pruning again, exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlib import models
from kdlib.checkpoint import save_checkpoint
from kdlib.prune import apply_plan, load_pruned, prune_channels, save_pruned


def _pruned(name: str, x: torch.Tensor, ratio: float = 0.5, **kwargs):
    model = models.create(name, seed=0, **kwargs)
    for p in model.parameters():  # distinct weights, so that which channels were kept matters
        p.data.normal_()
    result = prune_channels(model, x, ratio)
    with torch.no_grad():  # non-trivial BatchNorm statistics are part of what must survive the round trip
        for m in result.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return result


@pytest.mark.parametrize(
    "name, x, kwargs",
    [
        ("resnet8", torch.randn(4, 1, 8, 8), dict(in_channels=1, input_size=8)),  # residual: coupled layers
        ("cnn", torch.randn(4, 1, 28, 28), dict(num_classes=10)),  # the book's Fashion-MNIST CNN
        ("mlp", torch.randn(4, 40), {}),  # hidden neurons of Linear layers
    ],
)
def test_saved_pruned_model_reloads_with_its_shapes_and_outputs(tmp_path, name, x, kwargs):
    result = _pruned(name, x, **kwargs)
    digest = save_pruned(tmp_path / "pruned.pt", result, x)
    assert len(digest) == 64 and (tmp_path / "pruned.pt.sha256").exists()
    fresh = models.create(name, seed=123, **kwargs)  # other weights: everything must come from the file
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(result.model.state_dict())  # the plain state_dict does not fit the architecture
    loaded = load_pruned(tmp_path / "pruned.pt", fresh)
    assert loaded is fresh and not loaded.training
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in result.model.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))


def test_apply_plan_keeps_exactly_the_named_channels():
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3))
    original = [w.clone() for w in (model[0].weight, model[1].weight, model[3].weight)]
    apply_plan(model, torch.randn(1, 1, 8, 8), {"0": [1, 4, 5]})
    assert model[0].weight.shape[0] == model[1].weight.shape[0] == model[3].weight.shape[1] == 3
    assert torch.equal(model[0].weight, original[0][[1, 4, 5]])
    assert torch.equal(model[1].weight, original[1][[1, 4, 5]])
    assert torch.equal(model[3].weight, original[2][:, [1, 4, 5]])


def test_bad_plans_and_files_give_one_clear_error(tmp_path):
    x = torch.randn(2, 40)
    with pytest.raises(ValueError, match="'nope', which is not a Conv/Linear layer.*its layers"):
        apply_plan(models.create("mlp"), x, {"nope": [0]})
    with pytest.raises(ValueError, match="indices must be distinct and in"):
        apply_plan(models.create("mlp"), x, {"hidden1.0": [0, 1000]})
    result = _pruned("mlp", x)
    save_pruned(tmp_path / "pruned.pt", result, x)
    with pytest.raises(ValueError, match="the architecture that was pruned"):  # narrower layers
        load_pruned(tmp_path / "pruned.pt", models.create("mlp", hidden=(50, 50)))
    with pytest.raises(ValueError, match="does not match the saved pruned model"):  # another head
        load_pruned(tmp_path / "pruned.pt", models.create("mlp", num_classes=5))
    save_checkpoint(tmp_path / "plain.pt", {"state_dict": result.model.state_dict()})
    with pytest.raises(ValueError, match="not a pruned model saved by kdlib.prune.save_pruned"):
        load_pruned(tmp_path / "plain.pt", models.create("mlp"))
