"""The INT8 recipes: the settings each flavour hands to ONNX Runtime's ``quantize_static``, the
calibration methods and their histogram settings. No quantization happens here (the steps are
:mod:`.int8`'s); importing this needs neither onnx nor ONNX Runtime.

Two flavours, because the fast form differs between runtimes (docs/export.md, INT8):

``"cpu"`` - ONNX Runtime and OpenVINO on x86:
    uint8 *asymmetric* activations, int8 *symmetric* per-channel weights, int32 biases,
    ``reduce_range=True`` (7-bit weights, -64..63). u8 x s8 is the only form measured to run in
    integer kernels end to end on ORT CPU (every Conv and Add fused into QLinearConv/QLinearAdd);
    with symmetric int8 activations the ReLU cannot be folded into the quantized range, stays
    between Conv and Q, and blocks that fusion: measured at or below FP32 speed. Without VNNI
    (AVX2 only) ORT's u8 x s8 kernels multiply through ``vpmaddubsw``, whose 16-bit sum of two
    products saturates with full-range weights (2 x 255 x 127 > 32767): the reporter's AVX2 EPYC
    fell to cosine ~0.7, and emulating an AVX2-only CPU here reproduced it. 7-bit weights keep
    that sum in range (2 x 255 x 64 < 32767), ONNX Runtime's documented remedy. An artifact
    travels to CPUs other than the one that built it, so the flavour always uses it: its cost
    on VNNI/AMX is weight resolution only (figures in docs/export.md, INT8), not speed.
    OpenVINO ran every QDQ form equally fast.

``"tensorrt"`` - TensorRT explicit quantization (strongly typed network from Q/DQ):
    - int8 *symmetric* activations AND weights, so every zero point is 0 (TensorRT supports
      only zero zero-points for INT8; it has no uint8 quantized type);
    - per-channel weight scales on the output-channel axis (Conv: axis 0; Gemm with
      ``transB=1``: axis 0), per-tensor activation scales;
    - Q/DQ on every input of Conv and Gemm (activation and weight) and on both inputs of the
      residual ``Add``, and *not* on the outputs of Conv/Gemm: NVIDIA's placement guidance
      ("quantize all inputs of weighted operations", "do not quantize the outputs of weighted
      operations by default", quantize the residual input of the skip connection), so TensorRT
      fuses Conv + bias + Add + ReLU and writes INT8 at the next Q;
    - biases stay float (``QuantizeBias=False``): TensorRT's parser refuses a DequantizeLinear
      whose input is an int32 initializer ("only activation types allowed as input");
    - one dedicated Q/DQ pair per consumer (``DedicatedQDQPair``), the form NVIDIA's
      tools export, so each DQ has exactly one consumer to fuse into;
    - weights stored as int8 initializers behind a DequantizeLinear, the "pre-quantized
      weights" form TensorRT 10 documents (a DQ between the weights and the linear operator).

Calibration methods (``method``): ``"minmax"`` (observed range; the default, measured best),
``"entropy"`` (KL divergence between the FP32 and quantized histograms, TensorRT's classic
choice), ``"percentile"`` (99.999th percentile of |x|, 2048 bins). Figures in docs/export.md
(INT8, the calibration methods).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

FLAVOURS = ("cpu", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")
#: Measured on the trained digits models (docs/export.md, INT8): minmax was as accurate
#: as percentile (99.999) or slightly better, in both flavours and at every calibration count,
#: and faster; entropy clipped too much (top-1 -6 points on ResNet-18) and is ~10x slower.
DEFAULT_METHOD = "minmax"
#: Fewer images than this are refused: below it one batch of images decides every range, and
#: the histogram methods have too few samples for a tail. 32 still gave >= 99.7% top-1
#: agreement with FP32 on both digits models, but see RECOMMENDED_CALIBRATION.
MIN_CALIBRATION = 32
#: Measured: with 32 or 64 images the ranges missed one outlier test image of ResNet-18 (its
#: INT8 logits collapsed: cosine -0.2 to 0.18); from 256 on every image kept a cosine of at
#: least 0.977 (0.99 in the tensorrt flavour), and 512 gained nothing more.
RECOMMENDED_CALIBRATION = 256
#: Percentile kept by the "percentile" method (ONNX Runtime's default) and its histogram bins.
PERCENTILE = 99.999
HISTOGRAM_BINS = 2048
#: The entropy method's histogram: 2048 bins searched for the window whose 128-level
#: quantization loses least information (KL divergence), as in NVIDIA's entropy calibration.
#: ``quantize_static`` cannot pass these, and its own defaults (128 bins, 128 quantized bins)
#: leave the search a single candidate, the full range: "entropy" would silently equal
#: "minmax" (measured: identical scales). So the entropy ranges are computed by ORT's
#: ``create_calibrator`` with these settings and handed to ``quantize_static`` through its
#: calibration cache.
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128


@dataclass(frozen=True)
class Recipe:
    """The settings one flavour hands to ``quantize_static`` (module docstring says why)."""

    flavour: str
    target: str
    activation_type: str  # "uint8" | "int8"
    activation_symmetric: bool
    weight_type: str  # "int8"
    weight_symmetric: bool
    per_channel: bool
    reduce_range: bool
    quantize_bias: bool
    dedicated_qdq_pair: bool
    #: op types whose inputs get Q/DQ; None = every op type ONNX Runtime can quantize
    op_types: tuple[str, ...] | None
    #: op types whose outputs get no Q/DQ
    no_output_quantization: tuple[str, ...] = ()
    #: drop the Q/DQ on the convolution-side input of each residual Add (see
    #: :func:`.qdq.unquantize_residual_branch`)
    residual_add_fusion: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["op_types"] = list(self.op_types) if self.op_types is not None else None
        data["no_output_quantization"] = list(self.no_output_quantization)
        return data


RECIPES: dict[str, Recipe] = {
    "cpu": Recipe(
        flavour="cpu", target="ONNX Runtime / OpenVINO CPU (x86 u8s8 kernels, with or without "
                              "VNNI: 7-bit weights)",
        activation_type="uint8", activation_symmetric=False,
        weight_type="int8", weight_symmetric=True, per_channel=True, reduce_range=True,
        quantize_bias=True, dedicated_qdq_pair=False, op_types=None),
    "tensorrt": Recipe(
        flavour="tensorrt", target="TensorRT explicit quantization (Q/DQ, strongly typed)",
        activation_type="int8", activation_symmetric=True,
        weight_type="int8", weight_symmetric=True, per_channel=True, reduce_range=False,
        quantize_bias=False, dedicated_qdq_pair=True,
        op_types=("Conv", "Gemm", "MatMul", "Add"),
        no_output_quantization=("Conv", "Gemm", "MatMul", "Add"),
        residual_add_fusion=True),
}


def method_options(method: str) -> dict[str, Any]:
    """Histogram settings of the method (reported in the manifest)."""
    if method == "percentile":
        return {"percentile": PERCENTILE, "num_bins": HISTOGRAM_BINS}
    if method == "entropy":
        return {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    return {}


def extra_options(recipe: Recipe, method: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "ActivationSymmetric": recipe.activation_symmetric,
        "WeightSymmetric": recipe.weight_symmetric,
        "QuantizeBias": recipe.quantize_bias,
        "DedicatedQDQPair": recipe.dedicated_qdq_pair,
        # output channels: Conv weight (O, I, kH, kW) and Gemm weight with transB=1 (O, I)
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "Gemm": 0} if recipe.per_channel else {},
    }
    if recipe.no_output_quantization:
        options["OpTypesToExcludeOutputQuantization"] = list(recipe.no_output_quantization)
    # The percentile calibrator works on |x| (ORT's default); its range is then clipped to the
    # observed min/max, so a ReLU output still gets [0, t] with uint8 activations.
    if method == "percentile":
        options["CalibPercentile"] = PERCENTILE
    return options
