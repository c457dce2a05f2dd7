"""Building and writing an artifact's manifest; its schema (keys, typed shape, checks) is
:mod:`export.core.manifest_schema`'s, re-exported here so that readers and writers import one
module.

An export assembles its manifest with :func:`build_manifest` from :class:`ManifestParts`, and
every write (the export's, the planner's ``deploy`` section) goes through :func:`write_manifest`,
which seals it with its digest (:func:`manifest_digest`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import sha256_file, write_json
from .manifest_schema import (
    CONTRACTS,
    DEPLOY_PRECISIONS,
    DIGEST_KEY,
    FORMATS,
    IO_DTYPES,
    KIND,
    MANIFEST_NAME,
    MAX_BATCH,
    MAX_INPUT_SIZE,
    MAX_MANIFEST_BYTES,
    REQUIRED_KEYS,
    SCHEMA_VERSION,
    SOURCE_KINDS,
    UNSEALED_KEYS,
    FileEntry,
    Manifest,
    check_manifest,
    relative_name,
)

__all__ = [
    "CONTRACTS", "DEPLOY_PRECISIONS", "DIGEST_KEY", "FAILED_SUFFIX", "FORMATS", "IO_DTYPES",
    "KIND", "MANIFEST_NAME", "MAX_BATCH", "MAX_INPUT_SIZE", "MAX_MANIFEST_BYTES",
    "REQUIRED_KEYS", "SCHEMA_VERSION", "SOURCE_KINDS", "STAGING_SUFFIX", "UNSEALED_KEYS",
    "FileEntry", "Manifest", "ManifestParts", "build_manifest", "check_manifest", "file_entry",
    "library_versions", "manifest_digest", "now_utc", "relative_name", "write_manifest",
]

#: Leftovers of a killed export beside ``<out>``: its staging folder and the previous artifact.
STAGING_SUFFIX = ".partial"
FAILED_SUFFIX = ".FAILED"


def library_versions(tensorrt_version: str | None) -> dict[str, str | None]:
    """The ``versions`` an artifact records: Python and the libraries that made and judged it."""
    import onnx
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "tensorrt": tensorrt_version}


def file_entry(folder: Path, name: str, role: str) -> FileEntry:
    path = folder / name
    return {"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "role": role}


def now_utc() -> str:
    """``created``: now, ISO 8601 in UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class ManifestParts:
    """What an export records about one artifact, for :func:`build_manifest` (the keys and their
    meaning: :mod:`.manifest_schema`). ``parity`` is the gate's judgement, filled in once the
    files are judged; the sections a format lacks are None."""

    fmt: str
    precision: str
    artifact: str
    files: list[FileEntry]
    model: dict[str, Any]
    normalization: dict[str, Any]
    source: dict[str, Any]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    batch_range: dict[str, int]
    opset: int
    versions: dict[str, Any]
    parity: dict[str, Any]
    class_names: list[str] | None = None
    fp16: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    tensorrt: dict[str, Any] | None = None
    gpu: dict[str, Any] | None = None


def build_manifest(parts: ManifestParts) -> Manifest:
    """Assemble an export's manifest in the documented key order (``parity`` as the gate
    judged it; no ``deploy``, no digest: :func:`write_manifest` seals it)."""
    from .. import __version__

    if parts.fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {parts.fmt!r}")
    return {
        "schema_version": SCHEMA_VERSION, "kind": KIND, "format": parts.fmt,
        "precision": parts.precision, "artifact": parts.artifact, "files": parts.files,
        "model": parts.model, "class_names": parts.class_names,
        "normalization": parts.normalization, "source": parts.source, "inputs": parts.inputs,
        "outputs": parts.outputs, "batch_range": parts.batch_range, "opset": parts.opset,
        "fp16": parts.fp16, "int8": parts.int8, "tensorrt": parts.tensorrt, "gpu": parts.gpu,
        "versions": parts.versions, "parity": parts.parity, "created": now_utc(),
        "tool": {"name": "resnet-deploy", "version": __version__},
    }


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), without
    :data:`UNSEALED_KEYS`: what ``verify`` compares to tell an edited manifest from one we wrote."""
    content = {k: v for k, v in manifest.items() if k not in UNSEALED_KEYS}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write the manifest with its digest (:data:`DIGEST_KEY`) recomputed: every writer of ours
    seals what it writes."""
    manifest["manifest_sha256"] = manifest_digest(manifest)  # DIGEST_KEY
    path = Path(folder) / MANIFEST_NAME
    write_json(path, manifest)
    return path
