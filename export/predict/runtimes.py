"""Which runtime runs an artifact for prediction: ``--runtime`` names -> a runner.

Every name goes through :func:`export.runtime.load_artifact`, so the manifest checks, the sha256
of every file and the refusal of an artifact whose parity gate failed are the same as for the
benchmark and ``resnet-export verify``:

    auto               the artifact's own runtime (ONNX Runtime on the CPU for ONNX files,
                       TensorRT for engines); whatever :func:`load_artifact` picks
    onnxruntime        ONNX Runtime, CPU provider; for an engine, the ONNX file it was built from
    onnxruntime-cuda   ONNX Runtime, CUDA provider (CPU fallback for unsupported nodes)
    tensorrt           TensorRT (engine artifacts only)
    openvino           OpenVINO's CPU plugin on the artifact's ONNX file, where the OpenVINO
                       runner (``export.runtime.openvino_runner``) and ``openvino`` are installed

A runtime that cannot run here raises :class:`BackendUnavailable` with the reason; a runtime
that cannot run this artifact (``tensorrt`` for an ONNX file) raises :class:`UserError`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..core.errors import BackendUnavailable, UserError
from ..runtime import InputContract, Runner, load_artifact

#: --runtime name -> what it is, for the help text and the docs
RUNTIMES = {
    "auto": "the artifact's own runtime: ONNX Runtime (CPU) for ONNX files, TensorRT for engines",
    "onnxruntime": "ONNX Runtime, CPU (for an engine: the ONNX file it was built from)",
    "onnxruntime-cuda": "ONNX Runtime, CUDA execution provider",
    "tensorrt": "TensorRT (engine artifacts)",
    "openvino": "OpenVINO, CPU, on the artifact's ONNX file (when installed)",
}
OPENVINO_MODULE = "export.runtime.openvino_runner"
_PROVIDERS = {"onnxruntime": ["CPUExecutionProvider"],
              "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


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
    ort_kwargs = {"threads": threads} if threads else {}
    if runtime == "auto":
        return load_artifact(folder, verify=verify, **(ort_kwargs if fmt != "trt" else {}))
    if runtime == "tensorrt":
        if fmt != "trt":
            raise UserError(f"--runtime tensorrt runs TensorRT engines; {folder} is a {fmt} "
                            "artifact (export one with resnet-export --fmt trt)")
        return load_artifact(folder, verify=verify)
    source = _onnx_file(manifest)
    if fmt == "trt" and source is None:
        raise UserError(f"{folder} holds no ONNX file beside its engine for --runtime {runtime}")
    file_kwargs = {"file": source} if source else {}
    if runtime in _PROVIDERS:
        return load_artifact(folder, _PROVIDERS[runtime], verify=verify, **file_kwargs,
                             **ort_kwargs)
    return _openvino(folder, manifest, threads, verify, file_kwargs)


def _openvino(folder: str | Path, manifest: dict[str, Any], threads: int | None, verify: bool,
              file_kwargs: dict[str, Any]) -> Runner:
    try:
        module = importlib.import_module(OPENVINO_MODULE)
    except ImportError:
        raise BackendUnavailable("--runtime openvino: this resnet-deploy has no OpenVINO runner "
                                 f"({OPENVINO_MODULE})") from None
    # load_artifact does every check (manifest, sha256, gate) and names the ONNX file to run.
    checked = load_artifact(folder, verify=verify, **file_kwargs)
    onnx_path = getattr(checked, "onnx_path", None)
    if onnx_path is None:
        raise UserError(f"{folder} has no ONNX file for --runtime openvino")
    precision = "int8" if manifest["precision"] == "int8" else "fp32"
    runner = module.OpenVINORunner(onnx_path, precision=precision, threads=threads)
    runner.contract = InputContract.from_manifest(manifest)
    return runner


__all__ = ["RUNTIMES", "open_runner"]
