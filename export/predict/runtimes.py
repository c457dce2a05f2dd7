"""Which runtime runs an artifact for prediction: ``--runtime`` names -> a runner.

Every name goes through :func:`export.runtime.load_artifact`, so the manifest checks, the sha256
of every file and the refusal of an artifact whose parity gate failed are the same as for the
benchmark and ``resnet-export verify``:

    auto               the artifact's own runtime, as load_artifact picks it (ONNX Runtime on the
                       CPU for ONNX files, TensorRT for engines)
    onnxruntime        ONNX Runtime, CPU provider; for an engine, the ONNX file it was built from
    onnxruntime-cuda   ONNX Runtime, CUDA provider (CPU fallback for unsupported nodes)
    openvino           OpenVINO's CPU plugin (the ``openvino`` extra), on the ONNX file
    tensorrt           TensorRT (engine artifacts only)

A runtime that cannot run here raises :class:`BackendUnavailable` with the reason; a runtime
that cannot run this artifact (``tensorrt`` for an ONNX file) raises :class:`UserError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..runtime import Runner, load_artifact

#: --runtime name -> what it is, for the help text and the docs
RUNTIMES = {
    "auto": "the artifact's own runtime: ONNX Runtime (CPU) for ONNX files, TensorRT for engines",
    "onnxruntime": "ONNX Runtime, CPU (for an engine: the ONNX file it was built from)",
    "onnxruntime-cuda": "ONNX Runtime, CUDA execution provider",
    "openvino": "OpenVINO, CPU, on the artifact's ONNX file (the openvino extra)",
    "tensorrt": "TensorRT (engine artifacts)",
}
_PROVIDERS = {"onnxruntime": ["CPUExecutionProvider"],
              "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
              "openvino": None}


def _onnx_file(manifest: dict[str, Any]) -> str | None:
    """The ONNX file of the folder to run instead of the main artifact (an engine's source)."""
    if manifest["format"] == "trt":
        return (manifest.get("tensorrt") or {}).get("built_from") or next(
            (f["path"] for f in manifest["files"] if f.get("role") == "source-onnx"), None)
    return None


def open_runner(folder: str | Path, manifest: dict[str, Any], runtime: str = "auto",
                threads: int | None = None, verify: bool = True) -> Runner:
    """A runner (not yet activated) for the artifact in ``folder`` on ``runtime``."""
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    fmt = manifest["format"]
    kwargs: dict[str, Any] = {"threads": threads} if threads else {}
    if runtime == "auto":
        return load_artifact(folder, verify=verify, **(kwargs if fmt != "trt" else {}))
    if runtime == "tensorrt":
        if fmt != "trt":
            raise UserError(f"--runtime tensorrt runs TensorRT engines; {folder} is a {fmt} "
                            "artifact (export one with resnet-export --fmt trt)")
        return load_artifact(folder, verify=verify, runtime="tensorrt")
    source = _onnx_file(manifest)
    if fmt == "trt":
        if source is None:
            raise UserError(f"{folder} holds no ONNX file beside its engine for --runtime "
                            f"{runtime}")
        kwargs["file"] = source
    return load_artifact(folder, _PROVIDERS[runtime], verify=verify,
                         runtime="openvino" if runtime == "openvino" else "onnxruntime",
                         **kwargs)


__all__ = ["RUNTIMES", "open_runner"]
