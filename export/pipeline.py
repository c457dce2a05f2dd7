"""Export and verify, end to end: the only module that knows the order of the steps.

Export: check prerequisites -> check the output folder and the memory the gate needs -> eager
reference -> FP32 ONNX -> (FP16 ONNX) -> (TensorRT engine) -> parity gate -> manifest -> into
place. Everything is written into a hidden staging folder beside the output
(``.<out>.<pid>-XXXX.partial``); only an artifact that passed its gate is moved to the output
folder, atomically replacing a previous artifact there (:func:`replace_folder`). A failed artifact
is deleted (or, with ``keep_failed``, moved to ``<out>.FAILED`` with its manifest saying so) and
the command exits 1. ``--fmt trt`` checks for TensorRT and a GPU before anything is created.

The output folder is only ever replaced when it is provably an artifact of this tool (our
manifest, and nothing in the folder but the files it lists), never when it lies inside another
artifact, and - without ``overwrite`` - only by an export of the same source weights
(docs/export.md, "The output folder").

Verify: manifest -> every file's sha256 -> (engine compatibility) -> rebuild the eager reference
from the recorded weights (sha256 checked) or seed -> the same gate -> exit 1 on failure.
Verify never modifies the artifact.
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
from .convert.int8 import METHODS, quantize_qdq
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
    FORMATS,
    MANIFEST_NAME,
    STAGING_SUFFIX,
    Manifest,
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
from .gate.judge import judge_artifact
from .gate.parity import TOLERANCES, Verdict
from .request import (
    ExportRequest,
    check_limits,
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
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"unknown format {unknown[0] if unknown else None!r}; choose from "
                        f"{', '.join(FORMATS)}")
    requests = [dataclasses.replace(req, fmt=f) for f in formats]
    if req.out is not None and len(requests) > 1:
        raise UserError("--out names one folder; give --out-dir for several formats")
    trt_version, gpu = None, None
    if "trt" in formats:  # before anything is read or created
        from .convert.tensorrt_build import require_tensorrt

        trt, gpu = require_tensorrt()
        trt_version = str(trt.__version__)
    if req.io_fp16 and not any(r.precision == "fp16" for r in requests):
        raise UserError("--fp16-io needs an FP16 artifact (--fmt onnx-fp16, or trt with "
                        "--trt-precision fp16)")

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

    results, failures = [], []
    for r, target in zip(requests, targets):
        try:
            results.append(_export_one(r, source, fp32_proto, batch, target, trt_version, gpu,
                                       echo, warn))
        except ParityFailed as exc:
            failures.append(str(exc))
        except OSError as exc:  # disk full, permissions: one line, not a traceback
            raise UserError(f"cannot write {target.out}: {exc.strerror or exc}") from None
    if failures:
        raise ParityFailed(" | ".join(failures))
    return results


def _export_one(req: ExportRequest, source: SourceModel, fp32_proto: onnx.ModelProto,
                batch: BatchRange, target: Target, trt_version: str | None, gpu: Any,
                echo: Echo, warn: Echo) -> ExportResult:
    """One format: staging folder -> files -> gate -> manifest -> into place (or clean up)."""
    spec = source.spec
    out = target.out
    created = make_dirs(out.parent)
    staging: Path | None = None
    promoted = False
    try:
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out), suffix=STAGING_SUFFIX,
                                        dir=out.parent))
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; an artifact is not
        manifest, verdicts = _build_in(staging, req, source, fp32_proto, batch, trt_version, gpu,
                                       target.previous, out, echo)
        if not manifest["parity"]["passed"]:
            failed_note = "nothing was written"
            if req.keep_failed:
                failed = out.with_name(out.name + FAILED_SUFFIX)
                previous = check_failed_slot(out, warn)  # again: it may have changed meanwhile
                _announce_replacement(failed, previous, warn)
                replace_folder(staging, failed)
                failed_note = f"kept for inspection in {failed}"
            raise ParityFailed(f"parity gate FAILED for {spec.name} {req.fmt}: "
                               f"{_first_failure(verdicts)}; {failed_note}"
                               f"{_int8_help(req, manifest)}")
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


def _int8_help(req: ExportRequest, manifest: Manifest) -> str:
    """What may get an INT8 artifact through its gate, after a failure."""
    if req.precision != "int8":
        return ""
    count = ((manifest.get("int8") or {}).get("calibration") or {}).get("count")
    others = [m for m in METHODS if m != req.calib_method]
    return (f"; what may help: more calibration images (--calib-count, {count} now), "
            f"another --calib-method ({' or '.join(others)})")


def _first_failure(verdicts: list[Verdict]) -> str:
    for v in verdicts:
        for c in v.comparisons:
            if not c.passed:
                return f"{v.candidate} on '{c.name}': {c.failures[0]}"
        if v.accuracy is not None and not v.accuracy.passed:
            return f"{v.candidate} on the held-out accuracy check: {v.accuracy.failures[0]}"
    return "no comparison passed"


def _build_in(staging: Path, req: ExportRequest, source: SourceModel,
              fp32_proto: onnx.ModelProto, batch: BatchRange, trt_version: str | None, gpu: Any,
              previous: Manifest | None, out: Path, echo: Echo
              ) -> tuple[Manifest, list[Verdict]]:
    """Write every file of one format into ``staging``, gate them, write the manifest there."""
    spec = source.spec
    started = time.perf_counter()
    metadata = {"model": spec.to_dict(), "normalization": normalization_of(spec),
                "class_names": source.class_names, "batch_range": batch.to_dict(),
                "source": {k: source.source.get(k) for k in ("kind", "sha256", "seed")}}
    doc = (f"{spec.name}: {spec.num_classes} classes, input {spec.in_chans}x{spec.input_size}x"
           f"{spec.input_size} NCHW normalised with the mean/std in metadata_props; exported by "
           "resnet-deploy")
    fp16_report, int8_report = None, None
    suffix = {"fp16": ".fp16", "int8": f".int8-{req.flavour}" if req.flavour != "cpu" else ".int8"
              }.get(req.precision, "")
    onnx_name = f"{spec.name}{suffix}.onnx"
    if req.precision == "fp16":  # the converter works on its own copy
        proto, report = convert_to_fp16(fp32_proto, io_fp16=req.io_fp16)
        fp16_report = report.to_dict()
    elif req.precision == "int8":
        proto, int8_report = _quantize(req, source, fp32_proto, staging, echo)
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(fp32_proto)
    stamp_metadata(proto, {**metadata, "precision": req.precision}, doc)
    save_onnx(proto, staging / onnx_name)
    inputs, outputs = io_signature(proto)
    echo(f"[{req.fmt}] {onnx_name}: {(staging / onnx_name).stat().st_size / 1e6:.1f} MB, passes "
         f"onnx.checker (full) ({time.perf_counter() - started:.1f}s)")
    files = [file_entry(staging, onnx_name, "artifact" if req.fmt != "trt" else "source-onnx")]
    artifact, tensorrt = onnx_name, None
    if req.fmt == "trt":
        from .convert.tensorrt_build import (
            DEFAULT_WORKSPACE,
            build_engine,
            timing_cache_reusable,
        )

        engine_name, cache_name = f"{spec.name}.engine", "timing.cache"
        reuse = timing_cache_reusable(previous, trt_version, gpu)
        if reuse and previous is not None and \
                any(f["path"] == cache_name for f in previous["files"]):
            try:
                shutil.copy2(artifact_file(out, cache_name), staging / cache_name)
            except (UserError, OSError):
                pass  # gone or not a plain file of the folder: build without it
        tensorrt = build_engine(staging / onnx_name, staging / engine_name, inputs[0]["name"],
                                batch.profile_shapes(spec), req.precision,
                                req.workspace or DEFAULT_WORKSPACE, staging / cache_name,
                                reuse, echo)
        artifact = engine_name
        files.insert(0, file_entry(staging, engine_name, "artifact"))
        files.append(file_entry(staging, cache_name, "timing-cache"))

    manifest = build_manifest(
        fmt=req.fmt, precision=req.precision, artifact=artifact, files=files,
        model=spec.to_dict(), class_names=source.class_names,
        normalization=normalization_of(spec), source=with_relative_path(source.source, out),
        inputs=inputs,
        outputs=outputs, batch_range=batch.to_dict(), opset=req.opset, fp16=fp16_report,
        tensorrt=tensorrt, gpu=gpu.to_dict() if gpu is not None and req.fmt == "trt" else None,
        versions=library_versions(trt_version), parity={"passed": False, "runs": []},
        int8=int8_report)
    parity, verdicts = judge_artifact(staging, manifest, source, echo)
    manifest["parity"] = parity
    write_manifest(staging, manifest)
    return manifest, verdicts


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
        raise ParityFailed(f"parity gate FAILED on {folder}: {_first_failure(verdicts)}")
    if not manifest["parity"].get("passed"):
        echo("note: the manifest records a failed gate at export; it passes now")
    return parity


__all__ = ["ExportRequest", "ExportResult", "export_artifact", "export_artifacts",
           "verify_artifact"]
