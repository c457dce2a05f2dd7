"""Which runtime runs an artifact for prediction: ``--runtime`` names -> a runner.

Every name goes through :func:`export.runtime.load_artifact`, so the manifest checks, the sha256
of every file and the refusal of an artifact whose parity gate failed are the same as for the
benchmark and ``resnet-export verify``:

    auto               as load_artifact picks it: the runtime, precision and settings of the
                       manifest's ``deploy`` section (resnet-plan's choice) where it has one,
                       else the artifact's own runtime (ONNX Runtime on the CPU for ONNX files,
                       TensorRT for engines)
    any registry name  that runtime (:mod:`export.runtime.registry`); for an engine artifact, an
                       ONNX runtime runs the ONNX file the engine was built from

A runtime that cannot run here raises :class:`BackendUnavailable` with the reason; a runtime
that cannot run this artifact (``tensorrt`` for an ONNX file) raises :class:`UserError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.manifest import Manifest
from ..runtime import Runner, load_artifact
from ..runtime.registry import RUNTIMES, get_runtime

#: what --runtime accepts: "auto" (the artifact's own runtime) and every runtime of the registry
RUNTIME_CHOICES = ("auto", *RUNTIMES)


def _onnx_file(manifest: Manifest) -> str | None:
    """The ONNX file of the folder to run instead of the main artifact (an engine's source)."""
    if manifest["format"] == "trt":
        return (manifest.get("tensorrt") or {}).get("built_from") or next(
            (f["path"] for f in manifest["files"] if f.get("role") == "source-onnx"), None)
    return None


def open_runner(folder: str | Path, manifest: Manifest, runtime: str = "auto",
                threads: int | None = None, verify: bool = True) -> Runner:
    """A runner (not yet activated) for the artifact in ``folder`` on ``runtime``."""
    fmt = manifest["format"]
    kwargs: dict[str, Any] = {"threads": threads} if threads and fmt != "trt" else {}
    if runtime == "auto":
        return load_artifact(folder, verify=verify, **kwargs)
    info = get_runtime(runtime)
    if runtime == "tensorrt" and fmt != "trt":
        raise UserError(f"--runtime tensorrt runs TensorRT engines; {folder} is a {fmt} "
                        "artifact (export one with resnet-export --fmt trt)")
    if fmt == "trt" and info.onnx_of_engine:
        source = _onnx_file(manifest)
        if source is None:
            raise UserError(f"{folder} holds no ONNX file beside its engine for --runtime "
                            f"{runtime}")
        kwargs = {"file": source, **({"threads": threads} if threads else {})}
    return load_artifact(folder, verify=verify, runtime=runtime, **kwargs)


__all__ = ["RUNTIME_CHOICES", "open_runner"]
