"""A small trained project, built once per test session for the tests that need real files.

``trained_project(base)`` trains resnet20 on the digits for 3 steps and exports it to ONNX
(batch 1:4:8) in the folders the tools use by default, under ``base/project``::

    artifacts/train/resnet20-digits/best.pt ...   resnet-train's run folder
    artifacts/resnet20-digits-onnx/                      resnet-export's artifact folder

The weights are barely trained (a few seconds); what the tests check is that every path gives the
same numbers, not that the digits are recognised.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from export.core.shapes import BatchRange

_BUILT: dict[Path, Path] = {}
BATCH = BatchRange(1, 4, 8)


def trained_project(base: Path) -> Path:
    """The project folder (built on first call for this ``base``, then reused)."""
    base = Path(base)
    if base not in _BUILT:
        from export.pipeline import ExportRequest, export_artifact
        from export.train import TrainConfig, run_training

        project = base / "project"
        shutil.rmtree(project, ignore_errors=True)
        run = run_training(TrainConfig(epochs=1, max_steps=3, threads=1),
                           out=project / "artifacts/train/resnet20-digits", echo=lambda *_: None)
        export_artifact(ExportRequest(fmt="onnx", checkpoint=run.run_dir / "best.pt",
                                      batch=BATCH, out=project / "artifacts/resnet20-digits-onnx"),
                        echo=lambda _: None, warn=lambda _: None)
        _BUILT[base] = project
    return _BUILT[base]


def copy_project(base: Path, into: Path) -> Path:
    """A copy of the project's artifacts folder in ``into`` (which becomes a project folder)."""
    shutil.copytree(trained_project(base) / "artifacts", Path(into) / "artifacts",
                    dirs_exist_ok=True)
    return Path(into)
