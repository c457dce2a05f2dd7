"""Real files for the tests that need them: a small trained project and an engine folder.

``trained_project(base)`` trains resnet20 on the digits for 3 steps and exports it to ONNX
(batch 1:4:8) in the folders the tools use by default, under ``base/project``::

    artifacts/train/resnet20-digits/best.pt ...   resnet-train's run folder
    artifacts/resnet20-digits-onnx/                      resnet-export's artifact folder

The weights are barely trained (a few seconds); what the tests check is that every path gives the
same numbers, not that the digits are recognised. conftest.py builds it once per session (the
``trained_project`` fixture).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from export.core.shapes import BatchRange

BATCH = BatchRange(1, 4, 8)


def trained_project(base: Path) -> Path:
    """Build the project folder under ``base`` (replacing one left there)."""
    from export.pipeline import ExportRequest, export_artifact
    from export.train import TrainConfig, run_training

    project = Path(base) / "project"
    shutil.rmtree(project, ignore_errors=True)
    run = run_training(TrainConfig(epochs=1, max_steps=3, threads=1),
                       out=project / "artifacts/train/resnet20-digits", echo=lambda *_: None)
    export_artifact(ExportRequest(fmt="onnx", checkpoint=run.run_dir / "best.pt",
                                  batch=BATCH, out=project / "artifacts/resnet20-digits-onnx"),
                    echo=lambda _: None, warn=lambda _: None)
    return project


def copy_project(project: Path, into: Path) -> Path:
    """A copy of ``project``'s artifacts folder in ``into`` (which becomes a project folder)."""
    shutil.copytree(Path(project) / "artifacts", Path(into) / "artifacts", dirs_exist_ok=True)
    return Path(into)


def engine_folder(onnx_folder: Path, into: Path) -> Path:
    """An FP32 ONNX artifact made into what ``--fmt trt`` writes on a GPU machine: its ONNX as
    the engine's source, an engine file, a build record, and an H100 named as the engine's GPU.

    The engine's bytes are not an engine (nothing here can build one): the point is the code path
    up to where TensorRT or the GPU is needed, and every file still matches its sha256, so that is
    where each command stops.
    """
    from export.core.fileio import sha256_file
    from export.core.manifest import write_manifest

    folder = Path(into)
    shutil.copytree(onnx_folder, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    onnx_name = manifest["artifact"]
    engine = folder / onnx_name.replace(".onnx", ".engine")
    engine.write_bytes(b"serialized engine of TensorRT 10.9.0.34 for an H100\n")
    # an engine carries no gate reference (that is for INT8/BF16 re-checks on CPUs)
    for entry in [f for f in manifest["files"] if f.get("role") == "gate-reference"]:
        (folder / entry["path"]).unlink()
        manifest["files"].remove(entry)
    manifest["parity"].pop("recheck", None)
    for entry in manifest["files"]:
        entry["role"] = "source-onnx"
    manifest["files"].append({"path": engine.name, "sha256": sha256_file(engine),
                              "bytes": engine.stat().st_size, "role": "artifact"})
    shape = [1, *manifest["inputs"][0]["shape"][1:]]
    manifest.update(
        format="trt", artifact=engine.name, gpu={"name": "NVIDIA H100 80GB HBM3",
                                                 "compute_capability": "9.0"},
        tensorrt={"version": "10.9.0.34", "strongly_typed": True, "network_flags": 2,
                  "tf32": False, "workspace_bytes": 1 << 30, "built_from": onnx_name,
                  "timing_cache": None, "timing_cache_reused": False,
                  "profile": {"input": manifest["inputs"][0]["name"], "min": shape,
                              "opt": shape, "max": shape}})
    manifest["versions"]["tensorrt"] = "10.9.0.34"
    write_manifest(folder, manifest)  # sealed with its digest, as an export would
    return folder
