"""The evaluate stage: every model of a run reloaded from its file, scored, sized and timed side by side.

Accuracy on the validation split (what sweeps choose on) and on the test split (reported), the size of the
file the stage wrote, the parameter count (PyTorch models), and CPU latency at each batch size and thread count
of the recipe: median and interquartile range of ``repeats`` samples, all models interleaved in one process
(:func:`kdlib.profile.latency_side_by_side`), PyTorch models in eager fp32 and ONNX files in ONNX Runtime with
the same number of threads.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlib import quantize as Q
from kdlib.profile import count_parameters, latency_side_by_side, quartiles
from kdlib.train import evaluate


def score(model: nn.Module, train: Any, test: Any) -> dict[str, float]:
    """Validation and test accuracy (``train`` holds the validation split as its test split)."""
    return {"val_accuracy": evaluate(model, train)["accuracy"], "test_accuracy": evaluate(model, test)["accuracy"]}


def describe(model: nn.Module, file: Path) -> dict[str, Any]:
    """Where a model lives and how big it is: its engine, its file's bytes and (PyTorch) its parameters."""
    onnx = isinstance(model, Q.OnnxModel)
    engine = "onnxruntime" if onnx else ("pt2e" if file.suffix == ".pt2" else "pytorch")
    row: dict[str, Any] = {"engine": engine, "file": file.name, "disk_bytes": file.stat().st_size}
    row["params"] = count_parameters(model) if engine == "pytorch" else None
    return row


def _timed(model: nn.Module, engine: str, threads: int) -> nn.Module:
    if engine == "onnxruntime":
        return Q.OnnxModel(model.path, threads=threads)
    if engine == "pt2e":
        return Q.CompiledInt8(model)
    return copy.deepcopy(model).to("cpu").eval()


def latency(models: dict[str, nn.Module], engines: dict[str, str], example: torch.Tensor, *,
            batch_sizes: list[int], threads: list[int], repeats: int) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {"t<threads>_b<batch>": {"median_ms", "iqr_ms"}}}``, measured side by side on the CPU."""
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    for t in threads:
        timed = {name: _timed(m, engines[name], t) for name, m in models.items()}
        for b in batch_sizes:
            batch = example[:1].repeat(b, *[1] * (example.dim() - 1)) if b > len(example) else example[:b]
            samples = latency_side_by_side(timed, batch.cpu().contiguous(), threads=t, repeats=repeats,
                                           warmup=3, inner=1 if b >= 16 else 10)
            for name, values in samples.items():
                out[name][f"t{t}_b{b}"] = quartiles(values)
    return out
