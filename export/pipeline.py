"""Export and verify, end to end: the only module that knows the order of the steps.

Export: check prerequisites -> eager reference -> FP32 ONNX -> (FP16 ONNX) -> (TensorRT engine)
-> parity gate -> manifest -> into place. Everything is written into a hidden staging folder
beside the output (``.<out>.XXXX.partial``); only an artifact that passed its gate is renamed to
the output folder, atomically replacing a previous artifact there. A failed artifact is deleted
(or, with ``keep_failed``, renamed to ``<out>.FAILED`` with its manifest saying so) and the
command exits 1. ``--fmt trt`` checks for TensorRT and a GPU before anything is created.

Verify: manifest -> every file's sha256 -> (engine compatibility) -> rebuild the eager reference
from the recorded weights (sha256 checked) or seed -> the same gate -> exit 1 on failure.
Verify never modifies the artifact.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

from .core.artifact import FORMATS, MANIFEST_NAME, read_manifest, verify_files
from .core.errors import BackendUnavailable, ParityFailed, UserError, first_line
from .core.fileio import current_umask
from .core.models import ModelSpec, default_spec
from .fp16 import convert_to_fp16
from .manifest import build_manifest, file_entry, library_versions, write_manifest
from .onnx_export import (DEFAULT_OPSET, export_onnx, io_signature, save_onnx, stamp_metadata)
from .parity import (ParityInput, Verdict, random_inputs, real_inputs, run_gate, table_footer,
                     table_header, table_row)
from .core.shapes import BatchRange
from .runtime.base import Runner
from .runtime.loader import runner_for
from .runtime.openvino_runner import openvino_usable
from .runtime.ort_runner import cuda_provider_usable
from .runtime.torch_runner import TorchRunner
from .train.data import reference_images
from .weights import DEFAULT_SEED, SourceModel, checkpoint_source, fresh_source, \
    source_from_manifest

RANDOM_SEED = 1234
Echo = Callable[[str], None]


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

    @property
    def precision(self) -> str:
        return {"onnx": "fp32", "onnx-fp16": "fp16"}.get(self.fmt, self.trt_precision)


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    verdicts: list[Verdict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The eager reference
# ---------------------------------------------------------------------------------------------


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


def default_out(spec: ModelSpec, req: ExportRequest) -> Path:
    suffix = "trt-fp32" if req.fmt == "trt" and req.trt_precision == "fp32" else req.fmt
    return Path("artifacts") / f"{spec.name}-{suffix}"


def normalization_of(spec: ModelSpec) -> dict[str, Any]:
    return {"mean": list(spec.mean), "std": list(spec.std), "layout": "NCHW",
            "pixel_scale": "pixels / 255, then (x - mean) / std per channel",
            "color": "RGB" if spec.in_chans == 3 else f"{spec.in_chans}-channel (grayscale)"}


# ---------------------------------------------------------------------------------------------
# The gate's inputs and runners
# ---------------------------------------------------------------------------------------------


def parity_inputs(spec: ModelSpec, batch: BatchRange, dataset: dict[str, Any] | None
                  ) -> tuple[list[ParityInput], dict[str, Any]]:
    """Real test-split images (where available) and seeded random inputs at each batch size."""
    sizes = batch.parity_sizes()
    shape = (spec.in_chans, spec.input_size, spec.input_size)
    items: list[ParityInput] = []
    real: dict[str, Any] = {"available": False, "dataset": dataset, "count": 0, "note": None}
    try:
        images = reference_images(dataset, spec, limit=max(sizes))
    except UserError as exc:
        real["note"] = f"real images unavailable: {exc}"
    else:
        if len(images):
            items += real_inputs(images, sizes)
            real.update(available=True, count=int(len(images)))
        else:
            real["note"] = "real images unavailable: the test split is empty"
    items += random_inputs(shape, sizes, RANDOM_SEED)
    described = {"batch_sizes": sizes, "real": real,
                 "random": {"distribution": "N(0,1)", "seed": RANDOM_SEED}}
    return items, described


@dataclass
class Candidate:
    """One runtime running the artifact, and the precision contract it is judged by."""

    runner: Runner
    contract: str


def candidate_runners(folder: Path, manifest: dict[str, Any]) -> list[Candidate]:
    """The artifact in every runtime here that runs it, each with the contract it is judged by.

    ONNX formats: ONNX Runtime CPU, the CUDA provider where it is usable (the only ONNX Runtime
    that computes FP16 natively), and OpenVINO's CPU plugin where it is installed, at the
    artifact's precision set explicitly and, for FP32 artifacts on CPUs with native BF16, also at
    bf16 (the bf16 contract). An engine: the ONNX it was built from on ONNX Runtime (CPU, and
    CUDA where usable), then the engine itself.
    """
    own = manifest["precision"]
    built_from = manifest["tensorrt"]["built_from"] if manifest["format"] == "trt" else None
    providers = [["CPUExecutionProvider"]]
    if cuda_provider_usable():
        providers.append(["CUDAExecutionProvider"])
    found = [Candidate(runner_for(folder, manifest, p, file=built_from), own) for p in providers]
    if built_from is not None:
        return found + [Candidate(runner_for(folder, manifest), own)]
    if openvino_usable():
        found.append(Candidate(runner_for(folder, manifest, runtime="openvino"), own))
        if own == "fp32":
            try:
                found.append(Candidate(runner_for(folder, manifest, runtime="openvino",
                                                  precision="bf16"), "bf16"))
            except BackendUnavailable:  # no native BF16 here: not judged, never emulated
                pass
    return found


def gate(folder: Path, manifest: dict[str, Any], source: SourceModel, echo: Echo
         ) -> tuple[dict[str, Any], list[Verdict]]:
    """Run the gate for every candidate runtime; print a table for each."""
    spec = ModelSpec.from_dict(manifest["model"])
    batch = BatchRange.from_dict(manifest["batch_range"])
    dataset = source.dataset
    recorded = (manifest.get("parity") or {}).get("inputs", {}).get("real", {})
    if recorded.get("dataset") is not None:
        dataset = recorded["dataset"]
    inputs, described = parity_inputs(spec, batch, dataset)
    notes = [described["real"]["note"]] if described["real"]["note"] else []
    reference = TorchRunner(source.model, device="cpu")
    verdicts = []
    for found in candidate_runners(folder, manifest):
        candidate = found.runner
        started = time.perf_counter()
        echo(table_header(found.contract, candidate.label, reference.label,
                          candidate.arithmetic))
        try:
            verdict = run_gate(reference, candidate, inputs, found.contract, notes,
                               on_comparison=lambda c: echo(table_row(c)))
        except (UserError, BackendUnavailable, KeyboardInterrupt):
            raise
        except Exception as exc:  # an artifact its runtime cannot run fails the gate
            raise ParityFailed(f"{candidate.label} could not run the artifact: "
                               f"{first_line(exc)}") from None
        echo(table_footer(verdict) + f"  ({time.perf_counter() - started:.1f}s)")
        if found.contract != manifest["precision"] and not verdict.passed:
            echo(f"note: the {found.contract} contract failed on {candidate.label}; the "
                 f"artifact keeps its {manifest['precision']} verdict and will not be run at "
                 f"{found.contract}")
        verdicts.append(verdict)
    contracts: dict[str, bool] = {}
    for verdict in verdicts:
        contracts[verdict.precision] = contracts.get(verdict.precision, True) and verdict.passed
    # the artifact passes on its own contract; others (bf16 execution) are recorded beside it
    parity = {"passed": contracts[manifest["precision"]], "contracts": contracts,
              "inputs": described, "runs": [v.to_dict() for v in verdicts]}
    return parity, verdicts


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _check_out(out: Path) -> dict[str, Any] | None:
    """May we write ``out``? Returns the previous artifact's manifest there, if any."""
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot write {out}: {blocker} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_NAME).is_file():
            raise UserError(f"--out {out} exists and is not an artifact folder; choose another "
                            "--out or empty it")
        try:
            return read_manifest(out)
        except UserError:
            return None
    return None


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p that remembers what it created, so a failure can take it back."""
    created = []
    for parent in reversed([path, *path.parents]):
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    return created


def _promote(staging: Path, out: Path) -> None:
    """Rename the staging folder to ``out``, replacing a previous artifact as one step."""
    if out.exists():
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(staging, out)
        except OSError:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


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
        raise UserError("--out names one folder; leave it out when exporting several formats")
    trt_version, gpu = None, None
    if "trt" in formats:  # before anything is read or created
        from .tensorrt_build import require_tensorrt

        trt, gpu = require_tensorrt()
        trt_version = str(trt.__version__)
    if req.io_fp16 and not any(r.precision == "fp16" for r in requests):
        raise UserError("--fp16-io needs an FP16 artifact (--fmt onnx-fp16, or trt with "
                        "--trt-precision fp16)")

    source = resolve_source(req)
    spec = source.spec
    batch = req.batch or merge_batch(BatchRange.default_for(spec), *req.batch_parts)
    outs = [Path(r.out) if r.out is not None else default_out(spec, r) for r in requests]
    previous = [_check_out(out) for out in outs]
    for note in source.warnings:  # once we know the export will go ahead
        warn(f"warning: {note}")

    started = time.perf_counter()
    echo(f"exporting {spec.name} ({spec.num_classes} classes, {spec.in_chans}x{spec.input_size}x"
         f"{spec.input_size}, batch {batch}) with torch.onnx dynamo, opset {req.opset}")
    fp32_proto = export_onnx(source.model, spec, req.opset)
    echo(f"  traced and translated in {time.perf_counter() - started:.1f}s")

    results, failures = [], []
    for r, out, prev in zip(requests, outs, previous):
        try:
            results.append(_export_one(r, source, fp32_proto, batch, out, prev, trt_version, gpu,
                                       echo))
        except ParityFailed as exc:
            failures.append(str(exc))
        except OSError as exc:  # disk full, permissions: one line, not a traceback
            raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    if failures:
        raise ParityFailed(" | ".join(failures))
    return results


def _export_one(req: ExportRequest, source: SourceModel, fp32_proto: onnx.ModelProto,
                batch: BatchRange, out: Path, previous: dict[str, Any] | None,
                trt_version: str | None, gpu: Any, echo: Echo) -> ExportResult:
    """One format: staging folder -> files -> gate -> manifest -> rename (or clean up)."""
    spec = source.spec
    created = _make_dirs(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; an artifact folder is not
    promoted = False
    try:
        manifest, verdicts = _build_in(staging, req, source, fp32_proto, batch, trt_version, gpu,
                                       previous, out, echo)
        if not manifest["parity"]["passed"]:
            failed_note = "nothing was written"
            if req.keep_failed:
                failed = out.with_name(out.name + ".FAILED")
                shutil.rmtree(failed, ignore_errors=True)
                os.replace(staging, failed)
                failed_note = f"kept for inspection in {failed}"
            raise ParityFailed(f"parity gate FAILED for {spec.name} {req.fmt}: "
                               f"{_first_failure(verdicts)}; {failed_note}")
        _promote(staging, out)
        promoted = True
        files = ", ".join(f"{f['path']} ({f['bytes'] / 1e6:.1f} MB)" for f in manifest["files"])
        echo(f"wrote {out}/: {files}, {MANIFEST_NAME}")
        return ExportResult(out, manifest, verdicts)
    finally:
        if not promoted:
            shutil.rmtree(staging, ignore_errors=True)
            for path in reversed(created):
                try:
                    path.rmdir()
                except OSError:
                    break


def _first_failure(verdicts: list[Verdict]) -> str:
    for v in verdicts:
        for c in v.comparisons:
            if not c.passed:
                return f"{v.candidate} on '{c.name}': {c.failures[0]}"
    return "no comparison passed"


def _build_in(staging: Path, req: ExportRequest, source: SourceModel,
              fp32_proto: onnx.ModelProto, batch: BatchRange, trt_version: str | None, gpu: Any,
              previous: dict[str, Any] | None, out: Path, echo: Echo
              ) -> tuple[dict[str, Any], list[Verdict]]:
    """Write every file of one format into ``staging``, gate them, write the manifest there."""
    spec = source.spec
    started = time.perf_counter()
    metadata = {"model": spec.to_dict(), "normalization": normalization_of(spec),
                "class_names": source.class_names, "batch_range": batch.to_dict(),
                "source": {k: source.source.get(k) for k in ("kind", "sha256", "seed")}}
    doc = (f"{spec.name}: {spec.num_classes} classes, input {spec.in_chans}x{spec.input_size}x"
           f"{spec.input_size} NCHW normalised with the mean/std in metadata_props; exported by "
           "resnet-deploy")
    fp16_report = None
    fp16_onnx = req.precision == "fp16"
    if fp16_onnx:  # the converter works on its own copy
        proto, report = convert_to_fp16(fp32_proto, io_fp16=req.io_fp16)
        fp16_report = report.to_dict()
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(fp32_proto)
    stamp_metadata(proto, {**metadata, "precision": req.precision}, doc)
    onnx_name = f"{spec.name}.fp16.onnx" if fp16_onnx else f"{spec.name}.onnx"
    save_onnx(proto, staging / onnx_name)
    inputs, outputs = io_signature(proto)
    echo(f"[{req.fmt}] {onnx_name}: {(staging / onnx_name).stat().st_size / 1e6:.1f} MB, passes "
         f"onnx.checker (full) ({time.perf_counter() - started:.1f}s)")
    files = [file_entry(staging, onnx_name, "artifact" if req.fmt != "trt" else "source-onnx")]
    artifact, tensorrt = onnx_name, None
    if req.fmt == "trt":
        from .tensorrt_build import DEFAULT_WORKSPACE, build_engine, timing_cache_reusable

        engine_name, cache_name = f"{spec.name}.engine", "timing.cache"
        reuse = timing_cache_reusable(previous, trt_version, gpu)
        if reuse and (out / cache_name).is_file():
            shutil.copy2(out / cache_name, staging / cache_name)
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
        normalization=normalization_of(spec), source=source.source, inputs=inputs,
        outputs=outputs, batch_range=batch.to_dict(), opset=req.opset, fp16=fp16_report,
        tensorrt=tensorrt, gpu=gpu.to_dict() if gpu is not None and req.fmt == "trt" else None,
        versions=library_versions(trt_version), parity={"passed": False, "runs": []})
    parity, verdicts = gate(staging, manifest, source, echo)
    manifest["parity"] = parity
    write_manifest(staging, manifest)
    return manifest, verdicts


# ---------------------------------------------------------------------------------------------
# Verify
# ---------------------------------------------------------------------------------------------


def verify_artifact(folder: Path, echo: Echo = print) -> dict[str, Any]:
    """Re-run the gate on an existing artifact; raises :class:`ParityFailed` if it fails now."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    echo(f"{folder}: {len(manifest['files'])} files match their sha256")
    if manifest["format"] == "trt":
        from .tensorrt_build import check_engine_compatible, cuda_gpu, tensorrt_version

        if tensorrt_version() is None or cuda_gpu() is None:
            from .tensorrt_build import require_tensorrt

            require_tensorrt("verifying a TensorRT engine")
        check_engine_compatible(manifest, tensorrt_version(), cuda_gpu())
    source = source_from_manifest(manifest)
    parity, verdicts = gate(folder, manifest, source, echo)
    if not parity["passed"]:
        raise ParityFailed(f"parity gate FAILED on {folder}: {_first_failure(verdicts)}")
    if not manifest["parity"].get("passed"):
        echo("note: the manifest records a failed gate at export; it passes now")
    return parity


__all__ = ["ExportRequest", "ExportResult", "FORMATS", "ParityFailed", "export_artifact",
           "export_artifacts",
           "verify_artifact", "resolve_source", "parity_inputs", "gate"]
