"""Loading an artifact: a folder with manifest.json -> a ready-to-activate runner.

:func:`load_artifact` is the one way the benchmark, ``resnet-export verify`` and prediction open an
exported artifact. It reads the manifest (schema checked in :mod:`export.core.manifest`), checks
every file's sha256, and returns the runner for the artifact's format, with the artifact's input
contract, so a batch it does not promise (wrong C/H/W, or N outside the batch range) is one clear
``ValueError`` instead of a runtime's stack of shape errors.

The manifest itself is never trusted: its model, I/O, class names and normalisation are
checked against the ONNX file (graph and stamped metadata, :mod:`export.core.agreement`) before
a runner is made, and ``verify`` also checks the manifest's own digest.

Every file is opened at its real path inside the folder (:func:`artifact_file`: a listed file
that is a link out of the folder is refused, with or without the sha256 check), and an ONNX
file's external data must be one of the artifact's own listed files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.agreement import check_digest, check_onnx_agrees
from ..core.artifact import artifact_file, check_onnx_file, read_manifest, verify_files
from ..core.errors import UserError
from ..core.folders import recover_interrupted
from ..core.manifest import Manifest
from .base import InputContract, Runner
from .registry import EXECUTION_PRECISIONS, default_runtime, get_runtime, runtimes_for
from .verdicts import usable_runtime


def runner_for(folder: Path, manifest: Manifest, providers: list[str] | None = None, *,
               runtime: str | None = None, precision: str | None = None,
               file: str | None = None, **runner_kwargs: Any) -> Runner:
    """The runner for an already read (and verified) manifest.

    ``runtime``: a name of the runtime registry (:mod:`.registry`) [default: the format's own].
    ``precision``: run at another precision than the artifact's contract where the runtime can
    (an FP32 ONNX at bf16 on OpenVINO); ``file``: run another ONNX file of the folder (an
    engine's source ONNX). ``providers`` overrides an ONNX Runtime entry's execution providers;
    ``runner_kwargs`` go to the runner (threads, ...).
    """
    fmt = manifest["format"]
    flavour = (manifest.get("int8") or {}).get("flavour")
    runtime = runtime or ("onnxruntime" if file else default_runtime(fmt))
    info = get_runtime(runtime)
    allowed = [r.name for r in runtimes_for(fmt, flavour, direct=file is None)
               if file is None or r.onnx_of_engine]
    if runtime not in allowed:
        what = f"{fmt} artifact" + (f" ({flavour} flavour)" if flavour else "")
        raise UserError(f"a {what} runs on {', '.join(allowed) or 'no runtime'}, not {runtime}")
    own = manifest["precision"]
    precision = precision or own
    if precision != own and precision not in EXECUTION_PRECISIONS.get((runtime, own), ()):
        raise UserError(f"a {own} artifact does not run at {precision} on {runtime}")
    contract = InputContract.from_manifest(manifest)
    if manifest["format"] == "trt":  # the engine's source ONNX says what the engine was built as
        tensorrt = manifest["tensorrt"]
        assert tensorrt is not None  # the schema check requires it of an engine
        source = artifact_file(folder, tensorrt["built_from"])
        check_onnx_agrees(source, check_onnx_file(folder, source, manifest), manifest)
    if runtime == "tensorrt":
        from .tensorrt_runner import TensorRTRunner

        return TensorRTRunner(artifact_file(folder, manifest["artifact"]), manifest)
    path = artifact_file(folder, file or manifest["artifact"])
    check_onnx_agrees(path, check_onnx_file(folder, path, manifest), manifest)
    if runtime == "openvino":
        from .openvino_runner import OpenVINORunner

        return OpenVINORunner(path, precision, runner_kwargs.pop("threads", None),
                              contract=contract, **runner_kwargs)
    from .ort_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, providers or list(info.providers), precision=precision,
                             contract=contract, **runner_kwargs)


def deployed(manifest: dict[str, Any], runtime: str | None, precision: str | None,
             providers: list[str] | None, runner_kwargs: dict[str, Any]
             ) -> tuple[str | None, str | None, dict[str, Any]]:
    """The runtime, precision and runner options a manifest's ``deploy`` section names (written
    by the deployment planner), where the caller named no runtime, precision or providers;
    options the caller gives (not None) win over the section's settings."""
    deploy = manifest.get("deploy")
    if not deploy or runtime is not None or precision is not None or providers is not None:
        return runtime, precision, runner_kwargs
    given = {k: v for k, v in runner_kwargs.items() if v is not None}
    return deploy["runtime"], deploy["precision"], {**deploy.get("settings", {}), **given}


def load_artifact(folder: str | Path, providers: list[str] | None = None, verify: bool = True,
                  allow_failed: bool = False, runtime: str | None = None,
                  precision: str | None = None, deploy: bool = True,
                  **runner_kwargs: Any) -> Runner:
    """Artifact folder -> runner (not yet activated).

    ``providers``: ONNX Runtime execution providers for ONNX artifacts (default CPU).
    ``runtime`` / ``precision``: see :func:`runner_for`; a precision the artifact's gate did not
    judge (``parity.contracts``) is refused.
    ``verify``: check every file's sha256 against the manifest first (default on).
    ``allow_failed``: also load an artifact whose parity gate failed. Otherwise the runtime's
    own verdict decides (:func:`.verdicts.usable_runtime`): an artifact that failed on one
    runtime and passed on another runs where it passed (the one chosen when none is named).
    ``deploy``: with no runtime, precision or providers named, run the artifact the way its
    manifest's ``deploy`` section says (runtime, precision, settings), if it has one.
    Raises :class:`UserError` for a bad folder, a tampered file or an incompatible engine, and
    :class:`BackendUnavailable` when the runtime is missing.
    """
    folder = Path(folder)
    recover_interrupted(folder)  # an export killed while replacing this folder
    manifest = read_manifest(folder)
    if deploy:
        runtime, precision, runner_kwargs = deployed(dict(manifest), runtime, precision,
                                                     providers, runner_kwargs)
    if not allow_failed:  # each runtime's own verdict decides for it
        runtime = usable_runtime(manifest, runtime, precision, str(folder), providers)
    if precision is not None and precision != manifest["precision"]:
        judged = (manifest["parity"].get("contracts") or {}).get(precision)
        if judged is not True:
            raise UserError(f"refusing {folder} at {precision}: its gate "
                            f"{'failed' if judged is False else 'did not judge'} that precision")
    if verify:
        verify_files(folder, manifest)
    runner = runner_for(folder, manifest, providers, runtime=runtime, precision=precision,
                        **runner_kwargs)  # checks the manifest against the file: says what differs
    if verify:
        check_digest(folder, manifest)  # any other edit
    return runner
