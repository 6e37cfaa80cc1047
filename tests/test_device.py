import pytest
import torch
from torch import nn

from kdlib.device import module_device, resolve


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve("auto") == torch.device("cpu") and resolve(None) == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve("auto") == torch.device("cuda")


def test_explicit_devices():
    assert resolve("cpu") == torch.device("cpu")
    assert resolve(torch.device("cpu")) == torch.device("cpu")


def test_unavailable_or_unknown_device_says_what_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(RuntimeError, match="CUDA is not available here; available: cpu"):
        resolve("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve("gpu")


def test_module_device_follows_parameters_then_buffers():
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(nn.ReLU()) == torch.device("cpu")
    assert module_device(nn.BatchNorm1d(2).requires_grad_(False)) == torch.device("cpu")


def test_no_cuda_calls_in_kdlib():
    import pathlib

    root = pathlib.Path(__file__).parent.parent / "kdlib"
    offenders = [p.name for p in root.rglob("*.py") if ".cuda()" in p.read_text()]
    assert offenders == []
