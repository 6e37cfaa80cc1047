"""Slimmable networks: width switching, weight slicing, switchable BN, extraction, ONNX, sandwich-rule training."""

from __future__ import annotations

import pytest
import torch

from kdlib import data as D
from kdlib.data import Batch
from kdlib.profile import count_parameters
from kdlib.quantize.runtime import OnnxModel, export_onnx
from kdlib.slimmable import (
    InPlaceDistillation,
    SlimmableCNN,
    SlimmableConv2d,
    SlimmableLinear,
    SwitchableBatchNorm1d,
    SwitchableBatchNorm2d,
    extract,
    set_width,
    training_flops,
    width,
)
from kdlib.train import evaluate, fit

WIDTHS = (0.25, 0.5, 0.75, 1.0)


def small(input_size: int = 8) -> SlimmableCNN:
    return SlimmableCNN(WIDTHS, in_channels=1, num_classes=10, input_size=input_size, channels=(8, 16, 32))


def outputs(model: SlimmableCNN, x: torch.Tensor, w: float) -> torch.Tensor:
    with torch.no_grad(), width(model, w):
        return model(x)


def test_conventions_and_shapes_at_every_width() -> None:
    model = small(28).eval()
    assert model.input_shape == (1, 28, 28) and model.feature_layers == ("block1", "block2", "block3")
    assert isinstance(model.fc, SlimmableLinear) and model.widths == WIDTHS and model.width_mult == 1.0
    x = torch.randn(3, 1, 28, 28)
    for w in WIDTHS:
        assert outputs(model, x, w).shape == (3, 10)
    assert model.width_mult == 1.0  # the context manager restores the width
    with pytest.raises(ValueError, match="expects input"):
        model(torch.randn(3, 1, 8, 8))


def test_width_one_uses_every_weight() -> None:
    model = small()
    slim = [m for m in model.modules() if isinstance(m, (SlimmableConv2d, SlimmableLinear))]
    assert all(m.active() == (m.weight.shape[1], m.weight.shape[0]) for m in slim)
    # Every parameter except the BatchNorms of the other widths takes part at width 1.0.
    other_bns = sum(count_parameters(bn) for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)
                    for bn in m.bn[:-1])
    assert count_parameters(extract(model, 1.0)) == count_parameters(model) - other_bns
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    before = outputs(model, x, 1.0)
    with torch.no_grad():
        model.block3[-3].weight[-1] += 1.0  # last output channel of the last conv
    assert not torch.allclose(outputs(model, x, 1.0), before)


@pytest.mark.parametrize("w", [0.25, 0.5, 0.75])
def test_narrow_widths_use_only_the_leading_slices(w: float) -> None:
    model = small().eval()
    x = torch.randn(4, 1, 8, 8)
    narrow, wide = outputs(model, x, w), outputs(model, x, 1.0)
    with torch.no_grad(), width(model, w):
        for m in model.modules():
            if isinstance(m, (SlimmableConv2d, SlimmableLinear)):
                i, o = m.active()
                m.weight[o:] += torch.randn_like(m.weight[o:])
                m.weight[:, i:] += torch.randn_like(m.weight[:, i:])
    assert torch.equal(outputs(model, x, w), narrow)
    assert not torch.allclose(outputs(model, x, 1.0), wide)


def test_batchnorm_statistics_are_separate_per_width() -> None:
    model = small().train()
    norm = model.stem[1]
    before = [bn.running_mean.clone() for bn in norm.bn]
    with width(model, 0.5):
        model(torch.randn(16, 1, 8, 8) + 3.0)
    changed = [not torch.equal(bn.running_mean, b) for bn, b in zip(norm.bn, before)]
    assert changed == [False, True, False, False]
    assert [bn.num_features for bn in norm.bn] == [2, 4, 6, 8]
    flat = SwitchableBatchNorm1d(10, (0.5, 1.0))
    set_width(flat, 0.5)
    assert flat(torch.randn(4, 5)).shape == (4, 5) and flat.active_norm() is flat.bn[0]


def test_unknown_width_is_one_clear_error() -> None:
    model = small()
    for call in (lambda: set_width(model, 0.3), lambda: extract(model, 0.3), lambda: width(model, 0.3).__enter__()):
        with pytest.raises(ValueError, match=r"0\.3 is not one of this model's widths \[0\.25, 0\.5, 0\.75, 1\.0\]"):
            call()
    assert model.width_mult == 1.0
    with pytest.raises(TypeError, match="not slimmable"):
        set_width(torch.nn.Linear(2, 2), 0.5)


def test_extract_matches_every_width_and_is_smaller() -> None:
    model = small(28)
    model.train()
    for _ in range(3):  # non-trivial running statistics in every width's BatchNorm
        for w in WIDTHS:
            with width(model, w), torch.no_grad():
                model(torch.randn(8, 1, 28, 28))
    model.eval()
    x = torch.randn(5, 1, 28, 28)
    sizes = []
    for w in WIDTHS:
        plain = extract(model, w)
        assert not any(isinstance(m, (SlimmableConv2d, SlimmableLinear)) for m in plain.modules())
        torch.testing.assert_close(plain(x), outputs(model, x, w), atol=1e-5, rtol=0)
        assert plain.stem[0].weight.shape[0] == model.channels_at(w)[0]
        sizes.append(count_parameters(plain))
    assert sizes == sorted(sizes) and sizes[-1] < count_parameters(model)


def test_extracted_model_exports_to_onnx(tmp_path: pytest.TempPathFactory) -> None:
    model = small().eval()
    plain = extract(model, 0.5)
    x = torch.randn(6, 1, 8, 8)
    engine = OnnxModel(export_onnx(plain, tmp_path / "w050.onnx", x[:1]), threads=1)
    torch.testing.assert_close(engine(x), outputs(model, x, 0.5), atol=1e-4, rtol=1e-4)


def test_term_gradients_reach_the_narrow_widths() -> None:
    model = small().train()
    term = InPlaceDistillation(model)
    term.start(1)
    x = torch.randn(16, 1, 8, 8)
    logits = model(x)
    term(Batch(x, torch.zeros(16, dtype=torch.long), torch.arange(16)), logits).backward()
    norm = model.stem[1]
    assert all(bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0 for bn in norm.bn[:-1])
    assert norm.bn[-1].weight.grad is None  # the teacher is detached: only fit's cross-entropy trains the widest
    assert model.block1[0].weight.grad[:2, :2].abs().sum() > 0  # the leading slice, used by width 0.25
    assert model.width_mult == 1.0
    assert InPlaceDistillation(model, n_random=1).step_widths()[0] == 0.25
    assert len(InPlaceDistillation(model, n_random=1).step_widths()) == 2
    with width(model, 0.5), pytest.raises(ValueError, match="widest width"):
        term(Batch(x, torch.zeros(16, dtype=torch.long), torch.arange(16)), model(x))


def test_fit_with_inplace_distillation_trains_every_width() -> None:
    digits = D.digits(device="cpu")
    model = SlimmableCNN(WIDTHS, input_size=8, channels=(16, 32, 64))
    term = InPlaceDistillation(model, n_random=1)
    result = fit(model, digits, epochs=10, batch_size=64, lr=3e-3, device="cpu", loss_terms=[term], eval_every=21)
    first, last = result.history[0], result.history[-1]
    # The KL term first grows (the widest network's predictions sharpen), so compare the whole objective.
    assert last["train_loss"] < first["train_loss"] and last["test_accuracy"] > 0.9
    for w in WIDTHS:  # chance is 0.1
        with width(model, w):
            assert evaluate(model, digits)["accuracy"] > 0.6, w
    flops = training_flops(model, 1000, n_random=1)
    assert flops["forward@0.25"] < flops["forward@1.0"] and flops["sandwich"] < flops["separate"]


def test_label_targets_train_every_width_on_the_labels() -> None:
    model = small().train()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    batch = Batch(x, y, torch.arange(16))
    term = InPlaceDistillation(model, targets="labels")
    term.start(1)
    torch.manual_seed(0)
    loss = term(batch, model(x))
    expected = 0.0
    for w in (0.25, 0.5, 0.75):
        with width(model, w):
            expected = expected + torch.nn.functional.cross_entropy(model(x), y)
    # Train mode: the BatchNorms use batch statistics, so the same inputs give the same outputs.
    torch.testing.assert_close(loss, expected)
    assert "labels" in repr(term)
    with pytest.raises(ValueError, match="targets must be"):
        InPlaceDistillation(model, targets="teacher")
