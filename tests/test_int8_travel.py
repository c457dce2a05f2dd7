"""The proof travels with the artifact: each verdict records where it was judged, and an INT8
artifact loaded on a machine unlike every one that judged it (the ISA probe's override plays
another CPU) is re-checked on its own gate images before the first answer, and refused in one
line where that fails."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from export.core import cpu_features
from export.core.artifact import read_manifest
from export.core.errors import UserError
from export.core.manifest import file_entry, write_manifest
from export.predict.cli import main as predict_cli
from export.runtime import load_artifact
from export.runtime.recheck import NO_RECHECK_ENV, REFERENCE_NAME, runtime_version

from cli_helpers import invoke


@pytest.fixture(scope="module")
def int8_folder(trained_project, tmp_path_factory):
    """The session's trained ResNet-20 exported to INT8 (the default cpu flavour) here."""
    from export.pipeline import ExportRequest, export_artifact

    out = tmp_path_factory.mktemp("travel") / "int8"
    export_artifact(ExportRequest(fmt="onnx-int8", calib_count=64,
                                  checkpoint=trained_project / "artifacts/train/resnet20-digits"
                                  / "best.pt", out=out), echo=lambda _: None, warn=lambda _: None)
    return out


def _copy(folder, tmp_path, edit=None):
    """A copy of the artifact; ``edit(manifest, copy)`` changes it, then it is sealed again (every
    file's sha256 and the manifest's digest), so only the edit is the point."""
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    if edit is not None:
        edit(manifest, copy)
    manifest["files"] = [file_entry(copy, f["path"], f["role"]) for f in manifest["files"]
                         if (copy / f["path"]).exists()]
    write_manifest(copy, manifest)
    return copy


def test_each_verdict_records_where_it_was_judged_and_the_reference_travels(int8_folder):
    manifest = read_manifest(int8_folder)
    runs = manifest["parity"]["runs"]
    assert runs
    for run in runs:
        where = run["judged_on"]
        assert where["isa_class"] == cpu_features.isa_class()
        assert where["cpu"] == cpu_features.cpu_model()
        assert where["runtime_version"] == runtime_version(where["runtime"])
    assert {"onnxruntime"} <= {run["judged_on"]["runtime"] for run in runs}
    section = manifest["parity"]["recheck"]
    assert section["tolerances"]["int8"]["min_cosine"] == 0.97
    entry = next(f for f in manifest["files"] if f["path"] == REFERENCE_NAME)
    assert entry["role"] == "gate-reference"
    with np.load(int8_folder / REFERENCE_NAME) as data:
        assert data["images"].shape[0] == section["images"] == data["logits"].shape[0]
        assert data["images"].dtype == np.float16 and np.isfinite(data["logits"]).all()


def test_on_the_machine_that_judged_it_nothing_is_re_checked(int8_folder, capsys):
    assert load_artifact(int8_folder).recheck is None
    assert "re-checked" not in capsys.readouterr().err


def test_another_isa_class_re_checks_before_the_first_answer(int8_folder, monkeypatch, capsys):
    other = "avx2" if cpu_features.isa_class() != "avx2" else "amx"
    monkeypatch.setenv(cpu_features.ISA_CLASS_ENV, other)
    runner = load_artifact(int8_folder)
    check = runner.recheck
    assert check is not None and check.passed and check.here["isa_class"] == other
    assert check.images >= 32 and check.min_cosine >= 0.97
    assert f"re-checked here ({other} / onnxruntime" in capsys.readouterr().err
    monkeypatch.setenv(NO_RECHECK_ENV, "1")  # the user's opt-out
    assert load_artifact(int8_folder).recheck is None


def test_another_runtime_version_re_checks(int8_folder, tmp_path):
    def older(manifest, _):
        for run in manifest["parity"]["runs"]:
            run["judged_on"]["runtime_version"] = "1.0.0"
    assert load_artifact(_copy(int8_folder, tmp_path, older)).recheck.passed


def _damage_scales(manifest, copy):
    """The classifier's weight scales negated: a file whose every logit is wrong."""
    path = copy / manifest["artifact"]
    proto = onnx.load(str(path))
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    weight_dq = next(n for n in proto.graph.node if n.output[0] == gemm.input[1])
    scale = next(t for t in proto.graph.initializer if t.name == weight_dq.input[1])
    scale.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scale), scale.name))
    onnx.save(proto, str(path))


def test_a_failing_re_check_refuses_in_one_line(int8_folder, tmp_path, monkeypatch):
    damaged = _copy(int8_folder, tmp_path, _damage_scales)
    assert load_artifact(damaged).recheck is None  # judged here: trusted as exported
    monkeypatch.setenv(cpu_features.ISA_CLASS_ENV, "avx2")
    with pytest.raises(UserError) as exc_info:
        load_artifact(damaged)
    message = str(exc_info.value)
    assert "\n" not in message and "re-checked here (avx2" in message
    assert "FAILS: cosine similarity" in message and NO_RECHECK_ENV in message
    image = tmp_path / "digit.png"  # resnet-predict goes through the same load
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    result = invoke(predict_cli, [damaged, image])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: refusing")


def _older(manifest, copy):
    """What an older release wrote: no judged_on, no gate reference."""
    for run in manifest["parity"]["runs"]:
        del run["judged_on"]
    del manifest["parity"]["recheck"]
    (copy / REFERENCE_NAME).unlink()


def test_an_older_artifact_is_re_checked_from_its_source(int8_folder, tmp_path, capsys):
    check = load_artifact(_copy(int8_folder, tmp_path, _older)).recheck
    assert check is not None and check.passed and check.images >= 8
    assert "judged on an unrecorded CPU" in capsys.readouterr().err


def test_an_older_artifact_without_its_source_is_refused(int8_folder, tmp_path, monkeypatch):
    def gone(manifest, copy):
        _older(manifest, copy)
        manifest["source"].update(path=str(tmp_path / "gone.pt"), relative_path=None)
    old = _copy(int8_folder, tmp_path, gone)
    with pytest.raises(UserError, match="neither a gate reference nor its source weights"):
        load_artifact(old)
    monkeypatch.setenv(NO_RECHECK_ENV, "1")
    assert load_artifact(old).recheck is None


def test_fp32_is_never_re_checked(onnx_artifact, monkeypatch):
    monkeypatch.setenv(cpu_features.ISA_CLASS_ENV, "avx2")
    assert load_artifact(onnx_artifact, precision="fp32").recheck is None
