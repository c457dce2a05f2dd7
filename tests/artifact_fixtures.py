"""What the tests of resnet-export's refusals share: one small FP32 artifact per module
(resnet20 at 16x16, batch 1:1:2) and private copies of it, one dynamo export per set of weights,
the command line, and helpers that edit manifests and compare folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import export.pipeline as pipeline
from export.cli import main as export_cli
from export.core.checkpoint import save_checkpoint
from export.core.manifest import write_manifest
from export.core.models import ModelSpec
from export.core.shapes import BatchRange
from export.core.weights import state_digest
from export.pipeline import ExportRequest, export_artifact

from cli_helpers import invoke

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--depth", "20", "--input-size", "16", "--batch-range", "1:1:2"]
BATCH = BatchRange(1, 1, 2)


_onnx_cache: dict = {}
_real_export_onnx = pipeline.export_onnx


def _cached_export_onnx(model, spec, opset):
    key = (state_digest(model), json.dumps(spec.to_dict()), opset)
    if key not in _onnx_cache:
        _onnx_cache[key] = _real_export_onnx(model, spec, opset)
    proto = onnx.ModelProto()
    proto.CopyFrom(_onnx_cache[key])
    return proto


@pytest.fixture
def one_dynamo_export_per_weights(monkeypatch):
    """The dynamo export (5 s) is not what these tests are about: do it once per weights (a
    module asks for it with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    monkeypatch.setattr(pipeline, "export_onnx", _cached_export_onnx)


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    return invoke(export_cli, args, catch_exceptions=True)


def tree(folder):
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def snapshot(folder):
    """Every path with its bytes (files) or None (folders): 'untouched' means equal snapshots."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def quiet(_line):
    pass


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """One small FP32 artifact from fresh weights (seed 0), read-only: tests change ``art``."""
    out = tmp_path_factory.mktemp("base") / "resnet20-onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "export_onnx", _cached_export_onnx)
        export_artifact(ExportRequest(model="resnet20", input_size=16, batch=BATCH, out=out),
                        echo=quiet, warn=quiet)
    return out


@pytest.fixture
def art(base, tmp_path_factory):
    """A private copy of the shared artifact (beside, not in, the test's own folder)."""
    dst = tmp_path_factory.mktemp("art") / "art"
    shutil.copytree(base, dst)
    return dst


def edit_manifest(folder, edit, seal=False):
    """Edit the manifest by hand; ``seal``: as a writer of ours would (its digest updated),
    for tests of what such a manifest holds rather than of the edit itself."""
    path = Path(folder) / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    if seal:
        write_manifest(folder, data)
    else:
        path.write_text(json.dumps(data))


def trained_checkpoint(path, seed=3):
    spec = ModelSpec.create("resnet20", num_classes=10, in_chans=1)
    import torch

    torch.manual_seed(seed)
    save_checkpoint(path, spec.build(), spec, class_names=[str(i) for i in range(10)], epoch=1)


def dead_pid():
    """The id of a process that has just ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
