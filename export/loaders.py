"""Loaders: an artifact folder -> a ready-to-activate runner that knows the artifact's contract.

:func:`load_artifact_runner` is what the benchmark and ``resnet-export verify`` call. It reads the
manifest, checks every file's sha256, and returns

- ONNX formats: :class:`ArtifactOnnxRuntimeRunner` (ONNX Runtime with the given providers),
- ``trt``: :class:`export.tensorrt_engine.TensorRTRunner`, which first refuses an engine built
  for another TensorRT version or GPU.

Both refuse a batch the artifact does not promise (wrong C/H/W, or N outside the batch range)
with one clear ``ValueError`` instead of a backend's stack of shape errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UserError
from .manifest import read_manifest, verify_files
from .runners import OnnxRuntimeRunner, Runner
from .shapes import BatchRange, check_batch


class ArtifactOnnxRuntimeRunner(OnnxRuntimeRunner):
    """ONNX Runtime on an exported artifact, with its input contract checked before each call."""

    def __init__(self, onnx_path: str | Path, manifest: dict[str, Any],
                 providers: list[str] | None = None, **kwargs: Any):
        super().__init__(onnx_path, providers, precision=manifest["precision"], **kwargs)
        spec = manifest["model"]
        self.expected_chw = (spec["in_chans"], spec["input_size"], spec["input_size"])
        self.batch_range = BatchRange.from_dict(manifest["batch_range"])
        self.input_name = manifest["inputs"][0]["name"]

    def check_input(self, shape: tuple[int, ...]) -> None:
        check_batch(tuple(shape), self.expected_chw, self.batch_range, self.input_name)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_input(np.shape(batch))
        return super().infer(batch)

    def compute_fn(self, batch: np.ndarray) -> Callable[[], Any] | None:
        self.check_input(np.shape(batch))
        return super().compute_fn(batch)


def runner_for(folder: Path, manifest: dict[str, Any], providers: list[str] | None = None,
               **runner_kwargs: Any) -> Runner:
    """The runner for an already read (and verified) manifest."""
    artifact = folder / manifest["artifact"]
    if manifest["format"] == "trt":
        from .tensorrt_engine import TensorRTRunner

        return TensorRTRunner(artifact, manifest)
    return ArtifactOnnxRuntimeRunner(artifact, manifest, providers, **runner_kwargs)


def load_artifact_runner(manifest_dir: str | Path, providers: list[str] | None = None,
                         verify: bool = True, allow_failed: bool = False,
                         **runner_kwargs: Any) -> Runner:
    """Artifact folder -> runner (not yet activated).

    ``providers``: ONNX Runtime execution providers for ONNX artifacts (default CPU).
    ``verify``: check every file's sha256 against the manifest first (default on).
    ``allow_failed``: also load an artifact whose parity gate failed (kept with --keep-failed).
    ``runner_kwargs``: passed to :class:`export.runners.OnnxRuntimeRunner` (threads,
    optimization_level, session_config).
    Raises :class:`export.errors.UserError` for a bad folder, a tampered file or an incompatible
    engine, and :class:`export.runners.BackendUnavailable` when the runtime is missing.
    """
    folder = Path(manifest_dir)
    manifest = read_manifest(folder)
    if not manifest["parity"].get("passed") and not allow_failed:
        raise UserError(f"refusing {folder}: its parity gate failed at export")
    if verify:
        verify_files(folder, manifest)
    return runner_for(folder, manifest, providers, **runner_kwargs)
