"""Export and verify, end to end: the only module that knows the order of the steps.

Export (:func:`export_artifacts`): the options and, for ``trt``, TensorRT and a GPU are checked
before anything is read or created -> source weights -> limits and memory -> each output folder
(ours to replace?) -> ONE dynamo export to FP32 ONNX. Then per format, in a hidden staging folder
beside its output (``.<out>.<pid>-XXXX.partial``): FP32, FP16 or calibrated INT8 ONNX -> (TensorRT
engine) -> the gate (:mod:`.gate.judge`) -> manifest -> renamed into place in one step
(:func:`replace_folder`). A format that fails its gate is deleted (or moved to ``<out>.FAILED``
with ``keep_failed``); those that passed are kept, and :class:`ParityFailed` names the failures.
Only a folder that is provably our artifact is replaced, never one inside another artifact, and
without ``overwrite`` only by an export of the same weights (docs/export.md, "The output folder").

Verify (:func:`verify_artifact`): what a killed replacement left is put right first; then the
manifest -> every file's sha256 -> (engine compatibility) -> the eager reference rebuilt from the
recorded weights or seed -> the same gate. The artifact's files are never modified.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from .convert.calibration import calibration_set
from .convert.fp16 import convert_to_fp16
from .convert.int8 import quantize_qdq
from .convert.onnx_export import export_onnx, io_signature, save_onnx, stamp_metadata
from .core.agreement import check_digest
from .core.artifact import artifact_file, read_manifest, verify_files
from .core.errors import ParityFailed, UserError
from .core.fileio import current_umask, make_dirs, remove_dirs
from .core.folders import (
    Target,
    check_failed_slot,
    check_out,
    recover_interrupted,
    replace_folder,
    staging_prefix,
)
from .core.manifest import (
    FAILED_SUFFIX,
    MANIFEST_NAME,
    STAGING_SUFFIX,
    Manifest,
    ManifestParts,
    build_manifest,
    file_entry,
    library_versions,
    write_manifest,
)
from .core.models import default_spec
from .core.shapes import BatchRange
from .core.weights import (
    SourceModel,
    fresh_source,
    source_from_manifest,
    with_relative_path,
)
from .failures import first_failure, int8_help
from .gate.judge import judge_artifact
from .gate.parity import TOLERANCES, Verdict
from .gate.reference import write_gate_reference
from .request import (
    ExportRequest,
    check_limits,
    check_options,
    default_out,
    merge_batch,
    normalization_of,
    resolve_source,
)
from .runtime.verdicts import verdict_on

Echo = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


@dataclass
class _Export:
    """What every format of one export shares: the weights, their FP32 graph (one dynamo
    export), the batch range, TensorRT and the GPU where an engine is built, and the output."""

    source: SourceModel
    fp32_proto: onnx.ModelProto
    batch: BatchRange
    trt_version: str | None
    gpu: Any
    echo: Echo
    warn: Echo


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    verdicts: list[Verdict] = field(default_factory=list)


def export_artifact(req: ExportRequest, echo: Echo = print, warn: Echo = print) -> ExportResult:
    """Export ``req.fmt``, gate it, move it into place; :class:`ParityFailed` if the gate fails."""
    return export_artifacts(req, [req.fmt], echo, warn)[0]


def export_artifacts(req: ExportRequest, formats: list[str], echo: Echo = print,
                     warn: Echo = print) -> list[ExportResult]:
    """Several formats of one model from ONE dynamo export (the slow step).

    Each format still gets its own staging folder, gate, manifest and rename; the ones that pass
    are kept even if another fails, and :class:`ParityFailed` then names the failures.
    """
    formats = list(dict.fromkeys(formats))
    check_options(req, formats)
    requests = [dataclasses.replace(req, fmt=f) for f in formats]
    trt_version, gpu = None, None
    if "trt" in formats:  # before anything is read or created
        from .convert.tensorrt_build import require_tensorrt

        trt, gpu = require_tensorrt()
        trt_version = str(trt.__version__)

    # fresh weights are planned before they are made (calibrating them is the first cost)
    source = resolve_source(req) if req.checkpoint is not None else None
    spec = source.spec if source is not None else \
        default_spec(req.model or "resnet50", req.num_classes, req.in_chans, req.input_size)
    batch = req.batch or merge_batch(BatchRange.default_for(spec), *req.batch_parts)
    check_limits(spec, batch, fresh=source is None)
    new_source = source.source if source is not None else {"kind": "seed", "seed": req.seed}
    targets = []
    for r in requests:
        out = Path(r.out) if r.out is not None else \
            Path(req.outs[r.fmt]) if req.outs and r.fmt in req.outs else default_out(spec, r)
        target = Target(out, check_out(out, new_source, spec.to_dict(), req.overwrite, warn))
        if req.keep_failed:  # refused now, not after the export, if the slot is not ours
            check_failed_slot(out, warn)
        targets.append(target)
    if source is None:
        source = fresh_source(spec, req.seed)
    for note in source.warnings:  # once we know the export will go ahead
        warn(f"warning: {note}")

    started = time.perf_counter()
    echo(f"exporting {spec.name} ({spec.num_classes} classes, {spec.in_chans}x{spec.input_size}x"
         f"{spec.input_size}, batch {batch}) with torch.onnx dynamo, opset {req.opset}")
    fp32_proto = export_onnx(source.model, spec, req.opset)
    echo(f"  traced and translated in {time.perf_counter() - started:.1f}s")

    shared = _Export(source, fp32_proto, batch, trt_version, gpu, echo, warn)
    results, failures = [], []
    for r, target in zip(requests, targets):
        try:
            results.append(_export_one(r, shared, target))
        except ParityFailed as exc:
            failures.append(str(exc))
        except OSError as exc:  # disk full, permissions: one line, not a traceback
            raise UserError(f"cannot write {target.out}: {exc.strerror or exc}") from None
    if failures:
        raise ParityFailed(" | ".join(failures))
    return results


def _export_one(req: ExportRequest, shared: _Export, target: Target) -> ExportResult:
    """One format: staging folder -> files -> gate -> manifest -> into place (or clean up)."""
    spec, echo, warn = shared.source.spec, shared.echo, shared.warn
    out = target.out
    created = make_dirs(out.parent)
    staging: Path | None = None
    promoted = False
    try:
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out), suffix=STAGING_SUFFIX,
                                        dir=out.parent))
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; an artifact is not
        manifest, verdicts = _build_in(staging, req, shared, target)
        if not manifest["parity"]["passed"]:
            failed_note = "nothing was written"
            if req.keep_failed:
                failed = out.with_name(out.name + FAILED_SUFFIX)
                previous = check_failed_slot(out, warn)  # again: it may have changed meanwhile
                _announce_replacement(failed, previous, warn)
                replace_folder(staging, failed)
                failed_note = f"kept for inspection in {failed}"
            raise ParityFailed(f"parity gate FAILED for {spec.name} {req.fmt}: "
                               f"{first_failure(verdicts)}; {failed_note}"
                               f"{int8_help(req, manifest, verdicts)}")
        # again, right before: the folder may have changed while the export ran
        previous = check_out(out, manifest["source"], manifest["model"], req.overwrite, warn)
        _announce_replacement(out, previous, warn)
        replace_folder(staging, out)
        promoted = True
        files = ", ".join(f"{f['path']} ({f['bytes'] / 1e6:.1f} MB)" for f in manifest["files"])
        echo(f"wrote {out}/: {files}, {MANIFEST_NAME}")
        return ExportResult(out, manifest, verdicts)
    finally:
        if not promoted:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            remove_dirs(created)


def _announce_replacement(out: Path, previous: Manifest | None, warn: Echo) -> None:
    if previous is not None:
        warn(f"replacing {out} (previous {previous['format']} artifact from "
             f"{previous['created']})")


@dataclass
class _OnnxFile:
    """The ONNX file of one format, as written into the staging folder."""

    name: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    fp16: dict[str, Any] | None = None  # the FP16 converter's report
    int8: dict[str, Any] | None = None  # the quantizer's and the calibration's section


def _build_in(staging: Path, req: ExportRequest, shared: _Export, target: Target
              ) -> tuple[Manifest, list[Verdict]]:
    """Write every file of one format into ``staging``, gate them, write the manifest there."""
    source, gpu = shared.source, shared.gpu
    spec = source.spec
    written = _write_onnx(staging, req, shared)
    files = [file_entry(staging, written.name, "artifact" if req.fmt != "trt" else "source-onnx")]
    artifact, tensorrt = written.name, None
    if req.fmt == "trt":
        artifact, tensorrt = _build_engine(staging, req, shared, target, written)
        files.insert(0, file_entry(staging, artifact, "artifact"))
        files.append(file_entry(staging, TIMING_CACHE, "timing-cache"))
    manifest = build_manifest(ManifestParts(
        fmt=req.fmt, precision=req.precision, artifact=artifact, files=files,
        model=spec.to_dict(), class_names=source.class_names,
        normalization=normalization_of(spec),
        source=with_relative_path(source.source, target.out), inputs=written.inputs,
        outputs=written.outputs, batch_range=shared.batch.to_dict(), opset=req.opset,
        fp16=written.fp16, tensorrt=tensorrt,
        gpu=gpu.to_dict() if gpu is not None and req.fmt == "trt" else None,
        versions=library_versions(shared.trt_version), parity={"passed": False, "runs": []},
        int8=written.int8))
    parity, verdicts = judge_artifact(staging, manifest, source, shared.echo)
    manifest["parity"] = parity
    carried = write_gate_reference(staging, manifest, source)  # INT8/BF16: re-checked elsewhere
    if carried is not None:
        manifest["files"].append(carried[0])
        manifest["parity"]["recheck"] = carried[1]
    write_manifest(staging, manifest)
    return manifest, verdicts


def _write_onnx(staging: Path, req: ExportRequest, shared: _Export) -> _OnnxFile:
    """The format's ONNX (FP32, FP16 or calibrated INT8) with our metadata, into ``staging``."""
    source = shared.source
    spec = source.spec
    started = time.perf_counter()
    metadata = {"model": spec.to_dict(), "normalization": normalization_of(spec),
                "class_names": source.class_names, "batch_range": shared.batch.to_dict(),
                "source": {k: source.source.get(k) for k in ("kind", "sha256", "seed")}}
    doc = (f"{spec.name}: {spec.num_classes} classes, input {spec.in_chans}x{spec.input_size}x"
           f"{spec.input_size} NCHW normalised with the mean/std in metadata_props; exported by "
           "resnet-deploy")
    fp16_report, int8_report = None, None
    suffix = {"fp16": ".fp16", "int8": f".int8-{req.flavour}" if req.flavour != "cpu" else ".int8"
              }.get(req.precision, "")
    onnx_name = f"{spec.name}{suffix}.onnx"
    if req.precision == "fp16":  # the converter works on its own copy
        proto, report = convert_to_fp16(shared.fp32_proto, io_fp16=req.io_fp16)
        fp16_report = report.to_dict()
    elif req.precision == "int8":
        proto, int8_report = _quantize(req, source, shared.fp32_proto, staging, shared.echo)
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(shared.fp32_proto)
    stamp_metadata(proto, {**metadata, "precision": req.precision}, doc)
    save_onnx(proto, staging / onnx_name)
    inputs, outputs = io_signature(proto)
    shared.echo(f"[{req.fmt}] {onnx_name}: {(staging / onnx_name).stat().st_size / 1e6:.1f} MB, "
                f"passes onnx.checker (full) ({time.perf_counter() - started:.1f}s)")
    return _OnnxFile(onnx_name, inputs, outputs, fp16_report, int8_report)


TIMING_CACHE = "timing.cache"


def _build_engine(staging: Path, req: ExportRequest, shared: _Export, target: Target,
                  written: _OnnxFile) -> tuple[str, dict[str, Any]]:
    """The TensorRT engine from the staged ONNX, reusing the previous artifact's timing cache
    where it was made by this TensorRT on this GPU; returns its file name and build record."""
    from .convert.tensorrt_build import (
        DEFAULT_WORKSPACE,
        EngineSettings,
        build_engine,
        timing_cache_reusable,
    )

    spec, previous = shared.source.spec, target.previous
    engine_name = f"{spec.name}.engine"
    reuse = timing_cache_reusable(previous, shared.trt_version, shared.gpu)
    if reuse and previous is not None and \
            any(f["path"] == TIMING_CACHE for f in previous["files"]):
        try:
            shutil.copy2(artifact_file(target.out, TIMING_CACHE), staging / TIMING_CACHE)
        except (UserError, OSError):
            pass  # gone or not a plain file of the folder: build without it
    settings = EngineSettings(
        input_name=written.inputs[0]["name"], profile_shapes=shared.batch.profile_shapes(spec),
        precision=req.precision, workspace=req.workspace or DEFAULT_WORKSPACE,
        timing_cache=staging / TIMING_CACHE, reuse_timing_cache=reuse)
    tensorrt = build_engine(staging / written.name, staging / engine_name, settings, shared.echo)
    return engine_name, tensorrt


def _quantize(req: ExportRequest, source: SourceModel, fp32_proto: onnx.ModelProto,
              staging: Path, echo: Echo) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """FP32 graph -> INT8 QDQ graph, calibrated on training data (never the judging data)."""
    calibration = calibration_set(source.spec, source.dataset, req.calib_data, req.calib_count,
                                  req.calib_method)
    if calibration.warning:
        echo(f"warning: {calibration.warning}")
    echo(f"[{req.fmt}] calibrating INT8 ({req.flavour} flavour, {req.calib_method}) on "
         f"{calibration.description['count']} images of the "
         f"{calibration.description['source']}")
    # inside the staging folder: a killed export leaves it where the next run's cleanup looks
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=staging) as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        save_onnx(fp32_proto, fp32_path)
        assert req.flavour is not None  # an INT8 format always has a flavour
        report = quantize_qdq(fp32_path, int8_path, calibration.images, flavour=req.flavour,
                              method=req.calib_method, keep_float=req.int8_keep_float)
        proto = onnx.load(str(int8_path))
    report.pop("calibration", None)  # the calibration section below says more
    section: dict[str, Any] = {"flavour": req.flavour, "quantizer": report,
                               "calibration": calibration.description}
    section["max_accuracy_drop"] = req.max_accuracy_drop if req.max_accuracy_drop is not None \
        else TOLERANCES["int8"].max_accuracy_drop
    if req.int8_keep_float:
        section["accuracy_retry"] = {
            "how": "onnxruntime quantize_static nodes_to_exclude",
            "kept_float": report.get("kept_float", []),
            "why": "the first INT8 export missed its accuracy contract; the most sensitive "
                   "layers (first convolution, classifier) stay in float"}
        echo(f"[{req.fmt}] accuracy-controlled retry: keeping "
             f"{', '.join(report.get('kept_float', [])) or 'no layer'} in float")
    return proto, section


# ---------------------------------------------------------------------------------------------
# Verify
# ---------------------------------------------------------------------------------------------


def verify_artifact(folder: Path, echo: Echo = print) -> dict[str, Any]:
    """Re-run the gate on an existing artifact; raises :class:`ParityFailed` if it fails now."""
    folder = Path(folder)
    for note in recover_interrupted(folder):
        echo(f"note: {note}")
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    echo(f"{folder}: {len(manifest['files'])} files match their sha256")
    if check_digest(folder, manifest):
        echo(f"{folder}: {MANIFEST_NAME} matches its digest (not edited since export)")
    else:
        echo(f"note: {MANIFEST_NAME} records no digest (written by an older release); its "
             "content is checked against the ONNX file only")
    if manifest["format"] == "trt":
        from .runtime.tensorrt_runner import check_engine_compatible, require_tensorrt

        trt, gpu = require_tensorrt("verifying a TensorRT engine")
        check_engine_compatible(manifest, str(trt.__version__), gpu)
    source = source_from_manifest(manifest, folder)
    parity, verdicts = judge_artifact(folder, manifest, source, echo)
    deploy = manifest.get("deploy") or {}
    deployed_on = deploy.get("runtime")
    if not parity["passed"] and deployed_on and verdict_on(
            {**manifest, "parity": parity}, deployed_on, deploy["precision"]):
        echo(f"note: the gate fails on another runtime but passes on {deployed_on}, the one "
             "this artifact is deployed on")
        return parity
    if not parity["passed"]:
        raise ParityFailed(f"parity gate FAILED on {folder}: {first_failure(verdicts)}")
    if not manifest["parity"].get("passed"):
        echo("note: the manifest records a failed gate at export; it passes now")
    return parity


__all__ = ["ExportRequest", "ExportResult", "export_artifact", "export_artifacts",
           "verify_artifact"]
