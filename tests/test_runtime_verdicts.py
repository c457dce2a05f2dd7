"""Each runtime's own gate verdict decides whether an artifact runs there: an artifact that
failed on ONNX Runtime and passed on OpenVINO (INT8 on CPUs without VNNI) stays usable on
OpenVINO, in the loader, the plan's candidates and what resnet-plan reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.core.errors import UserError
from export.core.manifest import write_manifest
from export.runtime.loader import load_artifact
from export.runtime.verdicts import judged_runtimes, runtime_of, verdict_on

pytest.importorskip("openvino", reason="the openvino extra is not installed")


def _failed_on(onnx_artifact: Path, into: Path, runtimes: set[str]) -> Path:
    """A copy of the FP32 artifact whose gate runs on ``runtimes`` are recorded as failed
    (parity.passed false, as the gate writes it when any runtime fails), sealed again."""
    folder = into / "resnet20-onnx"
    shutil.copytree(onnx_artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    parity = manifest["parity"]
    assert {runtime_of(r) for r in parity["runs"]} >= {"onnxruntime", "openvino"}
    for run in parity["runs"]:
        if runtime_of(run) in runtimes:
            run["passed"] = False
    parity["passed"] = all(r["passed"] for r in parity["runs"] if r["precision"] == "fp32")
    parity["contracts"]["fp32"] = parity["passed"]
    write_manifest(folder, manifest)
    return folder


def test_runtime_of_reads_the_gate_labels(onnx_artifact: Path) -> None:
    manifest = json.loads((onnx_artifact / "manifest.json").read_text())
    names = [runtime_of(r) for r in manifest["parity"]["runs"]]
    assert names[:2] == ["onnxruntime", "openvino"]
    assert verdict_on(manifest, "openvino", "fp32") is True
    assert verdict_on(manifest, "tensorrt", "fp32") is None


def test_failed_on_one_runtime_loads_where_it_passed(onnx_artifact: Path,
                                                     tmp_path: Path) -> None:
    folder = _failed_on(onnx_artifact, tmp_path, {"onnxruntime"})
    manifest = json.loads((folder / "manifest.json").read_text())
    assert judged_runtimes(manifest, True) == ["openvino"]
    assert judged_runtimes(manifest, False) == ["onnxruntime"]
    # no runtime named: the one whose verdict passed
    assert load_artifact(folder).backend == "openvino"
    assert load_artifact(folder, runtime="openvino").backend == "openvino"
    with pytest.raises(UserError) as err:
        load_artifact(folder, runtime="onnxruntime")
    assert "failed there; it passed on openvino" in str(err.value)
    with pytest.raises(UserError, match="on onnxruntime"):  # the benchmark's way: providers
        load_artifact(folder, providers=["CPUExecutionProvider"])
    assert load_artifact(folder, runtime="onnxruntime", allow_failed=True).backend == \
        "onnxruntime"


def test_failed_everywhere_stays_refused(onnx_artifact: Path, tmp_path: Path) -> None:
    folder = _failed_on(onnx_artifact, tmp_path, {"onnxruntime", "openvino"})
    with pytest.raises(UserError) as err:
        load_artifact(folder)
    assert str(err.value).endswith("its parity gate failed at export (on onnxruntime, openvino)")
    with pytest.raises(UserError, match="failed there$"):
        load_artifact(folder, runtime="openvino")


def test_plan_candidates_and_report_follow_each_verdict(onnx_artifact: Path,
                                                        tmp_path: Path) -> None:
    from export.plan.run import gate_line
    from export.plan.space import candidates_for

    folder = _failed_on(onnx_artifact, tmp_path, {"onnxruntime"})
    manifest = json.loads((folder / "manifest.json").read_text())
    found = candidates_for(folder, manifest, "0" * 64, "cpu", 2, "latency")
    ort = [c for c in found if c.runtime == "onnxruntime"]
    ov = [c for c in found if c.runtime == "openvino" and c.precision == "fp32"]
    assert [c.status for c in ort] == ["gate-failed"]
    assert ort[0].reason is not None and ort[0].reason.startswith("its gate failed on "
                                                                  "onnxruntime")
    assert ov and all(c.status == "unmeasured" and c.settings for c in ov)
    line = gate_line(manifest)
    assert line.startswith("PASS on openvino[") and "; FAIL on onnxruntime[CPU,fp32]" in line
    assert "openvino" not in line.split("FAIL")[1]


def test_verify_holds_a_deployed_artifact_to_its_runtimes_verdict(
        onnx_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``resnet-export verify`` / ``resnet-plan verify`` of a plan's chosen artifact: a gate that
    now fails on another runtime than the deployed one does not fail it; failing on the
    deployed runtime does. (The re-judging is replaced by its recorded outcome.)"""
    import export.pipeline as pipeline
    from export.core.errors import ParityFailed

    folder = tmp_path / "chosen"
    shutil.copytree(onnx_artifact, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    parity = json.loads(json.dumps(manifest["parity"]))
    for run in parity["runs"]:
        run["passed"] = runtime_of(run) != "onnxruntime"
    parity["passed"] = False
    monkeypatch.setattr(pipeline, "judge_artifact", lambda *_a, **_k: (parity, []))
    lines: list[str] = []
    for runtime in ("openvino", "onnxruntime"):
        manifest["deploy"] = {"runtime": runtime, "precision": "fp32", "settings": {},
                              "objective": "latency", "batch_size": 1, "plan": {}}
        write_manifest(folder, manifest)
        if runtime == "openvino":
            assert pipeline.verify_artifact(folder, echo=lines.append) is parity
            assert "passes on openvino, the one this artifact is deployed on" in lines[-1]
        else:
            with pytest.raises(ParityFailed):
                pipeline.verify_artifact(folder, echo=lines.append)
