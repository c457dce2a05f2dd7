"""resnet-gate end to end and in parts: a candidate checked against a release.

The default run uses the session's trained resnet20 as the release and its own artifact folder
as the candidate (no export), plus one exported candidate made 2 points less accurate on a
1,000-image digits folder; the slow ones export the same checkpoint again, and a deeper family
member for the speed check.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from export.release.checks import Check, Status
from export.release.cli import main
from export.release.config import GateOptions, merge, read_config
from export.release.reports import STEP_SUMMARY_LIMIT, junit_tree, markdown, write_summary
from export.release.speed import verdict

from cli_helpers import error_line, invoke
from gate_data import worse_checkpoint, write_digits_folder

#: the common JUnit shape (testmo's JUnit XML format, what GitLab, Jenkins and Azure read): each
#: element's allowed children and required attributes
JUNIT_SHAPE = {
    "testsuites": ({"testsuite", "properties"}, set()),
    "testsuite": ({"properties", "testcase", "system-out", "system-err"}, {"name", "tests"}),
    "properties": ({"property"}, set()),
    "property": (set(), {"name", "value"}),
    "testcase": ({"properties", "failure", "error", "skipped", "system-out", "system-err"},
                 {"name", "classname", "time"}),
    "failure": (set(), {"message"}),
    "error": (set(), {"message"}),
    "skipped": (set(), set()),
    "system-out": (set(), set()),
    "system-err": (set(), set()),
}
COUNTED = ("tests", "failures", "errors", "skipped")


def check_junit_shape(path: Path) -> dict[str, ET.Element]:
    """``path`` has the common JUnit shape and its counts add up; its test cases by name."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    for element in root.iter():
        children, required = JUNIT_SHAPE[element.tag]
        assert {c.tag for c in element} <= children, element.tag
        assert required <= set(element.attrib), (element.tag, element.attrib)
        if element.tag == "testcase":
            assert float(element.get("time", "x")) >= 0
            outcome = [c.tag for c in element if c.tag in ("failure", "error", "skipped")]
            assert len(outcome) <= 1
    cases = root.findall("testsuite/testcase")
    suite = root.find("testsuite")
    assert suite is not None
    for parent in (root, suite):
        assert int(parent.get("tests", -1)) == len(cases)
        assert int(parent.get("failures", -1)) == len(root.findall(".//testcase/failure"))
        assert int(parent.get("errors", -1)) == len(root.findall(".//testcase/error"))
        assert int(parent.get("skipped", -1)) == len(root.findall(".//testcase/skipped"))
    return {c.get("name", ""): c for c in cases}


def properties(case: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in case.findall("properties/property")}


@pytest.fixture(scope="module")
def digits_folder(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 digits labelled by the release's own predictions: it gets every one right, so a
    candidate that loses 20 of them is exactly 2 points less accurate."""
    return write_digits_folder(tmp_path_factory.mktemp("gate") / "digits", 1000, labelled_by=(
        trained_project / "artifacts/train/resnet20-digits/best.pt"))


@pytest.fixture
def release(onnx_artifact: Path, tmp_path: Path) -> Path:
    """A copy of the session's artifact as the release (the original stays the candidate)."""
    return Path(shutil.copytree(onnx_artifact, tmp_path / "release" / onnx_artifact.name))


FAST = ["--seconds", "0.4", "--rounds", "5"]


def test_the_same_model_as_the_release_passes(onnx_artifact, release, digits_folder, tmp_path):
    result = invoke(main, [onnx_artifact, "--baseline", release, "--data", digits_folder,
                           "--junit", tmp_path / "gate.xml", "--json", tmp_path / "gate.json",
                           "--markdown", tmp_path / "gate.md", "--skip", "artifacts", *FAST],
                    catch_exceptions=True)
    assert result.exit_code == 0, result.output
    cases = check_junit_shape(tmp_path / "gate.xml")
    # verify runs in the next test; the slow test runs every check on an exported candidate
    assert set(cases) == {"top-1 accuracy vs release", "latency at batch 1",
                          "throughput at batch 4"}
    assert not ET.parse(tmp_path / "gate.xml").getroot().findall(".//failure")
    acc = properties(cases["top-1 accuracy vs release"])
    assert (acc["images"], acc["images_lost"], acc["images_gained"]) == ("1000", "0", "0")
    assert acc["release_top1_percent"] == acc["candidate_top1_percent"] == "100"
    doc = json.loads((tmp_path / "gate.json").read_text())
    assert doc["passed"] is True and doc["exit_code"] == 0
    for check in doc["checks"]:
        if check["group"] == "speed":  # identical models: within the limit, or unresolved
            assert check["status"] in ("passed", "unresolved"), check["message"]
            assert check["properties"]["rounds"] == 5
    assert "## resnet-gate: PASS" in (tmp_path / "gate.md").read_text()


def test_a_candidate_2_points_less_accurate_fails(trained_project, release, digits_folder,
                                                  tmp_path):
    worse = worse_checkpoint(trained_project / "artifacts/train/resnet20-digits/best.pt",
                             tmp_path / "worse.pt", digits_folder, lost=20)
    junit = tmp_path / "reports" / "gate.xml"
    result = invoke(main, [worse, "--baseline", release, "--data", digits_folder,
                           "--out-dir", tmp_path / "candidate", "--skip", "speed",
                           "--skip", "artifacts", "--junit", junit], catch_exceptions=True)
    assert result.exit_code == 1, result.output
    cases = check_junit_shape(junit)
    failed = {name for name, case in cases.items() if case.find("failure") is not None}
    assert failed == {"top-1 accuracy vs release"}
    failure = cases["top-1 accuracy vs release"].find("failure")
    assert failure is not None
    message = failure.get("message", "")
    assert "98.00% vs release 100.00%" in message and "20 lost, 0 gained" in message
    acc = properties(cases["top-1 accuracy vs release"])
    assert float(acc["drop_points"]) == 2.0 and float(acc["mcnemar_p"]) < 1e-5
    assert cases["speed vs release"].find("skipped") is not None  # --skip speed
    export = cases["candidate export to onnx through the parity gate"]
    assert export.find("failure") is None and (tmp_path / "candidate").is_dir()
    assert not any("verify" in name for name in cases)  # --skip artifacts: the next test
    assert "resnet-gate: FAIL (exit 1)" in result.stdout


def test_a_changed_release_fails_its_verify_check(onnx_artifact, release, tmp_path):
    onnx_file = next(release.glob("*.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"\0")  # one byte changed
    junit = tmp_path / "gate.xml"
    result = invoke(main, [onnx_artifact, "--baseline", release, "--skip", "speed", "--junit",
                           junit], catch_exceptions=True)
    assert result.exit_code == 1, result.output
    cases = check_junit_shape(junit)
    failure = cases[f"release verify ({release.name})"].find("failure")
    assert failure is not None and "sha256" in failure.get("message", "")
    assert cases[f"candidate verify ({onnx_artifact.name})"].find("failure") is None
    skipped = cases["top-1 accuracy vs release"].find("skipped")
    assert skipped is not None and "release failed its artifact checks" in \
        skipped.get("message", "")


@pytest.mark.parametrize("args, words", [
    (["--baseline", "{missing}"], "not an artifact folder"),
    (["--max-slowdown", "-5"], "--max-slowdown"),
    (["--data", "{missing}"], "--data"),
    (["--data", "{here}"], "--data needs --baseline"),
    (["--rounds", "2"], "--rounds"),
    (["--config", "{config}"], "max-slowdwn is not a setting"),
    (["--baseline", "{candidate}"], "same folder"),
])
def test_usage_errors_exit_2(onnx_artifact, tmp_path, args, words):
    config = tmp_path / "gate.toml"
    config.write_text("max-slowdwn = 5\n")
    args = [a.format(missing=tmp_path / "nope", config=config, candidate=onnx_artifact,
                     here=tmp_path)
            for a in args]
    line = error_line(invoke(main, [onnx_artifact, *args], catch_exceptions=True), code=2)
    assert words in line


def test_a_missing_candidate_exits_2(tmp_path):
    line = error_line(invoke(main, [tmp_path / "none.pt"], catch_exceptions=True), code=2)
    assert "no such checkpoint file or artifact folder" in line


def test_config_file_values_and_precedence(tmp_path):
    (tmp_path / "ci").mkdir()
    config = tmp_path / "ci" / "pyproject.toml"
    config.write_text('[tool.resnet-gate]\nbaseline = "release/m"\nmax-slowdown = 25\n'
                      'max_accuracy_drop = 0.5\nskip = ["speed"]\non-unresolved = "fail"\n')
    options = merge(read_config(config), {"max_slowdown": 40.0, "data": None, "skip": ()})
    assert options == GateOptions(baseline=tmp_path / "ci/release/m", max_slowdown=40.0,
                                  max_accuracy_drop=0.5, skip=("speed",), on_unresolved="fail")
    config.write_text("max-accuracy-drop = 'one'\n")
    with pytest.raises(Exception, match="must be a number"):
        read_config(config)


@pytest.mark.parametrize("ratios, expected", [
    ([1.0, 1.02, 0.98, 1.01, 0.99, 1.03], Status.PASSED),
    ([1.45, 1.50, 1.38, 1.52, 1.47, 1.41], Status.FAILED),
    ([0.9, 1.3, 1.0, 1.25, 0.95, 1.2], Status.UNRESOLVED),  # straddles 1.1: noise, not a verdict
    ([1.5, 1.5], Status.UNRESOLVED),  # two rounds prove nothing
])
def test_speed_verdict_needs_three_rounds_in_four(ratios, expected):
    assert verdict(ratios, 1.10)[0] is expected


def _checks() -> list[Check]:
    return [Check("candidate verify (m)", "artifacts", message="ok"),
            Check("top-1 accuracy vs release", "accuracy", Status.FAILED, "98.00% vs 100.00%",
                  {"images_lost": 20, "round_ratios": [1.0, 2.0]}, details="x" * 10_000),
            Check("latency at batch 1", "speed", Status.UNRESOLVED, "rounds disagree"),
            Check("throughput at batch 8", "speed", Status.ERROR, "no runtime")]


def test_junit_maps_every_status(tmp_path):
    path = tmp_path / "j.xml"
    junit_tree(_checks(), {"candidate": "c"}).write(path)
    cases = check_junit_shape(path)
    assert cases["top-1 accuracy vs release"].find("failure") is not None
    assert properties(cases["top-1 accuracy vs release"])["round_ratios"] == "[1.0,2.0]"
    assert cases["latency at batch 1"].find("skipped") is not None
    assert cases["throughput at batch 8"].find("error") is not None
    assert len(cases["candidate verify (m)"]) == 1  # its properties only: a pass


def test_the_step_summary_stays_within_githubs_limit(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_bytes(b"x" * (STEP_SUMMARY_LIMIT - 2000))  # earlier steps' summaries
    text = markdown(_checks(), {"candidate": "c", "release": "r"}, passed=False)
    assert 2000 < len(text.encode()) < 8000  # details are folded and cut
    write_summary(summary, text, step_summary=True)
    assert summary.stat().st_size <= STEP_SUMMARY_LIMIT
    assert summary.read_bytes().endswith(b"the JSON report has it all)\n")
    assert "| top-1 accuracy vs release | **FAIL** |" in text


def test_github_step_summary_is_appended(onnx_artifact, release, tmp_path, monkeypatch):
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = invoke(main, [onnx_artifact, "--baseline", release, "--skip", "speed",
                           "--skip", "artifacts"], catch_exceptions=True)
    assert result.exit_code == 0, result.output
    text = summary.read_text()
    assert text.startswith("earlier step\n## resnet-gate: PASS")
    assert "| top-1 accuracy vs release | **skipped** | no --data" in text


@pytest.mark.slow
def test_the_same_checkpoint_exported_again_passes(trained_project, release, digits_folder,
                                                   tmp_path):
    result = invoke(main, [trained_project / "artifacts/train/resnet20-digits/best.pt",
                           "--baseline", release, "--data", digits_folder, "--out-dir",
                           tmp_path / "candidate", "--junit", tmp_path / "gate.xml"],
                    catch_exceptions=True)
    assert result.exit_code == 0, result.output
    assert not ET.parse(tmp_path / "gate.xml").getroot().findall(".//failure")


@pytest.mark.slow
def test_a_deeper_family_member_fails_the_speed_check(release, tmp_path):
    from export.pipeline import ExportRequest, export_artifact
    from export.train import TrainConfig, run_training

    run = run_training(TrainConfig(model="resnet56", epochs=1, max_steps=2, threads=1),
                       out=tmp_path / "train/resnet56-digits", echo=lambda *_: None)
    deeper = export_artifact(ExportRequest(checkpoint=run.run_dir / "best.pt",
                                           batch=release and _batch(release),
                                           out=tmp_path / "resnet56-digits-onnx"),
                             echo=lambda _: None, warn=lambda _: None).out
    junit = tmp_path / "gate.xml"
    result = invoke(main, [deeper, "--baseline", release, "--skip", "artifacts",
                           "--max-slowdown", "30", "--junit", junit], catch_exceptions=True)
    cases = check_junit_shape(junit)
    latency = cases["latency at batch 1"]
    ratio = float(properties(latency)["ratio_median"])
    assert ratio > 1.3, ratio
    if latency.find("failure") is not None:  # resolved: a real slowdown, exit 1
        assert result.exit_code == 1
    else:  # a busy runner: said so, never a pass
        assert latency.find("skipped") is not None and "not resolvable" in \
            (latency.find("skipped").get("message") or "")


def _batch(release: Path):
    from export.core.artifact import read_manifest
    from export.core.shapes import BatchRange

    return BatchRange.from_dict(read_manifest(release)["batch_range"])
