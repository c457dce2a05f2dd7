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
that cannot run this artifact (an engine runtime for an ONNX file) raises :class:`UserError`.
The choices are read from the registry when asked (:func:`runtime_choices`), so a runtime
registered after import is one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.manifest import Manifest
from ..runtime import Runner, load_artifact
from ..runtime.loader import deployed
from ..runtime.registry import RUNTIMES, default_runtime, get_runtime


def runtime_choices() -> tuple[str, ...]:
    """What --runtime accepts: "auto" (the artifact's own runtime) and every runtime of the
    registry that runs artifacts."""
    return ("auto", *(name for name, info in RUNTIMES.items() if info.formats))


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
    if runtime == "auto":  # the runtime load_artifact picks: the deploy section's, or its own
        chosen = deployed(dict(manifest), None, None, None, {})[0] or default_runtime(fmt)
        return load_artifact(folder, verify=verify, **_threads(chosen, threads))
    info = get_runtime(runtime)
    kwargs: dict[str, Any] = _threads(runtime, threads)
    if fmt == "trt" and info.onnx_of_engine:
        source = _onnx_file(manifest)
        if source is None:
            raise UserError(f"{folder} holds no ONNX file beside its engine for --runtime "
                            f"{runtime}")
        kwargs["file"] = source
    elif fmt not in info.formats:
        raise UserError(f"--runtime {runtime} runs {', '.join(info.formats)} artifacts; {folder} "
                        f"is a {fmt} artifact (export one with resnet-export --fmt "
                        f"{info.formats[0]})")
    return load_artifact(folder, verify=verify, runtime=runtime, **kwargs)


def _threads(runtime: str, threads: int | None) -> dict[str, Any]:
    """``threads`` for a runtime that takes a thread count (an engine's does not)."""
    return {"threads": threads} if threads and "threads" in get_runtime(runtime).options else {}


__all__ = ["open_runner", "runtime_choices"]
