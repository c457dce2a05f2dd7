"""Loading an artifact: a folder with manifest.json -> a ready-to-activate runner.

:func:`load_artifact` is the one way the benchmark, ``resnet-export verify`` and prediction open an
exported artifact. It reads the manifest (schema checked in :mod:`export.core.artifact`), checks
every file's sha256, and returns the runner for the artifact's format, with the artifact's input
contract, so a batch it does not promise (wrong C/H/W, or N outside the batch range) is one clear
``ValueError`` instead of a runtime's stack of shape errors.

Every file is opened at its real path inside the folder (:func:`artifact_file`: a listed file
that is a link out of the folder is refused, with or without the sha256 check), and an ONNX
file's external data must be one of the artifact's own listed files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.artifact import (artifact_file, check_onnx_file, read_manifest, recover_interrupted,
                             verify_files)
from ..core.errors import UserError
from .base import InputContract, Runner


def runner_for(folder: Path, manifest: dict[str, Any], providers: list[str] | None = None, *,
               file: str | None = None, **runner_kwargs: Any) -> Runner:
    """The runner for an already read (and verified) manifest.

    ``file``: run another ONNX file of the folder than the main artifact (an engine's source ONNX).
    ``runner_kwargs`` go to :class:`OnnxRuntimeRunner` (threads, optimization_level,
    session_config).
    """
    contract = InputContract.from_manifest(manifest)
    if manifest["format"] == "trt" and file is None:
        from .tensorrt_runner import TensorRTRunner

        return TensorRTRunner(artifact_file(folder, manifest["artifact"]), manifest)
    from .ort_runner import OnnxRuntimeRunner

    path = artifact_file(folder, file or manifest["artifact"])
    check_onnx_file(folder, path, manifest)
    precision = "fp32" if file is not None and manifest["precision"] == "fp32" else \
        manifest["precision"]
    return OnnxRuntimeRunner(path, providers, precision=precision, contract=contract,
                             **runner_kwargs)


def load_artifact(folder: str | Path, providers: list[str] | None = None, verify: bool = True,
                  allow_failed: bool = False, **runner_kwargs: Any) -> Runner:
    """Artifact folder -> runner (not yet activated).

    ``providers``: ONNX Runtime execution providers for ONNX artifacts (default CPU).
    ``verify``: check every file's sha256 against the manifest first (default on).
    ``allow_failed``: also load an artifact whose parity gate failed.
    Raises :class:`UserError` for a bad folder, a tampered file or an incompatible engine, and
    :class:`BackendUnavailable` when the runtime is missing.
    """
    folder = Path(folder)
    recover_interrupted(folder)  # an export killed while replacing this folder
    manifest = read_manifest(folder)
    if not manifest["parity"].get("passed") and not allow_failed:
        raise UserError(f"refusing {folder}: its parity gate failed at export")
    if verify:
        verify_files(folder, manifest)
    return runner_for(folder, manifest, providers, **runner_kwargs)
