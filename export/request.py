"""What an export is asked for, and the defaults that suit the model: the options that go
together, the source weights, the batch range, the output folder's name, the normalisation
recorded, and the limits checked before any expensive step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .convert.calibration import DEFAULT_COUNT as DEFAULT_CALIBRATION_COUNT
from .convert.int8_recipes import DEFAULT_METHOD
from .convert.onnx_export import DEFAULT_OPSET
from .core.errors import UserError
from .core.hardware import available_memory, inference_bytes
from .core.manifest import FORMATS, MAX_BATCH, MAX_INPUT_SIZE
from .core.models import ModelSpec, default_spec
from .core.shapes import BatchRange
from .core.weights import (
    CALIBRATION_BATCH_SIZE,
    DEFAULT_SEED,
    SourceModel,
    checkpoint_source,
    fresh_source,
)
from .train.rundir import folder_name

RUN_CHECKPOINTS = ("best.pt", "last.pt")  # what resnet-train writes in its run folder


@dataclass
class ExportRequest:
    """What the user asked for; None means "the default that suits the model"."""

    fmt: str = "onnx"
    model: str | None = None  # resolved family name (None: from the checkpoint, or resnet50)
    checkpoint: Path | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    input_size: int | None = None
    batch: BatchRange | None = None
    batch_parts: tuple[int | None, int | None, int | None] = (None, None, None)  # --min/opt/max
    opset: int = DEFAULT_OPSET
    out: Path | None = None
    io_fp16: bool = False
    trt_precision: str = "fp16"
    workspace: int | None = None
    seed: int = DEFAULT_SEED
    keep_failed: bool = False
    int8_flavour: str = "cpu"  # onnx-int8: "cpu" (ORT/OpenVINO) or "tensorrt" (symmetric)
    calib_data: Path | None = None  # None: the checkpoint's training split (digits if fresh)
    calib_count: int = DEFAULT_CALIBRATION_COUNT
    calib_method: str = DEFAULT_METHOD
    #: INT8: points of top-1 the gate lets the artifact lose (None: the contract's, 1.0)
    max_accuracy_drop: float | None = None
    out_dir: Path | None = None  # the parent of default-named artifacts (None: artifacts/)
    overwrite: bool = False  # replace an artifact of other source weights at ``out``
    #: INT8: keep the most sensitive layers in float (the accuracy-controlled retry)
    int8_keep_float: bool = False
    #: export_artifacts of several formats: the folder of each (format -> folder)
    outs: dict[str, Path] | None = None

    @property
    def precision(self) -> str:
        return {"onnx": "fp32", "onnx-fp16": "fp16", "onnx-int8": "int8"}.get(
            self.fmt, self.trt_precision)

    @property
    def flavour(self) -> str | None:
        """The INT8 flavour this format needs: an engine needs TensorRT's (zero points 0)."""
        if self.precision != "int8":
            return None
        return "tensorrt" if self.fmt == "trt" else self.int8_flavour


def check_options(req: ExportRequest, formats: list[str]) -> None:
    """Refuse options that do not go together (one line, named as the command line names
    them); ``resnet-export`` turns this into a usage error (exit 2), the API raises it."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"unknown format {unknown[0] if unknown else None!r}; choose from "
                        f"{', '.join(FORMATS)}")
    precisions = {dataclasses.replace(req, fmt=f).precision for f in formats}
    if req.batch is not None and any(v is not None for v in req.batch_parts):
        raise UserError("give --batch-range or --min/--opt/--max-batch, not both")
    if req.out is not None and len(set(formats)) > 1:
        raise UserError("--out names one folder; give --out-dir (their parent) for several "
                        "--fmt")
    if req.out is not None and req.out_dir is not None:
        raise UserError("give --out (one artifact's folder) or --out-dir (their parent), not "
                        "both")
    if req.io_fp16 and "fp16" not in precisions:
        raise UserError("--fp16-io applies to FP16 artifacts (--fmt onnx-fp16, or trt with "
                        "--trt-precision fp16), not INT8 or FP32 ones: they take FP32 input")
    if req.max_accuracy_drop is not None and "int8" not in precisions:
        raise UserError("--max-accuracy-drop applies to INT8 artifacts (--fmt onnx-int8, or trt "
                        "with --trt-precision int8)")


def resolve_source(req: ExportRequest) -> SourceModel:
    """Checkpoint / plain state dict / fresh weights, with defaults that suit the model."""
    if req.checkpoint is not None:
        return checkpoint_source(req.checkpoint, req.model, req.num_classes, req.in_chans,
                                 req.input_size)
    spec = default_spec(req.model or "resnet50", req.num_classes, req.in_chans, req.input_size)
    return fresh_source(spec, req.seed)


def merge_batch(default: BatchRange, lo: int | None, opt: int | None, hi: int | None
                ) -> BatchRange:
    """--min/--opt/--max-batch over the model's default; unnamed ends move to fit the named."""
    lo_ = lo if lo is not None else min([default.min] + [v for v in (opt, hi) if v is not None])
    hi_ = hi if hi is not None else max([default.max] + [v for v in (lo, opt) if v is not None])
    opt_ = opt if opt is not None else min(max(default.opt, lo_), hi_)
    return BatchRange(lo_, opt_, hi_)


def run_name(spec: ModelSpec, checkpoint: Path | None) -> str:
    """What tells this model's artifacts from another's of the same architecture: the
    resnet-train run folder (``.../resnet20-digits/best.pt``) or the weights file's stem, led by
    the model's name; the bare model name for fresh weights."""
    if checkpoint is None:
        return spec.name
    checkpoint = Path(checkpoint)
    name = checkpoint.parent.name if checkpoint.name in RUN_CHECKPOINTS and \
        checkpoint.parent.name else checkpoint.stem
    name = folder_name(name)
    return name if name.startswith(spec.name) else f"{spec.name}-{name}"


def default_out(spec: ModelSpec, req: ExportRequest) -> Path:
    """``<out-dir>/<run name>-<format>`` (``artifacts/resnet20-digits-onnx``)."""
    suffix = req.fmt
    if req.fmt == "trt" and req.trt_precision != "fp16":
        suffix = f"trt-{req.trt_precision}"
    elif req.fmt == "onnx-int8" and req.int8_flavour != "cpu":
        suffix = f"onnx-int8-{req.int8_flavour}"
    parent = Path(req.out_dir) if req.out_dir is not None else Path("artifacts")
    return parent / f"{run_name(spec, req.checkpoint)}-{suffix}"


def normalization_of(spec: ModelSpec) -> dict[str, Any]:
    return {"mean": list(spec.mean), "std": list(spec.std), "layout": "NCHW",
            "pixel_scale": "pixels / 255, then (x - mean) / std per channel",
            "color": "RGB" if spec.in_chans == 3 else f"{spec.in_chans}-channel (grayscale)"}


def check_limits(spec: ModelSpec, batch: BatchRange, fresh: bool) -> None:
    """Refuse an export the machine cannot hold, before the expensive steps.

    The bounds (MAX_INPUT_SIZE, MAX_BATCH) hold for every artifact; the memory estimate
    (:func:`inference_bytes`) is for the largest forward the export runs: the parity gate's
    largest batch, and for fresh weights the BatchNorm calibration's batches of 8.
    """
    if spec.input_size > MAX_INPUT_SIZE:
        raise UserError(f"input size {spec.input_size} is above the limit of {MAX_INPUT_SIZE}")
    if batch.max > MAX_BATCH:
        raise UserError(f"batch {batch.max} is above the limit of {MAX_BATCH}")
    images = max(batch.max, CALIBRATION_BATCH_SIZE if fresh else 0)
    need = inference_bytes(images, spec.in_chans, spec.input_size)
    have = available_memory()
    if have is not None and need > have:
        what = (f"the parity gate at batch {batch.max}" if images == batch.max else
                f"the BatchNorm calibration of fresh weights (batches of {images})")
        raise UserError(f"exporting {spec.name} at {spec.input_size}x{spec.input_size} needs about "
                        f"{need / 2**30:.1f} GiB for {what}; {have / 2**30:.1f} GiB is available: "
                        "lower --input-size or --batch-range")
