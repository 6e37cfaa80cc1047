"""kdlib.quantize.runtime: ONNX export and parity, ONNX Runtime int8, PT2E (torchao), on a small conv net."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdlib import quantize as Q
from kdlib.data import Dataset, Split
from kdlib.train import evaluate, fit
from tiny import blobs


@pytest.fixture(scope="module")
def images() -> Dataset:
    d = blobs(n_train=512, n_test=256, features=64, seed=1)
    return Dataset("blob images", *(Split(s.x.reshape(-1, 1, 8, 8), s.y) for s in (d.train, d.test)), d.num_classes)


@pytest.fixture(scope="module")
def trained(images) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 3),
    )
    fit(model, images, steps=60, lr=1e-2, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def exported(trained, images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = Q.export_onnx(trained, folder / "fp32.onnx", images.test.x[:1])
    return folder, fp32, Q.quantize_onnx(fp32, folder / "int8.onnx", images, batches=4)


def test_fp32_onnx_matches_pytorch_for_any_batch_size(trained, images, exported):
    _, fp32, _ = exported
    onnx_model = Q.OnnxModel(fp32, threads=1)
    for n in (1, 7, 256):
        report = Q.check_parity(trained, onnx_model, images.test.x[:n], atol=1e-4)
        assert report["top1_agreement"] == 1.0
    assert evaluate(onnx_model, images)["accuracy"] == pytest.approx(evaluate(trained, images)["accuracy"])


def test_int8_onnx_is_smaller_close_and_really_integer(trained, images, exported):
    import onnx

    _, fp32, int8 = exported
    graph = onnx.load(str(int8)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(torch.tensor(t.dims).prod()) for t in weights) >= 8 * 9 + 16 * 8 * 9 + 3 * 16
    report = Q.parity(trained, Q.OnnxModel(int8), images.test.x)
    assert report["max_abs_diff"] < 0.1 * report["max_abs_logit"] and report["top1_agreement"] > 0.95
    assert int8.stat().st_size < fp32.stat().st_size


def test_fake_quant_simulation_predicts_the_int8_engine(trained, images, exported):
    _, _, int8 = exported
    simulated = Q.calibrate(Q.prepare(trained, Q.QuantConfig(8, 8, activation_observer="minmax")), images, batches=4, batch_size=64)
    assert Q.parity(simulated, Q.OnnxModel(int8), images.test.x)["top1_agreement"] > 0.97


def test_check_parity_raises_with_the_numbers(trained, images):
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    with pytest.raises(Q.ParityError, match=r"max \|Δlogit\| = .* \(tolerance 1e-05\)"):
        Q.check_parity(trained, other, images.test.x[:8], atol=1e-5)


def test_int8_parity_preset_accepts_a_correct_int8_model_and_rejects_a_wrong_one(trained, images, exported):
    _, _, int8 = exported
    engine = Q.OnnxModel(int8)
    with pytest.raises(Q.ParityError):  # the exact defaults refuse a correct int8 model ...
        Q.check_parity(trained, engine, images.test.x)
    report = Q.check_parity(trained, engine, images.test.x, preset="int8")  # ... the int8 preset accepts it
    assert report["top1_agreement"] >= Q.PARITY_PRESETS["int8"]["min_agreement"]
    torch.manual_seed(1)
    wrong = copy.deepcopy(trained)
    for p in wrong.parameters():
        p.data = torch.randn_like(p)  # other weights: what an export that loaded the wrong file would run
    with pytest.raises(Q.ParityError, match="'int8' tolerances"):
        Q.check_parity(trained, wrong, images.test.x, preset="int8")
    with pytest.raises(ValueError, match="known presets: exact, int8"):
        Q.check_parity(trained, engine, images.test.x, preset="fp16")


def test_runtime_errors_say_what_to_do(trained, images, exported, tmp_path):
    folder, fp32, _ = exported
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        Q.OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="unknown calibration method"):
        Q.quantize_onnx(fp32, tmp_path / "x.onnx", images, method="kl")
    with pytest.raises(ValueError, match="at least one example"):
        Q.quantize_onnx(fp32, tmp_path / "x.onnx", images.train.x[:0])
    with pytest.raises(ValueError, match="at least one example"):
        Q.quantize_pt2e(trained, images.train.x[:0])


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(images, exported, method, tmp_path):
    _, fp32, _ = exported
    path = Q.quantize_onnx(fp32, tmp_path / f"{method}.onnx", images, method=method, batches=2)
    assert evaluate(Q.OnnxModel(path), images)["accuracy"] > 0.8


def test_pt2e_int8_matches_the_float_model(trained, images):
    converted = Q.quantize_pt2e(trained, images, batches=4, compile=False)
    report = Q.parity(trained, converted, images.test.x)
    assert report["top1_agreement"] > 0.95 and report["max_abs_diff"] < 0.1 * report["max_abs_logit"]
    assert evaluate(converted, images)["accuracy"] > 0.8


def test_pt2e_compiled_model_is_verified_against_its_reference(images):
    # Inductor's int8 lowering drops MaxPool2d(ceil_mode=True): 5x5 -> 3x3 becomes 2x2, hidden by the global pool.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(8, 8, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    x = torch.randn(256, 1, 8, 8) * 3
    with torch.no_grad():
        model[-1].weight.mul_(20)  # spread the logits so that a changed feature map changes the argmax
    # A canary as well: when a PyTorch release fixes the lowering this fails, and the docstring of
    # quantize_pt2e and chapter 11 must be updated.
    with pytest.raises(Q.ParityError, match="top-1 agreement"):
        Q.quantize_pt2e(model, x, batches=1, batch_size=256)


def activation_scales(path) -> dict[str, float]:
    """Scale of every QuantizeLinear (activations; weights are stored already quantized) in a QDQ file."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: float(constants[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"}


def test_entropy_calibration_really_searches_a_clipping_threshold(images, exported, tmp_path):
    _, fp32, minmax = exported
    entropy = Q.quantize_onnx(fp32, tmp_path / "entropy.onnx", images, method="entropy", batches=4)
    a, b = activation_scales(minmax), activation_scales(entropy)
    assert a.keys() == b.keys()
    # ONNX Runtime's own quantize_static entropy path returns the min-max ranges; kdlib's must clip somewhere.
    assert all(b[k] <= a[k] * (1 + 1e-6) for k in a) and any(b[k] < 0.9 * a[k] for k in a)
