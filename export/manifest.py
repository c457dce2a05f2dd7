"""Writing manifest.json: what an artifact folder holds, where it came from, whether it passed.

The schema and its reading live in :mod:`export.core.artifact` (every reader goes through it);
this module assembles a manifest in the documented key order.
"""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

from .core.artifact import FORMATS, KIND, MANIFEST_NAME, SCHEMA_VERSION
from .core.fileio import sha256_file, write_json


def library_versions(tensorrt_version: str | None) -> dict[str, str | None]:
    import onnx
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "tensorrt": tensorrt_version}


def file_entry(folder: Path, name: str, role: str) -> dict[str, Any]:
    path = folder / name
    return {"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "role": role}


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def build_manifest(*, fmt: str, precision: str, artifact: str, files: list[dict[str, Any]],
                   model: dict[str, Any], class_names: list[str] | None,
                   normalization: dict[str, Any], source: dict[str, Any],
                   inputs: list[dict], outputs: list[dict], batch_range: dict[str, int],
                   opset: int, fp16: dict | None, tensorrt: dict | None, gpu: dict | None,
                   versions: dict[str, Any], parity: dict[str, Any],
                   int8: dict | None = None) -> dict[str, Any]:
    """Assemble a manifest in the documented key order."""
    from . import __version__

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return {
        "schema_version": SCHEMA_VERSION, "kind": KIND, "format": fmt, "precision": precision,
        "artifact": artifact, "files": files, "model": model, "class_names": class_names,
        "normalization": normalization, "source": source, "inputs": inputs, "outputs": outputs,
        "batch_range": batch_range, "opset": opset, "fp16": fp16, "int8": int8,
        "tensorrt": tensorrt,
        "gpu": gpu, "versions": versions, "parity": parity, "created": now_utc(),
        "tool": {"name": "resnet-deploy", "version": __version__},
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST_NAME
    write_json(path, manifest)
    return path
