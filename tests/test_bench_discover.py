"""``resnet-bench --artifacts DIR`` finds artifacts at any depth (a plan folder's artifacts sit
two levels below it) and names each folder holding a manifest that it did not enter."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.candidates import Request
from bench.discover import HIDDEN, LINK, discover
from bench.matrix import build
from export.core.models import ModelSpec


def _tree(onnx_artifact: Path, root: Path) -> Path:
    """artifacts/ as a user has it after an export and a plan, plus a staging leftover and a
    link."""
    arts = root / "artifacts"
    shutil.copytree(onnx_artifact, arts / "resnet20-onnx")
    shutil.copytree(onnx_artifact, arts / "plan" / "resnet20-cpu" / "artifacts" / "onnx")
    shutil.copytree(onnx_artifact, arts / "plan" / "resnet20-cpu" / "chosen")
    shutil.copytree(onnx_artifact, arts / ".resnet20-onnx.123-abc.partial")  # ours: no line
    shutil.copytree(onnx_artifact, arts / ".old" / "resnet20-onnx")  # a user's: named
    (arts / ".cache" / "nothing").mkdir(parents=True)  # hidden, no manifest: not worth a line
    os.symlink(arts / "resnet20-onnx", arts / "linked")
    return arts


def test_discover_finds_every_depth_and_names_what_it_left_out(onnx_artifact: Path,
                                                                tmp_path: Path) -> None:
    arts = _tree(onnx_artifact, tmp_path)
    found, skipped = discover(arts)
    assert [p.parent.relative_to(arts).as_posix() for p in found] == [
        "plan/resnet20-cpu/artifacts/onnx", "plan/resnet20-cpu/chosen", "resnet20-onnx"]
    assert sorted((p.name, why) for p, why in skipped) == [
        (".old", HIDDEN), ("linked", LINK)]
    # an artifact folder named itself: only it
    assert discover(arts / "resnet20-onnx") == ([arts / "resnet20-onnx" / "manifest.json"], [])


def test_bench_measures_the_deep_ones_and_reports_the_skipped(onnx_artifact: Path,
                                                              tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    arts = _tree(onnx_artifact, tmp_path)
    spec = ModelSpec.from_dict(__import__("json").loads(
        (onnx_artifact / "manifest.json").read_text())["model"])
    cases = build(Request(spec, "cpu", backends=["onnxruntime"], artifacts=arts))
    measured = {Path(str(c.artifact)).parent.relative_to(arts).as_posix()
                for c in cases.candidates}
    assert measured == {"plan/resnet20-cpu/artifacts/onnx", "plan/resnet20-cpu/chosen",
                        "resnet20-onnx"}
    named = {Path(str(s.artifact)).name: s.reason for s in cases.skipped
             if s.backend == "artifact"}
    assert named == {".old": HIDDEN, "linked": LINK}


def test_nothing_found_names_what_was_left_out(tmp_path: Path) -> None:
    from export.core.errors import UserError

    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "manifest.json").write_text("{}")
    assert discover(tmp_path) == ([], [(tmp_path / ".staging", HIDDEN)])
    with pytest.raises(UserError, match=r"no manifest.json in .* sub-folders; .*\.staging: a "
                                        "hidden folder"):
        discover(tmp_path, required=True)
