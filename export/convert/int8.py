"""FP32 ONNX -> INT8 QDQ ONNX by post-training static quantization (``onnxruntime.quantization``).

This module is deliberately thin: every number (ranges, scales, zero points, quantized weights)
comes from ONNX Runtime's quantizer (``quantize_static``, QDQ format); nothing here does
quantization arithmetic. What it adds is the choice of settings (:mod:`.int8_recipes`), checks on
the user's input, and a JSON-ready report for the manifest.

Steps of :func:`quantize_qdq`:

1. check the flavour, the method and the calibration array against the model's input
   (one :class:`~export.core.errors.UserError` line for anything wrong);
2. ``onnxruntime.quantization.shape_inference.quant_pre_process``: symbolic and ONNX shape
   inference plus ONNX Runtime's basic graph optimisations, which ONNX Runtime recommends before
   quantizing (it also marks the model so ``quantize_static`` does not warn);
3. ``quantize_static(..., quant_format=QDQ, per_channel=True)``, fed batches of the calibration
   array by a :class:`~onnxruntime.quantization.CalibrationDataReader`, with the flavour's
   settings (:data:`.int8_recipes.RECIPES`);
4. ``onnx.checker`` on the result, and a report of what the file now holds (counted from the
   graph, not assumed from the settings).

The flavours (``"cpu"``, ``"tensorrt"``), their settings and why, and the calibration methods
are :mod:`.int8_recipes`'s.

The calibration array is float32 NCHW, already normalised exactly as the model's input (what
``export.data.reference_images`` and the training pipeline produce). It must come from training
data, never from the images the INT8 model is then judged on.
"""

from __future__ import annotations

import contextlib
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
from .int8_recipes import (
    DEFAULT_METHOD,
    ENTROPY_BINS,
    ENTROPY_QUANTIZED_BINS,
    FLAVOURS,
    HISTOGRAM_BINS,
    METHODS,
    MIN_CALIBRATION,
    PERCENTILE,
    RECIPES,
    RECOMMENDED_CALIBRATION,
    Recipe,
    extra_options,
    method_options,
)
from .qdq import describe_qdq, load_onnx, unquantize_residual_branch

#: the recipes' names, re-exported: callers know the quantizer by this module
__all__ = [
    "DEFAULT_METHOD", "ENTROPY_BINS", "ENTROPY_QUANTIZED_BINS", "FLAVOURS", "HISTOGRAM_BINS",
    "METHODS", "MIN_CALIBRATION", "PERCENTILE", "RECIPES", "RECOMMENDED_CALIBRATION", "Recipe",
    "check_calibration", "even_batch", "quantize_qdq", "sensitive_layers",
]

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


@dataclass(frozen=True)
class _Job:
    """One quantization, its inputs checked (:func:`_checked_job`)."""

    fp32_onnx: Path
    out_path: Path
    calibration: np.ndarray
    input_name: str
    batch_size: int
    method: str
    recipe: Recipe
    keep_float: bool


@dataclass(frozen=True)
class _Result:
    """What the quantizer wrote: the checked model, the extra options it was given, the layers
    kept in float, the residual Adds left for fusion, and the wall time."""

    quantized: onnx.ModelProto
    options: dict[str, Any]
    kept: list[str]
    fused_adds: int
    seconds: float


def quantize_qdq(fp32_onnx: str | os.PathLike, out_path: str | os.PathLike,
                 calibration: np.ndarray, *, flavour: str = "cpu",
                 method: str = DEFAULT_METHOD, batch_size: int = 16,
                 recipe: Recipe | None = None, keep_float: bool = False) -> dict[str, Any]:
    """Quantize ``fp32_onnx`` to an INT8 QDQ model at ``out_path``; returns the manifest report.

    ``calibration``: float32 N x C x H x W, normalised like the model's input, at least
    :data:`MIN_CALIBRATION` images, from the training split. ``flavour``: ``"cpu"`` or
    ``"tensorrt"`` (:mod:`.int8_recipes`). ``method``: ``"minmax"``, ``"entropy"`` or
    ``"percentile"``. ``batch_size``: at most this many images per calibration run (memory, not
    results: the ranges are gathered over all batches; lowered to divide the count evenly).
    ``recipe`` replaces the flavour's settings (for
    experiments such as ``dataclasses.replace(RECIPES["cpu"], reduce_range=True)``).
    ``keep_float``: leave the layers INT8 hurts most in float (:func:`sensitive_layers`), the
    accuracy-controlled retry of an artifact that missed its accuracy contract.
    Every bad input raises :class:`UserError` before anything is written.
    """
    _check_choice(flavour, FLAVOURS, "flavour")
    _check_choice(method, METHODS, "calibration method")
    if batch_size < 1:
        raise UserError(f"calibration batch size must be at least 1, not {batch_size}")
    job = _checked_job(Path(fp32_onnx), Path(out_path), calibration, batch_size,
                       method, recipe or RECIPES[flavour], keep_float)
    return _report(job, _quantize(job))


def _checked_job(fp32_onnx: Path, out_path: Path, calibration: np.ndarray, batch_size: int,
                 method: str, recipe: Recipe, keep_float: bool) -> _Job:
    """Step 1 past the choices: the calibration array and the opset against the model."""
    proto = load_onnx(fp32_onnx)
    calibration = check_calibration(calibration, proto)
    input_name, _ = _input_contract(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < 13:
        raise UserError(f"{fp32_onnx.name} has opset {opset}: per-channel QDQ needs opset 13+ "
                        "(re-export with --opset 13 or newer)")
    return _Job(fp32_onnx, out_path, calibration, input_name,
                even_batch(len(calibration), batch_size), method, recipe, keep_float)


def _quantize(job: _Job) -> _Result:
    """Steps 2 to 4: pre-process, quantize, fuse, check, write ``job.out_path``."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe, method = job.recipe, job.method
    options = extra_options(recipe, method)
    started = time.perf_counter()
    job.out_path.parent.mkdir(parents=True, exist_ok=True)
    # beside the output (an export's staging folder), not in the system temp folder: a killed
    # run leaves it where the next export's cleanup finds it
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=job.out_path.parent) as tmp, \
            _quiet(), _temporary_files_in(tmp):
        prepared = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(job.fp32_onnx), str(prepared), skip_optimization=False,
                          skip_onnx_shape=False, skip_symbolic_shape=False)
        partial = Path(tmp) / "quantized.onnx"
        op_types = list(recipe.op_types) if recipe.op_types else None
        reader = _data_reader(job.input_name, job.calibration, job.batch_size)
        kept = sensitive_layers(onnx.load(str(prepared))) if job.keep_float else []
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
            calibrate_method=_calibrate_method(method),
            extra_options=options, nodes_to_exclude=kept or None)
        quantized = onnx.load(str(partial))
        fused_adds = unquantize_residual_branch(quantized) if recipe.residual_add_fusion else 0
        try:
            onnx.checker.check_model(quantized, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first = (str(exc).strip().splitlines() or ["invalid model"])[0]
            raise UserError(f"the quantized model fails the ONNX checker: {first}") from None
        onnx.save_model(quantized, str(job.out_path), save_as_external_data=False)
    return _Result(quantized, options, kept, fused_adds, time.perf_counter() - started)


def _report(job: _Job, result: _Result) -> dict[str, Any]:
    """The manifest's ``int8.quantizer`` report: the settings asked for, and what the written
    graph holds (counted from it, not assumed from the settings)."""
    from onnxruntime import __version__ as ort_version

    recipe, method, calibration = job.recipe, job.method, job.calibration
    summary = describe_qdq(result.quantized)
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
        "method_options": method_options(method),
        "calibration": {"count": int(len(calibration)), "batch_size": int(job.batch_size),
                        "shape": list(calibration.shape[1:]), "dtype": "float32",
                        "sha256": hashlib.sha256(calibration.tobytes()).hexdigest()},
        "recipe": recipe.to_dict(),
        "extra_options": result.options,
        "op_types_requested": list(recipe.op_types) if recipe.op_types else "all supported",
        "op_types_quantized": summary["op_types_quantized"],
        "qdq_nodes": summary["qdq_nodes"],
        "zero_points_all_zero": summary["zero_points_all_zero"],
        "activation_dtypes": summary["activation_dtypes"],
        "weight_dtypes": summary["weight_dtypes"],
        "per_channel_weights": summary["per_channel_weights"],
        "opset": summary["opset"],
        "residual_adds_left_for_fusion": result.fused_adds,
        "kept_float": result.kept,
        "source_sha256": sha256_file(job.fp32_onnx),
        "seconds": round(result.seconds, 2),
    }
