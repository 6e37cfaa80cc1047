"""Quantization: the affine map and observers, fake quantization and QAT (with KD through the usual training
loop), k-means weight sharing, mixed precision, packed sizes, and real int8 on the CPU through ONNX Runtime
(default) or torchao's PT2E flow.

``torch.ao.quantization`` is deprecated in this PyTorch; nothing here uses it.
"""

from kdlib.quantize.affine import (
    QuantizedTensor,
    check_bits,
    dequantize,
    fake_quantize,
    integer_range,
    qparams,
    quantize,
    quantize_tensor,
    tensor_range,
)
from kdlib.quantize.analysis import layer_sensitivity, pick_bits
from kdlib.quantize.fake import (
    FakeQuantLayer,
    QuantConfig,
    calibrate,
    fake_quant_layers,
    fold_batchnorm,
    prepare,
    quantizable_layers,
    strip,
)
from kdlib.quantize.kmeans import codebook_size_bytes, kmeans_1d, share_weights, shared_layers
from kdlib.quantize.observers import (
    MinMaxObserver,
    MovingAverageObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from kdlib.quantize.runtime import (
    PARITY_PRESETS,
    CompiledInt8,
    OnnxModel,
    ParityError,
    check_parity,
    export_onnx,
    parity,
    quantize_onnx,
    quantize_pt2e,
)
from kdlib.quantize.size import pack_codes, packed_state, quantized_size_bytes, unpack_codes

__all__ = [
    "PARITY_PRESETS",
    "FakeQuantLayer",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageObserver",
    "Observer",
    "OnnxModel",
    "ParityError",
    "PercentileObserver",
    "QuantConfig",
    "QuantizedTensor",
    "calibrate",
    "check_bits",
    "CompiledInt8",
    "check_parity",
    "codebook_size_bytes",
    "dequantize",
    "export_onnx",
    "fake_quant_layers",
    "fake_quantize",
    "fold_batchnorm",
    "integer_range",
    "kmeans_1d",
    "layer_sensitivity",
    "make_observer",
    "pack_codes",
    "packed_state",
    "parity",
    "pick_bits",
    "prepare",
    "qparams",
    "quantizable_layers",
    "quantize",
    "quantize_onnx",
    "quantize_pt2e",
    "quantize_tensor",
    "quantized_size_bytes",
    "share_weights",
    "shared_layers",
    "strip",
    "tensor_range",
    "unpack_codes",
]
