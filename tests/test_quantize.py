"""kdlib.quantize: the affine map, observers, fake quantization and QAT, k-means sharing, packing, sensitivity."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdlib import quantize as Q
from kdlib.distill import distill
from kdlib.data import Dataset, Split
from kdlib.train import evaluate, fit
from tiny import blobs


@pytest.fixture(scope="module")
def tiny_dataset() -> Dataset:
    """Separable blobs shaped as 1×8×8 images, 3 classes."""
    d = blobs(features=64)
    return Dataset("blob images", *(Split(s.x.reshape(-1, 1, 8, 8), s.y) for s in (d.train, d.test)), d.num_classes)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )


def trained_bn(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


# ------------------------------------------------------------------------------------------ affine map


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(bits, symmetric):
    x = torch.randn(10_000) * 3 + (0 if symmetric else 1)
    lo, hi = Q.tensor_range(x)
    scale, zero_point = Q.qparams(lo, hi, bits, symmetric=symmetric)
    x_hat = Q.dequantize(Q.quantize(x, scale, zero_point, bits, symmetric=symmetric), scale, zero_point)
    qmin, qmax = Q.integer_range(bits, symmetric=symmetric)
    inside = (x >= (qmin - zero_point) * scale) & (x <= (qmax - zero_point) * scale)
    assert inside.float().mean() > 0.9
    assert (x_hat - x)[inside].abs().max() <= scale / 2 * (1 + 1e-5)
    # Outside the range values are clipped to its ends.
    assert x_hat.min() >= (qmin - zero_point) * scale - 1e-6 and x_hat.max() <= (qmax - zero_point) * scale + 1e-6


def test_integer_ranges_and_zero_is_exact():
    assert Q.integer_range(8, symmetric=True) == (-128, 127)
    assert Q.integer_range(8, symmetric=False) == (0, 255)
    assert Q.integer_range(2, symmetric=True) == (-2, 1)
    scale, zero_point = Q.qparams(torch.tensor(0.3), torch.tensor(5.0), 8, symmetric=False)
    # The range is widened to contain 0 and 0 maps to an integer code: it is represented exactly.
    zero = Q.dequantize(Q.quantize(torch.zeros(1), scale, zero_point, 8, symmetric=False), scale, zero_point)
    assert zero.item() == 0.0 and zero_point.item() == 0.0
    scale, zero_point = Q.qparams(torch.tensor(-1.0), torch.tensor(3.0), 8, symmetric=False)
    assert scale.item() == pytest.approx(4 / 255) and zero_point.item() == round(1 / (4 / 255))
    scale, zero_point = Q.qparams(torch.tensor(-1.0), torch.tensor(3.0), 8, symmetric=True)
    assert scale.item() == pytest.approx(3 / 127) and zero_point.item() == 0


def test_constant_tensor_does_not_divide_by_zero():
    q = Q.quantize_tensor(torch.zeros(5), 4)
    assert torch.isfinite(q.scale).all() and torch.equal(q.dequantize(), torch.zeros(5))


def test_per_channel_beats_per_tensor_on_channels_of_different_scale():
    torch.manual_seed(0)
    w = torch.randn(4, 64) * torch.tensor([[0.01], [0.1], [1.0], [10.0]])
    for bits in (4, 8):
        per_tensor = Q.quantize_tensor(w, bits).dequantize()
        per_channel = Q.quantize_tensor(w, bits, axis=0).dequantize()
        # The small channels are wiped out by one shared step; their own steps keep them.
        err_t, err_c = (per_tensor - w).pow(2).mean(1), (per_channel - w).pow(2).mean(1)
        assert (err_c <= err_t + 1e-12).all() and err_c[0] < err_t[0] / 10
    assert Q.quantize_tensor(w, 4, axis=0).scale.shape == (4,)


def test_per_channel_along_other_axes_matches_moving_the_axis():
    w = torch.randn(3, 5, 2)
    a = Q.quantize_tensor(w, 4, axis=1).dequantize()
    b = Q.quantize_tensor(w.movedim(1, 0).contiguous(), 4, axis=0).dequantize().movedim(0, 1)
    assert torch.allclose(a, b)
    assert torch.equal(Q.quantize_tensor(w, 4, axis=-2).dequantize(), a)


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quantize_forward_equals_quantize_dequantize(symmetric):
    x = torch.randn(3, 7)
    scale, zero_point = Q.qparams(*Q.tensor_range(x, axis=0), 4, symmetric=symmetric)
    fq = Q.fake_quantize(x, scale, zero_point, 4, symmetric=symmetric, axis=0)
    ref = Q.dequantize(Q.quantize(x, scale, zero_point, 4, symmetric=symmetric, axis=0), scale, zero_point, axis=0)
    assert torch.allclose(fq, ref, atol=1e-6)


def test_straight_through_gradient_is_one_inside_and_zero_outside():
    scale, zero_point = torch.tensor(0.1), torch.tensor(0.0)  # 4-bit symmetric range [-0.8, 0.7]
    x = torch.tensor([-2.0, -0.79, -0.33, 0.0, 0.04, 0.69, 0.71, 5.0], requires_grad=True)
    y = Q.fake_quantize(x, scale, zero_point, 4, symmetric=True)
    upstream = torch.arange(1.0, 9.0)
    (y * upstream).sum().backward()
    inside = torch.tensor([0, 1, 1, 1, 1, 1, 0, 0], dtype=torch.float32)
    assert torch.equal(x.grad, upstream * inside)
    assert torch.allclose(y.detach(), torch.tensor([-0.8, -0.8, -0.3, 0.0, 0.0, 0.7, 0.7, 0.7]))


def test_fake_quantize_keeps_dtype_and_handles_half():
    x = torch.randn(16, dtype=torch.bfloat16)
    assert Q.fake_quantize(x, torch.tensor(0.1), torch.tensor(0.0), 8).dtype == torch.bfloat16


@pytest.mark.parametrize("bits", [1, 9, 16, 0, 4.0, True, "8"])
def test_bits_outside_2_to_8_are_refused(bits):
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\].*half"):
        Q.quantize_tensor(torch.randn(4), bits)
    with pytest.raises(ValueError, match="bits must be"):
        Q.QuantConfig(weight_bits=bits)


def test_missing_axis_and_bad_inputs_get_one_clear_error():
    with pytest.raises(ValueError, match="axis 2 does not exist for a tensor of shape \\(3, 4\\)"):
        Q.quantize_tensor(torch.randn(3, 4), 8, axis=2)
    with pytest.raises(ValueError, match="axis 0 has 3 channels but 2"):
        Q.quantize(torch.randn(3, 4), torch.ones(2), torch.zeros(2), 8, axis=0)
    with pytest.raises(ValueError, match="per-tensor quantization needs one scale"):
        Q.quantize(torch.randn(3, 4), torch.ones(3), torch.zeros(3), 8)
    with pytest.raises(TypeError, match="floating-point"):
        Q.quantize_tensor(torch.arange(4), 8)
    with pytest.raises(ValueError, match="empty"):
        Q.quantize_tensor(torch.empty(0), 8)
    with pytest.raises(ValueError, match="lo must be <="):
        Q.qparams(torch.tensor(1.0), torch.tensor(0.0), 8)


# ------------------------------------------------------------------------------------------ observers


def test_observers_ranges():
    torch.manual_seed(0)
    batches = [torch.randn(1000) for _ in range(5)]
    batches[2][0] = 50.0  # one outlier
    mm, ma, pc = Q.MinMaxObserver(), Q.MovingAverageObserver(0.5), Q.PercentileObserver(99.0)
    for b in batches:
        for obs in (mm, ma, pc):
            assert obs(b) is b
    assert mm.range()[1] == 50.0
    assert 1.5 < pc.range()[1] < 3.5  # the 99th percentile ignores the outlier
    hi = batches[0].max()
    for b in batches[1:]:
        hi = 0.5 * hi + 0.5 * b.max()
    assert ma.range()[1] == pytest.approx(hi.item(), rel=1e-5)


def test_mse_observer_clips_more_at_fewer_bits_and_beats_minmax():
    torch.manual_seed(0)
    x = torch.randn(20_000)
    mse, mm = Q.MSEObserver(), Q.MinMaxObserver()
    mse(x), mm(x)

    def error(bits, params):
        return (Q.fake_quantize(x, *params, bits) - x).pow(2).mean()

    s2, s8 = mse.qparams(2)[0], mse.qparams(8)[0]
    assert s2 * 1 < mm.qparams(2)[0] and error(2, mse.qparams(2)) < error(2, mm.qparams(2)) / 2
    # It minimizes the error on the values it kept (a subsample), and on those never loses to min-max.
    kept = mse.samples[0]
    for bits in (2, 4, 8):
        at = {name: (Q.fake_quantize(kept, *obs.qparams(bits), bits) - kept).pow(2).mean() for name, obs in
              (("mse", mse), ("minmax", mm))}
        assert at["mse"] <= at["minmax"] * (1 + 1e-6)
    # At 8 bits the optimal clip is much closer to the full range than at 2 bits.
    assert s8 * 127 / x.abs().max() > s2 * 1 / x.abs().max()


def test_per_channel_observer_and_errors():
    obs = Q.MinMaxObserver(axis=1)
    obs(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    lo, hi = obs.range()
    assert torch.equal(lo, torch.tensor([1.0, -2.0])) and torch.equal(hi, torch.tensor([3.0, 4.0]))
    with pytest.raises(ValueError, match="saw 2 channels before and 3 now"):
        obs(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="seen no data"):
        Q.MinMaxObserver().range()
    with pytest.raises(ValueError, match="unknown observer"):
        Q.make_observer("histogram")


def test_observer_state_loads_into_a_fresh_observer():
    a = Q.MSEObserver(axis=0)
    a(torch.randn(3, 10))
    b = Q.MSEObserver(axis=0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.qparams(4)[0], b.qparams(4)[0])


# ------------------------------------------------------------------------------------------ BN folding, prepare, QAT


def test_fold_batchnorm_keeps_eval_output():
    model = trained_bn(small_cnn())
    x = torch.randn(8, 1, 8, 8)
    folded = Q.fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity) and isinstance(model[1], nn.BatchNorm2d)
    assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_prepare_wraps_layers_and_leaves_the_model_alone():
    model = trained_bn(small_cnn())
    before = copy.deepcopy(model.state_dict())
    q = Q.prepare(model)
    assert set(Q.fake_quant_layers(q)) == {"0", "4"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="calibrate"):
        q(torch.randn(2, 1, 8, 8))


def test_w8a8_fake_quant_is_close_to_float_and_w2_is_not():
    torch.manual_seed(0)
    model = trained_bn(small_cnn())
    x = torch.randn(64, 1, 8, 8)
    ref = model(x)
    err = {}
    for bits in (8, 2):
        q = Q.calibrate(Q.prepare(model, Q.QuantConfig(bits, bits)), x, batches=1, batch_size=64)
        err[bits] = (q(x) - ref).abs().max().item()
    assert err[8] < 0.05 * ref.abs().max().item() < err[2]


def test_weight_only_quantization_uses_dequantized_weights():
    model = small_cnn().eval()
    q = Q.prepare(model, Q.QuantConfig(weight_bits=4, activation_bits=None), fold_bn=False)
    layer = Q.fake_quant_layers(q)["4"]
    expected = Q.quantize_tensor(model[4].weight.detach(), 4, axis=0).dequantize()
    assert torch.allclose(layer.quantized_weight(), expected)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(q(x), nn.functional.linear(q[3](q[2](q[1](q[0](x)))), expected, model[4].bias))


def test_unsupported_layers_are_named_and_can_be_skipped():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"layer '0' \(Embedding\) .*skip=\['0'\]"):
        Q.prepare(model)
    assert set(Q.fake_quant_layers(Q.prepare(model, skip=["0"]))) == {"2"}
    with pytest.raises(ValueError, match="no Conv1d, Conv2d or Linear"):
        Q.prepare(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="skip names \\['nope'\\]"):
        Q.prepare(model, skip=["nope"])
    with pytest.raises(ValueError, match="bits must be"):
        Q.prepare(model, skip=["0"], layer_bits={"2": 1})


def test_calibration_needs_data_and_a_prepared_model():
    q = Q.prepare(small_cnn())
    with pytest.raises(ValueError, match="at least one example"):
        Q.calibrate(q, torch.empty(0, 1, 8, 8))
    with pytest.raises(ValueError, match="kdlib.quantize.prepare"):
        Q.calibrate(small_cnn(), torch.randn(4, 1, 8, 8))


def test_calibrate_restores_modes_and_reset_forgets():
    q = Q.prepare(small_cnn()).train()
    Q.calibrate(q, torch.randn(16, 1, 8, 8) * 100, batch_size=8)
    assert q.training and all(m.training for m in q.modules())
    wide = Q.fake_quant_layers(q)["0"].input_observer.range()[1]
    Q.calibrate(q, torch.randn(16, 1, 8, 8), batch_size=8)
    assert Q.fake_quant_layers(q)["0"].input_observer.range()[1] < wide / 10


def test_layer_bits_give_mixed_precision():
    q = Q.prepare(small_cnn(), Q.QuantConfig(8, None), layer_bits={"4": 3})
    layers = Q.fake_quant_layers(q)
    assert layers["0"].config.weight_bits == 8 and layers["4"].config.weight_bits == 3


def test_qat_gradients_flow_through_fake_quant_and_training_updates_observers():
    q = Q.calibrate(Q.prepare(trained_bn(small_cnn()), Q.QuantConfig(4, 4)), torch.randn(8, 1, 8, 8), batch_size=8)
    q.train()
    out = q(torch.randn(8, 1, 8, 8) * 3)
    out.sum().backward()
    layers = Q.fake_quant_layers(q)
    assert all(m.layer.weight.grad is not None and m.layer.weight.grad.abs().sum() > 0 for m in layers.values())
    assert int(layers["0"].input_observer.batches) == 2


def test_qat_with_kd_runs_through_distill_and_strip_gives_a_float_model(tiny_dataset):
    teacher = Q.fold_batchnorm(trained_bn(small_cnn(1)))
    student = Q.calibrate(Q.prepare(teacher, Q.QuantConfig(4, 8)), tiny_dataset)
    before = evaluate(student, tiny_dataset)["loss"]
    result = distill(student, teacher, tiny_dataset, steps=30, lr=1e-2, progress=False)
    assert result.final_accuracy >= 0 and evaluate(student, tiny_dataset)["loss"] < before
    plain = Q.strip(student)
    assert not Q.fake_quant_layers(plain) and isinstance(plain[0], nn.Conv2d)
    assert torch.equal(plain[0].weight, student[0].layer.weight)


# ------------------------------------------------------------------------------------------ k-means, packing, sizes


def test_kmeans_finds_clusters_and_orders_them():
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)])
    codebook, index = Q.kmeans_1d(values[torch.randperm(100)], 3)
    assert torch.allclose(codebook, torch.tensor([-1.0, 0.5, 2.0]))
    assert index.shape == (100,) and set(index.tolist()) == {0, 1, 2}


def test_share_weights_codebook_gradient_is_the_sum_over_its_cluster():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    shared = Q.share_weights(model, 2)
    layer = shared[0]
    assert "weight" not in dict(layer.named_parameters()) and layer.codebook.numel() == 4
    x = torch.randn(5, 6)
    shared(x).pow(2).sum().backward()
    # Recompute dL/dW with the same weights as a plain parameter, then sum it per cluster.
    w = layer.codebook.detach()[layer.weight_index].clone().requires_grad_(True)
    nn.functional.linear(x, w, layer.bias).pow(2).sum().backward()
    expected = torch.zeros(4).index_add_(0, layer.weight_index.flatten(), w.grad.flatten())
    assert torch.allclose(layer.codebook.grad, expected, atol=1e-6)
    copy.deepcopy(shared)  # still copyable after a forward pass


def test_share_weights_trains_and_sizes(tiny_dataset):
    model = nn.Sequential(nn.Flatten(), nn.Linear(tiny_dataset.train.x[0].numel(), 16), nn.ReLU(), nn.Linear(16, 3))
    shared = Q.share_weights(model, 3)
    before = [layer.codebook.detach().clone() for layer in Q.shared_layers(shared).values()]
    fit(shared, tiny_dataset, steps=10, lr=1e-2, progress=False)
    after = [layer.codebook for layer in Q.shared_layers(shared).values()]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(len(torch.unique(layer.weight)) <= 8 for layer in Q.shared_layers(shared).values())
    n = sum(layer.weight_index.numel() for layer in Q.shared_layers(shared).values())
    biases = 16 + 3
    assert Q.codebook_size_bytes(shared) == sum(-(-k * 3 // 8) for k in (16 * 64, 3 * 16)) + 2 * 8 * 4 + 4 * biases
    assert n == 16 * 64 + 3 * 16
    with pytest.raises(ValueError, match="share_weights first"):
        Q.codebook_size_bytes(model)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_pack_unpack_round_trip(bits, symmetric):
    qmin, qmax = Q.integer_range(bits, symmetric=symmetric)
    codes = torch.randint(qmin, qmax + 1, (37,))
    packed = Q.pack_codes(codes, bits, symmetric=symmetric)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-37 * bits // 8)
    assert torch.equal(Q.unpack_codes(packed, bits, 37, symmetric=symmetric), codes.int())
    with pytest.raises(ValueError, match="outside the"):
        Q.pack_codes(torch.tensor([qmax + 1]), bits, symmetric=symmetric)


def test_packed_sizes_shrink_with_bits():
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    fp32 = sum(p.numel() for p in model.parameters()) * 4
    sizes = {b: Q.quantized_size_bytes(Q.prepare(model, Q.QuantConfig(b, None))) for b in (8, 4, 2)}
    assert fp32 / sizes[8] > 3.5 and sizes[8] / sizes[4] > 1.8 and sizes[4] / sizes[2] > 1.6
    with pytest.raises(ValueError, match="prepare"):
        Q.packed_state(model)


def test_sensitivity_rows_and_pick_bits(tiny_dataset):
    model = nn.Sequential(nn.Flatten(), nn.Linear(tiny_dataset.train.x[0].numel(), 16), nn.ReLU(), nn.Linear(16, 3))
    fit(model, tiny_dataset, steps=30, lr=1e-2, progress=False)
    rows = Q.layer_sensitivity(model, tiny_dataset, bits=(8, 2))
    assert {(r["layer"], r["bits"]) for r in rows} == {("1", 8), ("1", 2), ("3", 8), ("3", 2)}
    assert all(abs(r["drop"]) < 0.05 for r in rows if r["bits"] == 8)
    rows = [{"layer": "a", "bits": 8, "drop": 0.0}, {"layer": "a", "bits": 4, "drop": 0.001},
            {"layer": "a", "bits": 2, "drop": 0.3}, {"layer": "b", "bits": 8, "drop": 0.02},
            {"layer": "b", "bits": 4, "drop": 0.2}]
    assert Q.pick_bits(rows, max_drop=0.005) == {"a": 4, "b": 8}
    with pytest.raises(ValueError, match="layer_sensitivity"):
        Q.pick_bits([])


def test_ste_gradient_is_one_on_the_edges_of_the_range():
    x = torch.tensor([-1.0, 0.75, 0.7500001], requires_grad=True)  # 3-bit symmetric, s = 0.25: [-1, 0.75]
    Q.fake_quantize(x, torch.tensor(0.25), torch.tensor(0.0), 3).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]


def test_mse_observer_keeps_values_from_every_batch():
    obs = Q.MSEObserver(max_samples=100)
    for value in (1.0, 2.0, 3.0, 4.0):
        obs(torch.full((1000,), value))
    counts = [int((obs.samples == v).sum()) for v in (1.0, 2.0, 3.0, 4.0)]
    assert sum(counts) == 100 and min(counts) >= 20


def test_moving_average_starts_as_a_plain_mean():
    obs = Q.MovingAverageObserver()  # c = 0.01: the first 100 batches are averaged evenly
    for top in (1.0, 2.0, 3.0, 6.0):
        obs(torch.tensor([0.0, top]))
    assert obs.range()[1].item() == pytest.approx(3.0)
