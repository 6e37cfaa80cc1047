"""Real int8 on the CPU: ONNX export, ONNX Runtime static quantization, PT2E + inductor, and parity checks.

Fake quantization (:mod:`kdlib.quantize.fake`) only *simulates* integers in float; speed and size come from an
engine with int8 kernels. Two supported paths (``torch.ao.quantization`` is deprecated in this PyTorch):

* **ONNX Runtime** (the default): :func:`export_onnx` writes the fp32 graph with ``torch.onnx.export``
  (the ``torch.export``-based exporter), :func:`quantize_onnx` calibrates activation ranges on a few batches and
  writes a QDQ model with int8 per-channel weights and uint8 activations, and :class:`OnnxModel` runs either
  file as an ``nn.Module``, so :func:`kdlib.train.evaluate` and :mod:`kdlib.profile` work on it unchanged.
* **PT2E** (torchao): :func:`quantize_pt2e` exports the model with ``torch.export``, inserts observers with
  torchao's ``X86InductorQuantizer``, calibrates, converts, and compiles with inductor, which fuses the int8
  patterns into oneDNN kernels.

Chapter 11 and ``benchmarks/quantize_int8.py`` measure both on the same student. At batch 64 they tie; at
batch 1 ONNX Runtime is several times faster (PyTorch's per-call overhead dominates a small model); PT2E needs
a C++ compiler and seconds of compilation per batch size, and its compiled graph can silently differ from its
reference (see :func:`quantize_pt2e`). The ONNX file is also the deployable artifact. So ONNX Runtime is the
default.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdlib.data import Dataset, Split
from kdlib.device import module_device
from kdlib.quantize.fake import calibration_batches
from kdlib.train import predict

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class ParityError(AssertionError):
    """Two models that should compute the same function disagree by more than the tolerance."""


def symbolic_batch(example: torch.Tensor) -> tuple[torch.Tensor, tuple[dict[int, object]]]:
    """An example input and ``dynamic_shapes`` for ``torch.export`` with a symbolic batch dimension.

    A batch of one is repeated to two: ``torch.export`` would specialize a batch of one to the constant 1.
    """
    if example.shape[0] == 1:
        example = example.repeat(2, *[1] * (example.dim() - 1))
    return example, ({0: torch.export.Dim("batch", min=1)},)


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example: torch.Tensor, *, dynamic_batch: bool = True) -> Path:
    """Write ``model`` (eval mode, float) to ``path`` as ONNX; the input is ``x``, the output ``logits``.

    ``dynamic_batch`` leaves the batch dimension symbolic so one file serves every batch size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    example, shapes = example.detach().to(module_device(model)), None
    if dynamic_batch:
        example, shapes = symbolic_batch(example)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        model.train(was_training)
    return path


def _session(path: str | os.PathLike[str], threads: int | None, spin: bool = False) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, callable like a module: float32 tensor in, logits out.

    ``threads`` fixes ONNX Runtime's intra-op threads (default: ``torch.get_num_threads()`` now), so a
    latency comparison with PyTorch uses the same number of cores. ``spin`` lets those threads busy-wait for
    the next call, ONNX Runtime's own default; kdlib turns it off because in a process that also runs PyTorch
    the spinning threads take the cores PyTorch needs (measured here with 2 threads, interleaved: PyTorch
    fp32 35 ms per batch of 64 with spinning, 10 ms without, and ONNX Runtime itself 12 ms vs 8 ms). A
    dedicated inference server may want ``spin=True``.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None, spin: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}: write one with kdlib.quantize.export_onnx")
        self.session = _session(self.path, threads, spin)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for inputs ``x`` (moved to the CPU as float32)."""
        array = x.detach().to("cpu", torch.float32).numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}"


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, inputs: list[torch.Tensor], input_name: str) -> None:
        self._batches = iter([{input_name: x.detach().to("cpu", torch.float32).numpy()} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_onnx(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    calibration: Split | Dataset | torch.Tensor,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    batches: int = 16,
    batch_size: int = 64,
) -> Path:
    """Static int8 quantization of an fp32 ONNX file with ONNX Runtime; returns ``int8_path``.

    Weights become int8 (symmetric, per output channel unless ``per_channel=False``); activations uint8 with
    ranges calibrated on up to ``batches`` batches of ``calibration`` (a :class:`~kdlib.data.Dataset` means its
    training split) by ``method``:

    * ``"minmax"``: the extremes seen;
    * ``"entropy"``: the clipping threshold whose 128-level histogram is closest in KL divergence to the
      2,048-bin histogram of the data (TensorRT's method, Migacz 2017). ``quantize_static`` itself passes no
      bin counts to its entropy calibrator, whose default of 128 bins leaves a single candidate (the full
      range, i.e. min-max), so kdlib runs the calibrator with 2,048 bins and hands ONNX Runtime the ranges;
    * ``"percentile"``: the 99.999th percentile of the absolute values.

    The graph is in QDQ form (QuantizeLinear/DequantizeLinear pairs), which ONNX Runtime fuses into integer
    kernels. Every activation is quantized, the model's output (the logits) included, as in an integer-only
    pipeline: logits beyond the calibrated range are clipped to it.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    inputs = calibration_batches(calibration, batches, batch_size)
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if not fp32_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {fp32_path}: write one with kdlib.quantize.export_onnx")
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    input_name = _session(fp32_path, 1).get_inputs()[0].name
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    settings = dict(quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=methods[method])
    # ONNX Runtime prints its calibration progress; keep a notebook's output to the results.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        if method == "entropy":
            calibrator = create_calibrator(str(prepared), None, str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=CalibrationMethod.Entropy,
                                           extra_options={"num_bins": 2048, "num_quantized_bins": 128})
            calibrator.collect_data(_Reader(inputs, input_name))
            save_tensors_data(calibrator.compute_data(), Path(tmp) / "ranges.json")
            quantize_static(str(prepared), str(int8_path), None, calibration_cache_path=str(Path(tmp) / "ranges.json"),
                            **settings)
        else:
            quantize_static(str(prepared), str(int8_path), _Reader(inputs, input_name), **settings)
    return int8_path


class CompiledInt8(nn.Module):
    """A PT2E int8 graph compiled by inductor with weight freezing (needed for its int8 fusions).

    Compiled per batch size (``dynamic=False``): inductor's dynamic-shape int8 convolution lowering fails a
    stride check in this PyTorch, and a static graph per shape is also the fastest.
    """

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self.compiled = torch.compile(graph, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._inductor import config

        with config.patch(freezing=True), torch.no_grad():
            return self.compiled(x)


def quantize_pt2e(
    model: nn.Module,
    calibration: Split | Dataset | torch.Tensor,
    *,
    batches: int = 16,
    batch_size: int = 64,
    compile: bool = True,
    verify: bool = True,
) -> nn.Module:
    """Static int8 quantization with torchao's PT2E flow and ``X86InductorQuantizer`` (CPU).

    Returns the converted graph, compiled by inductor unless ``compile=False`` (then it runs in reference
    float-simulated form: right numbers, not fast). The first call with each new batch size compiles it.

    ``verify`` compares the compiled model with the reference graph on the first calibration batch and raises
    :class:`ParityError` if fewer than 99 % of the top-1 predictions agree. It exists because the two can
    disagree silently: in this PyTorch, inductor's int8 lowering ignores ``MaxPool2d(ceil_mode=True)`` (the
    compiled "cnn" pools 7×7 to 3×3 instead of 4×4, and the global average pool hides the shape change),
    which costs that model 2.3 points (chapter 11).
    """
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    inputs = [x.detach().to("cpu", torch.float32) for x in calibration_batches(calibration, batches, batch_size)]
    example, shapes = symbolic_batch(inputs[0])
    was_training = model.training
    try:
        graph = torch.export.export(model.eval(), (example,), dynamic_shapes=shapes)
    finally:
        model.train(was_training)
    graph = graph.module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        observed = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for batch in inputs:
                observed(batch)
        converted = allow_exported_model_train_eval(convert_pt2e(observed))  # so evaluate() may call .eval()
    if not compile:
        return converted
    compiled = CompiledInt8(converted)
    if verify:
        check_parity(converted, compiled, inputs[0], atol=float("inf"), min_agreement=0.99)
    return compiled


def parity(reference: nn.Module, candidate: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """How far ``candidate``'s logits are from ``reference``'s on ``x``: max absolute difference and top-1 agreement."""
    # One call per model (a compiled PT2E graph compiles once per batch size); predict restores their modes.
    a, b = (predict(m, x, batch_size=max(1, len(x))).cpu() for m in (reference, candidate))
    if a.shape != b.shape:
        raise ParityError(f"output shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return {
        "max_abs_diff": float((a - b).abs().max()),
        "max_abs_logit": float(a.abs().max()),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
    }


# Tolerances of check_parity. "exact": the same arithmetic in another engine (an fp32 ONNX export, BatchNorm
# folded): float rounding only. "int8": a correct int8 model, measured on the book's Fashion-MNIST LeNet-5
# (benchmarks/results/quantize_int8.json): minmax and percentile calibration moved the logits by up to 6.7 % of
# their largest magnitude with 99.9-100 % top-1 agreement; entropy calibration, which clips on purpose, by 24 %
# with 97.7 %. A wrong model (an export bug, other weights) agrees on about 1/C of the inputs.
PARITY_PRESETS: dict[str, dict[str, float]] = {
    "exact": {"atol": 1e-4, "rtol": 0.0, "min_agreement": 1.0},
    "int8": {"atol": 0.0, "rtol": 0.3, "min_agreement": 0.97},
}


def check_parity(
    reference: nn.Module,
    candidate: nn.Module,
    x: torch.Tensor,
    *,
    preset: str = "exact",
    atol: float | None = None,
    rtol: float | None = None,
    min_agreement: float | None = None,
) -> dict[str, float]:
    """:func:`parity`, raising :class:`ParityError` when the candidate is further from the reference than allowed.

    The largest logit difference may be at most ``atol + rtol * max|reference logit|``, and at least
    ``min_agreement`` of the top-1 predictions must agree. ``preset`` chooses the three (see
    ``kdlib.quantize.PARITY_PRESETS``): ``"exact"`` for the same model in another engine, ``"int8"`` for an
    int8 model against its float original; an explicit ``atol``, ``rtol`` or ``min_agreement`` overrides it.
    """
    if preset not in PARITY_PRESETS:
        raise ValueError(f"unknown parity preset {preset!r}; known presets: {', '.join(PARITY_PRESETS)}")
    given = {"atol": atol, "rtol": rtol, "min_agreement": min_agreement}
    limits = {**PARITY_PRESETS[preset], **{k: float(v) for k, v in given.items() if v is not None}}
    report = parity(reference, candidate, x)
    tolerance = limits["atol"] + limits["rtol"] * report["max_abs_logit"]
    if report["max_abs_diff"] > tolerance or report["top1_agreement"] < limits["min_agreement"]:
        raise ParityError(
            f"outputs differ ({preset!r} tolerances): max |Δlogit| = {report['max_abs_diff']:.3g} (tolerance "
            f"{tolerance:.3g}), top-1 agreement {report['top1_agreement']:.4f} (required "
            f"{limits['min_agreement']:.4f})"
        )
    return report
