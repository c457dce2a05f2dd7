"""FP32 ONNX -> INT8 QDQ ONNX by post-training static quantization (``onnxruntime.quantization``).

This module is deliberately thin: every number (ranges, scales, zero points, quantized weights)
comes from ONNX Runtime's quantizer (``quantize_static``, QDQ format); nothing here does
quantization arithmetic. What it adds is the choice of settings, checks on the user's input, and a
JSON-ready report for the manifest.

Steps of :func:`quantize_qdq`:

1. check the flavour, the method and the calibration array against the model's input
   (one :class:`~export.core.errors.UserError` line for anything wrong);
2. ``onnxruntime.quantization.shape_inference.quant_pre_process``: symbolic and ONNX shape
   inference plus ONNX Runtime's basic graph optimisations, which ONNX Runtime recommends before
   quantizing (it also marks the model so ``quantize_static`` does not warn);
3. ``quantize_static(..., quant_format=QDQ, per_channel=True)``, fed batches of the calibration
   array by a :class:`~onnxruntime.quantization.CalibrationDataReader`, with the flavour's
   settings (:data:`RECIPES`);
4. ``onnx.checker`` on the result, and a report of what the file now holds (counted from the
   graph, not assumed from the settings).

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

The calibration array is float32 NCHW, already normalised exactly as the model's input (what
``export.data.reference_images`` and the training pipeline produce). It must come from training
data, never from the images the INT8 model is then judged on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.errors import UserError
from ..core.fileio import sha256_file
from .qdq import describe_qdq, load_onnx, unquantize_residual_branch

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


# ---------------------------------------------------------------------------------------------
# Checks on the user's input
# ---------------------------------------------------------------------------------------------


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise UserError(f"unknown INT8 {what} {value!r}: choose one of {', '.join(choices)}")
    return value


def _input_contract(proto: onnx.ModelProto) -> tuple[str, list[int | None]]:
    """Name and dims (None where dynamic) of the model's single graph input."""
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [vi for vi in proto.graph.input if vi.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"INT8 quantization expects a model with one input, this one has "
                        f"{len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def check_calibration(calibration: Any, proto: onnx.ModelProto,
                      minimum: int = MIN_CALIBRATION) -> np.ndarray:
    """The calibration array as contiguous float32, or one :class:`UserError` line saying why."""
    name, dims = _input_contract(proto)
    expected = "x".join("N" if d is None else str(d) for d in ["N", *dims[1:]])
    if not isinstance(calibration, np.ndarray):
        raise UserError(f"calibration must be a numpy array (float32 NCHW), not "
                        f"{type(calibration).__name__}")
    if not np.issubdtype(calibration.dtype, np.floating):
        raise UserError(f"calibration must be float32 images normalised like the model's input, "
                        f"not {calibration.dtype} (normalise uint8 pixels first)")
    if calibration.ndim != len(dims) or calibration.ndim != 4:
        raise UserError(f"calibration has shape {tuple(calibration.shape)}; the model's input "
                        f"{name!r} is {expected} (NCHW)")
    if calibration.shape[1] != dims[1] and dims[1] is not None:
        raise UserError(f"calibration has {calibration.shape[1]} channel(s); the model's input "
                        f"{name!r} is {expected} (NCHW)")
    if any(d is not None and s != d for s, d in zip(calibration.shape[2:], dims[2:])):
        raise UserError(f"calibration images are {calibration.shape[2]}x{calibration.shape[3]}; "
                        f"the model's input {name!r} is {expected} (NCHW)")
    if len(calibration) < minimum:
        raise UserError(f"{len(calibration)} calibration image(s) are too few: at least "
                        f"{minimum} are needed ({RECOMMENDED_CALIBRATION} recommended), taken "
                        "from the training data")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if not np.isfinite(calibration).all():
        raise UserError("calibration contains NaN or Inf values")
    return calibration


# ---------------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------------


def even_batch(count: int, batch_size: int) -> int:
    """The largest batch of at most ``batch_size`` that divides ``count`` evenly.

    ORT's histogram calibrators (percentile, entropy) stack every batch's outputs into one
    array, so a smaller last batch makes it ragged and they crash; equal batches see exactly
    the same images, so the ranges do not depend on this choice.
    """
    return max(d for d in range(1, min(batch_size, count) + 1) if count % d == 0)


def _data_reader(input_name: str, calibration: np.ndarray, batch_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        """Feeds the calibration array in batches of equal size (see :func:`even_batch`)."""

        def __init__(self) -> None:
            self._starts = iter(range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._starts, None)
            if start is None:
                return None
            return {input_name: calibration[start:start + batch_size]}

        def __len__(self) -> int:
            return -(-len(calibration) // batch_size)

    return _Batches()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer prints histogram settings and logs advice; keep the caller's output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]


def _calibrate_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def _method_options(method: str) -> dict[str, Any]:
    """Histogram settings of the method (reported in the manifest)."""
    if method == "percentile":
        return {"percentile": PERCENTILE, "num_bins": HISTOGRAM_BINS}
    if method == "entropy":
        return {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    return {}


def _entropy_cache(model: Path, reader: Any, op_types: list[str] | None, folder: Path) -> Path:
    """Entropy ranges from ORT's calibrator with :data:`ENTROPY_BINS`, as a calibration cache."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(
        model, op_types or sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(folder / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
                       "symmetric": False})
    calibrator.collect_data(reader)
    cache = folder / "entropy-ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def _extra_options(recipe: Recipe, method: str) -> dict[str, Any]:
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


def sensitive_layers(proto: onnx.ModelProto) -> list[str]:
    """The layers kept in float by an accuracy-controlled retry: the first convolution (it sees
    the raw, widest-ranged input and every later layer inherits its error) and the classifier
    (its output is the logits the accuracy is judged on). ONNX Runtime's ``nodes_to_exclude``
    leaves exactly these unquantized; everything else keeps its INT8 kernels."""
    nodes = list(proto.graph.node)
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    last = next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul")), None)
    return [name for name in (first, last) if name]


@contextlib.contextmanager
def _temporary_files_in(folder: str) -> Iterator[None]:
    """ONNX Runtime's quantizer makes its own temporary folders (``pre.quant.*``,
    ``ort.quant.*``) in the system temp folder, where a killed export leaves them for good: for
    the duration they go into ``folder`` (inside the export's staging folder) instead."""
    previous = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = previous


def quantize_qdq(fp32_onnx: str | os.PathLike, out_path: str | os.PathLike,
                 calibration: np.ndarray, *, flavour: str = "cpu",
                 method: str = DEFAULT_METHOD, batch_size: int = 16,
                 recipe: Recipe | None = None, keep_float: bool = False) -> dict[str, Any]:
    """Quantize ``fp32_onnx`` to an INT8 QDQ model at ``out_path``; returns the manifest report.

    ``calibration``: float32 N x C x H x W, normalised like the model's input, at least
    :data:`MIN_CALIBRATION` images, from the training split. ``flavour``: ``"cpu"`` or
    ``"tensorrt"`` (module docstring). ``method``: ``"minmax"``, ``"entropy"`` or
    ``"percentile"``. ``batch_size``: at most this many images per calibration run (memory, not
    results: the ranges are gathered over all batches; lowered to divide the count evenly).
    ``recipe`` replaces the flavour's settings (for
    experiments such as ``dataclasses.replace(RECIPES["cpu"], reduce_range=True)``).
    ``keep_float``: leave the layers INT8 hurts most in float (:func:`sensitive_layers`), the
    accuracy-controlled retry of an artifact that missed its accuracy contract.
    Every bad input raises :class:`UserError` before anything is written.
    """
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _check_choice(flavour, FLAVOURS, "flavour")
    _check_choice(method, METHODS, "calibration method")
    if batch_size < 1:
        raise UserError(f"calibration batch size must be at least 1, not {batch_size}")
    recipe = recipe or RECIPES[flavour]
    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    proto = load_onnx(fp32_onnx)
    calibration = check_calibration(calibration, proto)
    input_name, _ = _input_contract(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < 13:
        raise UserError(f"{fp32_onnx.name} has opset {opset}: per-channel QDQ needs opset 13+ "
                        "(re-export with --opset 13 or newer)")
    del proto
    batch_size = even_batch(len(calibration), batch_size)

    extra_options = _extra_options(recipe, method)
    started = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # beside the output (an export's staging folder), not in the system temp folder: a killed
    # run leaves it where the next export's cleanup finds it
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out_path.parent) as tmp, _quiet(), \
            _temporary_files_in(tmp):
        prepared = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_optimization=False,
                          skip_onnx_shape=False, skip_symbolic_shape=False)
        partial = Path(tmp) / "quantized.onnx"
        op_types = list(recipe.op_types) if recipe.op_types else None
        reader = _data_reader(input_name, calibration, batch_size)
        kept = sensitive_layers(onnx.load(str(prepared))) if keep_float else []
        cache = None
        if method == "entropy":
            cache = _entropy_cache(prepared, reader, op_types, Path(tmp))
            reader = None
        quantize_static(
            str(prepared), str(partial), reader, calibration_cache_path=cache,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
            activation_type=_quant_type(recipe.activation_type),
            weight_type=_quant_type(recipe.weight_type),
            calibrate_method=_calibrate_method(method), extra_options=extra_options,
            nodes_to_exclude=kept or None)
        quantized = onnx.load(str(partial))
        fused_adds = unquantize_residual_branch(quantized) if recipe.residual_add_fusion else 0
        try:
            onnx.checker.check_model(quantized, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first = (str(exc).strip().splitlines() or ["invalid model"])[0]
            raise UserError(f"the quantized model fails the ONNX checker: {first}") from None
        onnx.save_model(quantized, str(out_path), save_as_external_data=False)
    seconds = time.perf_counter() - started

    summary = describe_qdq(quantized)
    return {
        "quantizer": "onnxruntime.quantization",
        "quantizer_version": ort_version,
        "api": "quantize_static",
        "preprocess": "onnxruntime.quantization.shape_inference.quant_pre_process",
        "format": "QDQ",
        "flavour": recipe.flavour,
        "target": recipe.target,
        "activations": {"type": recipe.activation_type,
                        "symmetric": recipe.activation_symmetric,
                        "granularity": "per-tensor"},
        "weights": {"type": recipe.weight_type, "symmetric": recipe.weight_symmetric,
                    "per_channel": recipe.per_channel, "reduce_range": recipe.reduce_range,
                    "storage": "quantized initializer + DequantizeLinear"},
        "bias": "int32 (quantized)" if recipe.quantize_bias else "float32 (not quantized)",
        "per_channel": recipe.per_channel,
        "method": method,
        "method_options": _method_options(method),
        "calibration": {"count": int(len(calibration)), "batch_size": int(batch_size),
                        "shape": list(calibration.shape[1:]), "dtype": "float32",
                        "sha256": hashlib.sha256(calibration.tobytes()).hexdigest()},
        "recipe": recipe.to_dict(),
        "extra_options": extra_options,
        "op_types_requested": list(recipe.op_types) if recipe.op_types else "all supported",
        "op_types_quantized": summary["op_types_quantized"],
        "qdq_nodes": summary["qdq_nodes"],
        "zero_points_all_zero": summary["zero_points_all_zero"],
        "activation_dtypes": summary["activation_dtypes"],
        "weight_dtypes": summary["weight_dtypes"],
        "per_channel_weights": summary["per_channel_weights"],
        "opset": summary["opset"],
        "residual_adds_left_for_fusion": fused_adds,
        "kept_float": kept,
        "source_sha256": sha256_file(fp32_onnx),
        "seconds": round(seconds, 2),
    }
