import io

import pytest
import torch
from torch import nn

from kdlib.profile import count_flops, count_parameters, latency_side_by_side, measure_latency, profile, serialized_size
from tiny import blobs


def test_counts_on_a_model_with_known_numbers():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    assert count_parameters(model) == 8 * 16 + 16 + 16 * 3 + 3
    # one multiply-add = 2 FLOPs; biases and ReLU are not counted by torch's FlopCounterMode
    assert count_flops(model, torch.randn(5, 8)) == 2 * (8 * 16 + 16 * 3)
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 16 * 3 + 3


def test_conv_flops_match_the_formula():
    conv = nn.Conv2d(3, 4, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, torch.randn(2, 3, 10, 10)) == 2 * 4 * 10 * 10 * 3 * 3 * 3


def test_serialized_size_is_what_torch_save_writes_and_scales_with_params():
    small, big = nn.Linear(10, 10), nn.Linear(100, 100)
    buffer = io.BytesIO()
    torch.save(big.state_dict(), buffer)
    assert serialized_size(big) == len(buffer.getvalue())
    assert serialized_size(big) - serialized_size(small) == pytest.approx(4 * (10100 - 110), rel=0.05)


def test_profile_returns_one_record_with_accuracy():
    data = blobs()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    record = profile(model, data, name="mlp", batch_size=64, repeats=5, warmup=1, threads=1)
    assert record.name == "mlp" and record.batch_size == 64 and record.threads == 1
    assert record.params == count_parameters(model) and record.flops == 2 * (8 * 16 + 16 * 3)
    assert record.latency_ms > 0 and record.latency_iqr_ms >= 0
    assert 0.0 <= record.accuracy <= 1.0 and record.device == "cpu"
    assert set(record.as_dict()) >= {"params", "size_bytes", "flops", "latency_ms", "accuracy"}
    no_data = profile(model, torch.randn(4, 8), repeats=5, warmup=1)
    assert no_data.accuracy is None and no_data.batch_size == 64


def test_latency_restores_threads_and_mode():
    model = nn.Linear(4, 4).train()
    threads = torch.get_num_threads()
    measure_latency(model, torch.randn(2, 4), warmup=1, repeats=5, threads=1)
    assert torch.get_num_threads() == threads and model.training
    with pytest.raises(ValueError, match="repeats must be >= 5"):
        measure_latency(model, torch.randn(2, 4), repeats=2)
    with pytest.raises(ValueError, match="at least one sample"):
        count_flops(model, torch.randn(0, 4))


def test_cpu_name_is_a_label():
    from kdlib.profile import cpu_name

    name = cpu_name()
    assert isinstance(name, str) and name and "\n" not in name


def test_latency_side_by_side_samples_every_model_and_restores_state():
    fast, slow = nn.Linear(8, 2), nn.Sequential(*[nn.Linear(8, 8) for _ in range(20)], nn.Linear(8, 2))
    fast.train(), slow.eval()
    threads = torch.get_num_threads()
    times = latency_side_by_side({"fast": fast, "slow": slow}, torch.randn(4, 8), repeats=7, inner=3, threads=1)
    assert set(times) == {"fast", "slow"} and all(len(t) == 7 and min(t) > 0 for t in times.values())
    assert fast.training and not slow.training  # each model's mode is restored
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="repeats and inner"):
        latency_side_by_side({"fast": fast}, torch.randn(4, 8), repeats=0)
