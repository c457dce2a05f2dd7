"""What several test files share: the hardware marks turned into skips, and the trained project
and its artifacts, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from built_artifacts import engine_folder
from built_artifacts import trained_project as build_trained_project

#: fixtures shared by the test files of one area (each module says which)
pytest_plugins = ["artifact_fixtures", "bench_fixtures", "train_fixtures"]


def _hardware_missing() -> dict[str, str | None]:
    """Why each hardware mark cannot run here (None: it can)."""
    import torch

    from export.runtime.tensorrt_runner import cuda_gpu, tensorrt_version

    gpu = cuda_gpu()
    no_gpu = None if gpu is not None else (
        "no CUDA device (this torch is a CPU-only build)" if torch.version.cuda is None
        else f"no CUDA device (torch CUDA {torch.version.cuda} sees none)")
    version = tensorrt_version()
    no_trt = ("needs the TensorRT Python package and a CUDA GPU (TensorRT: "
              f"{version or 'not installed'}, GPU: {gpu.name if gpu else 'none'})"
              if version is None or gpu is None else None)
    return {"cuda": no_gpu, "tensorrt": no_trt}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``cuda`` or ``tensorrt`` is skipped, saying what is missing, on a machine
    without that hardware (asked once per session)."""
    marked = [item for item in items
              if item.get_closest_marker("cuda") or item.get_closest_marker("tensorrt")]
    if not marked:
        return
    missing = _hardware_missing()
    for item in marked:
        for mark in ("tensorrt", "cuda"):
            reason = missing[mark]
            if item.get_closest_marker(mark) and reason:
                item.add_marker(pytest.mark.skip(reason=reason))
                break


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet20 trained for 3 steps on the digits and exported to ONNX (batch 1:4:8), in the
    folders the tools use by default (see :mod:`built_artifacts`). Read it, don't change it."""
    return build_trained_project(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def onnx_artifact(trained_project: Path) -> Path:
    """The trained project's FP32 ONNX artifact folder. Read it, don't change it."""
    return trained_project / "artifacts/resnet20-digits-onnx"


@pytest.fixture
def engine_artifact(onnx_artifact: Path, tmp_path: Path) -> Path:
    """A TensorRT artifact folder as ``--fmt trt`` writes it, in ``tmp_path/resnet20-trt``:
    every file matches its sha256; the engine's bytes are not an engine (see
    :func:`built_artifacts.engine_folder`)."""
    return engine_folder(onnx_artifact, tmp_path / "resnet20-trt")
