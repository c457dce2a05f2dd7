"""Loading an artifact: a folder with manifest.json -> a ready-to-activate runner.

:func:`load_artifact` is the one way the benchmark, prediction (and serving through it) and the
deployment planner open an exported artifact. It puts right what a killed replacement of the
folder left, reads the manifest (schema checked in :mod:`export.core.manifest`), refuses an
artifact whose parity gate failed (or a precision the gate did not judge), checks every file's
sha256, and returns the runner that the runtime's factory in the registry (:mod:`.registry`)
builds: the runtime named, else the one the manifest's ``deploy`` section names, else the
format's own. The runner carries the artifact's input contract, so a batch it does not promise
(wrong C/H/W, or N outside the batch range) is one clear ``ValueError`` instead of a runtime's
stack of shape errors. :func:`runner_for` is the same for a manifest already read and checked
(the parity gate uses it on the folder it is building).

The manifest itself is never trusted: its model, I/O, class names and normalisation are
checked against the ONNX file (graph and stamped metadata, :mod:`export.core.agreement`) before
a runner is made, and with ``verify`` (the default) the manifest's own digest is checked too.

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
from .base import InputContract, Runner, RunTarget
from .recheck import recheck_where_judged
from .registry import EXECUTION_PRECISIONS, default_runtime, get_runtime, runtimes_for
from .verdicts import usable_runtime


def runner_for(folder: Path, manifest: Manifest, providers: list[str] | None = None, *,
               runtime: str | None = None, precision: str | None = None,
               file: str | None = None, **runner_kwargs: Any) -> Runner:
    """The runner for an already read (and verified) manifest, built by its runtime's factory.

    ``runtime``: a name of the runtime registry (:mod:`.registry`) [default: the format's own].
    ``precision``: run at another precision than the artifact's contract where the runtime can
    (an FP32 ONNX at bf16 on OpenVINO); ``file``: run another ONNX file of the folder (an
    engine's source ONNX). ``providers`` overrides an ONNX Runtime entry's execution providers;
    ``runner_kwargs`` go to the runner (threads, ...; each runtime lists the ones it takes).
    Every ONNX file is checked against the manifest before a runner is made.
    """
    fmt = manifest["format"]
    flavour = (manifest.get("int8") or {}).get("flavour")
    runtime = runtime or default_runtime("onnx" if file else fmt)
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
    if fmt == "trt":  # the engine's source ONNX says what the engine was built as
        tensorrt = manifest["tensorrt"]
        assert tensorrt is not None  # the schema check requires it of an engine
        source = artifact_file(folder, tensorrt["built_from"])
        check_onnx_agrees(source, check_onnx_file(folder, source, manifest), manifest)
    path = artifact_file(folder, file or manifest["artifact"])
    if fmt != "trt" or file is not None:  # an ONNX file (an engine's was checked above)
        check_onnx_agrees(path, check_onnx_file(folder, path, manifest), manifest)
    return info.build(RunTarget(path, precision, InputContract.from_manifest(manifest),
                                manifest, tuple(providers) if providers else None,
                                runner_kwargs))


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

    ``providers``: ONNX Runtime execution providers, overriding the runtime entry's
    (``onnxruntime``: CPU).
    ``runtime`` / ``precision``: see :func:`runner_for`; a precision the artifact's gate did not
    judge (``parity.contracts``) is refused.
    ``verify``: check every file's sha256 against the manifest first (default on).
    ``allow_failed``: also load an artifact whose parity gate failed. Otherwise the runtime's
    own verdict decides (:func:`.verdicts.usable_runtime`): an artifact that failed on one
    runtime and passed on another runs where it passed (the one chosen when none is named).
    ``deploy``: with no runtime, precision or providers named, run the artifact the way its
    manifest's ``deploy`` section says (runtime, precision, settings), if it has one.
    An INT8 or BF16 run on a machine unlike every one that judged it is re-checked first
    (:mod:`.recheck`; refused in one line if it fails).
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
    # INT8/BF16 judged on another kind of CPU or runtime version: re-checked before any answer
    runner.recheck = recheck_where_judged(folder, manifest, runner, runtime or default_runtime(
        manifest["format"]), precision or manifest["precision"])
    return runner
