"""An artifact folder as every reader sees it: the manifest's schema, reading and file checks.

The exporter writes manifests (:mod:`export.manifest`); the runtime's loader, ``verify`` and the
benchmark read them through this module only, so the schema is checked in one place. The keys are
documented in docs/export.md:

    schema_version  1
    kind            "resnet-deploy-artifact"
    format          one of FORMATS
    precision       the precision contract, e.g. "fp32", "fp16"
    artifact        relative name of the main file (the .onnx or the .engine)
    files           [{"path", "sha256", "bytes", "role"}] - every file in the folder but this one
    model           ModelSpec.to_dict()
    class_names     list or null
    normalization   {"mean", "std", "layout", "pixel_scale", "color"}
    source          {"kind": "checkpoint"|"state_dict"|"seed", "path", "sha256", "seed", ...}
    inputs/outputs  [{"name", "shape" ("batch" for the dynamic dim), "dtype"}]
    batch_range     {"min", "opt", "max"}
    opset           int
    fp16            the converter's report (FP16 formats) or null
    int8            {"flavour", "quantizer": report, "calibration": {...}} (INT8 formats) or null
    tensorrt        build settings (trt format) or null
    gpu             {"name", "compute_capability"} for engines, else null
    versions        {"python", "torch", "onnx", "onnxruntime", "tensorrt" (null if absent)}
    parity          {"passed", "runs": [verdict per candidate runtime], "inputs": {...}}
    created         ISO 8601 UTC
    tool            {"name": "resnet-deploy", "version": export.__version__}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError
from .fileio import sha256_file

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
KIND = "resnet-deploy-artifact"
#: every artifact format the exporter writes, and the precision contract each one carries
FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "trt")
REQUIRED_KEYS = ("schema_version", "kind", "format", "precision", "artifact", "files", "model",
                 "source", "inputs", "outputs", "batch_range", "versions", "parity", "created",
                 "tool")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Load and check a manifest; every problem is one :class:`UserError` line."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME if folder.is_dir() or not folder.suffix else folder
    if not path.is_file():
        raise UserError(f"no {MANIFEST_NAME} in {folder}: not an artifact folder")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError(f"{path} is not a resnet-deploy artifact manifest")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path} has schema_version {data.get('schema_version')}; this release "
                        f"reads {SCHEMA_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}")
    if data["format"] not in FORMATS:
        raise UserError(f"{path}: unknown format {data['format']!r}")
    if not any(f.get("path") == data["artifact"] for f in data["files"]):
        raise UserError(f"{path}: the artifact {data['artifact']} is not among its files")
    return data


def verify_files(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Every listed file exists and has the recorded sha256 (tampering or truncation -> error)."""
    folder = Path(folder)
    for entry in manifest["files"]:
        name = entry["path"]
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise UserError(f"manifest lists {name!r}, which is outside the artifact folder")
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing (listed in {MANIFEST_NAME})")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise UserError(f"sha256 mismatch for {path}: {digest[:16]}..., manifest says "
                            f"{entry['sha256'][:16]}... (the file changed after export)")
