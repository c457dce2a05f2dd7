"""Reading an artifact (export.core.artifact, export.core.manifest, load_artifact, verify): links
never lead out of the folder, a malformed manifest is one line naming the key, and a manifest is
checked against the artifact itself, never trusted as written."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import export.core.artifact as artifact_mod
from export.core.artifact import check_onnx_file, owned_artifact, read_manifest, verify_files
from export.core.errors import UserError
from export.core.fileio import sha256_file
from export.runtime import load_artifact

from artifact_fixtures import edit_manifest, run
from cli_helpers import error_line, no_traceback

pytestmark = pytest.mark.usefixtures("one_dynamo_export_per_weights")


# ---------------------------------------------------------------------------------------------
# Links out of an artifact folder are never followed
# ---------------------------------------------------------------------------------------------


def _relink(folder, name, target):
    """Replace a listed file by a link to ``target`` and make the manifest agree (sha256)."""
    (folder / name).unlink()
    (folder / name).symlink_to(target)
    digest = sha256_file(target)
    edit_manifest(folder, lambda m: [f.update(sha256=digest) for f in m["files"]
                                     if f["path"] == name])


def test_a_listed_file_linking_out_of_the_folder_is_refused_everywhere(tmp_path, art):
    outside = tmp_path / "outside.onnx"
    shutil.copy(art / "resnet20.onnx", outside)
    _relink(art, "resnet20.onnx", outside)
    with pytest.raises(UserError, match="outside the artifact folder"):
        verify_files(art, read_manifest(art))
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art)
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art, verify=False)  # not checking sha256 does not mean following links
    line = error_line(run("verify", art))
    assert "is a link to" in line and "outside the artifact folder" in line


def test_a_listed_file_linking_to_a_system_file_is_refused(art):
    _relink(art, "resnet20.onnx", Path("/etc/hostname") if Path("/etc/hostname").exists()
            else Path(sys.executable))
    with pytest.raises(UserError, match="outside the artifact folder"):
        verify_files(art, read_manifest(art))


def test_a_manifest_that_is_a_link_out_of_the_folder_is_refused(tmp_path, art):
    elsewhere = tmp_path / "m.json"
    shutil.move(art / "manifest.json", elsewhere)
    (art / "manifest.json").symlink_to(elsewhere)
    with pytest.raises(UserError, match="outside the artifact folder"):
        read_manifest(art)
    line = error_line(run("verify", art))
    assert "manifest.json is a link to" in line


def test_a_link_inside_the_folder_is_read_but_the_folder_is_not_ours_to_replace(art):
    shutil.move(art / "resnet20.onnx", art / "real.onnx")
    (art / "resnet20.onnx").symlink_to("real.onnx")
    verify_files(art, read_manifest(art))  # stays inside: fine to read
    with pytest.raises(UserError):
        owned_artifact(art)


def test_a_listed_fifo_is_refused_not_read_forever(art):
    (art / "resnet20.onnx").unlink()
    os.mkfifo(art / "resnet20.onnx")
    with pytest.raises(UserError, match="not a regular file"):
        verify_files(art, read_manifest(art))
    with pytest.raises(UserError, match="not a regular file"):
        load_artifact(art, verify=False)


def _with_external_data(art, location, listed=False):
    """Make the artifact's ONNX keep one initializer's data in ``location``."""
    path = art / "resnet20.onnx"
    proto = onnx.load(str(path))
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    onnx.save(proto, str(path))
    digest = sha256_file(path)

    def edit(m):
        m["files"][0]["sha256"] = digest
        if listed:
            m["files"].append({"path": location, "sha256": sha256_file(art / location),
                               "bytes": (art / location).stat().st_size, "role": "weights"})
    edit_manifest(art, edit, seal=True)  # as an exporter writing external data would


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x.bin"])
def test_onnx_external_data_outside_the_folder_is_refused_at_load(tmp_path, art, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    _with_external_data(art, location)
    manifest = read_manifest(art)
    with pytest.raises(UserError, match="outside the artifact folder"):
        check_onnx_file(art, art / "resnet20.onnx", manifest)
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art)
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art, verify=False)


def test_onnx_external_data_that_the_manifest_does_not_list_is_refused(art):
    (art / "weights.bin").write_bytes(b"\0" * 64)
    _with_external_data(art, "weights.bin")
    with pytest.raises(UserError, match="does not list"):
        load_artifact(art, verify=False)


def test_onnx_external_data_through_a_link_out_of_the_folder_is_refused(tmp_path, art):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    (art / "weights.bin").symlink_to(tmp_path / "secret.bin")
    _with_external_data(art, "weights.bin", listed=True)
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art)


def test_onnx_external_data_listed_in_the_folder_loads(art):
    path = art / "resnet20.onnx"
    proto = onnx.load(str(path))
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin")
    digest = sha256_file(path)

    def edit(m):
        m["files"][0].update(sha256=digest, bytes=path.stat().st_size)
        m["files"].append({"path": "weights.bin", "sha256": sha256_file(art / "weights.bin"),
                           "bytes": (art / "weights.bin").stat().st_size, "role": "weights"})
    edit_manifest(art, edit, seal=True)  # as an exporter writing external data would
    import numpy as np

    with load_artifact(art) as runner:
        assert runner.infer(np.zeros((1, 1, 16, 16), np.float32)).shape == (1, 10)


# ---------------------------------------------------------------------------------------------
# Malformed manifests: one line naming the key, in verify and in the loaders
# ---------------------------------------------------------------------------------------------


def _set(path, value):
    def edit(m):
        node = m
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if value is _DROP:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


class _Drop:
    def __repr__(self):
        return "DROP"


_DROP = _Drop()

MALFORMED = [
    ("files", "a string", "files must be a non-empty list"),
    ("files", [], "files must be a non-empty list"),
    ("files.0", "resnet20.onnx", "files[0] must be an object"),
    ("files.0.path", "../x.onnx", "files[0].path must be a relative name"),
    ("files.0.path", "/etc/passwd", "files[0].path must be a relative name"),
    ("files.0.path", 7, "files[0].path must be a relative name"),
    ("files.0.sha256", None, "files[0].sha256 must be 64 hex digits"),
    ("files.0.bytes", "big", "files[0].bytes must be a size in bytes"),
    ("artifact", ["x"], "is not among its files"),
    ("model", {}, "model must be a model description"),
    ("model", "resnet20", "model must be a model description"),
    ("model.name", "resnet9000", "model is not a valid model description: unknown model"),
    ("model.name", None, "model.name must be a model name"),
    ("model.num_classes", "10", "model.num_classes must be an integer >= 1"),
    ("model.input_size", 100000, "model.input_size must be an integer >= 1 and at most 4096"),
    ("model.in_chans", True, "model.in_chans must be an integer"),
    ("model.mean", "grey", "model.mean must be a list of numbers"),
    ("model.mean", [0.5, 0.5], "model is not a valid model description: mean/std need 1"),
    ("model.shortcut", "C", "model.shortcut must be 'A' or 'B'"),
    ("model.colour", "red", "model is not a valid model description: model description has "
                            "unknown fields"),
    ("parity", None, "parity must be an object"),
    ("parity.passed", "yes", "parity.passed must be true or false"),
    ("parity.inputs", "real", "parity.inputs must be an object"),
    ("parity.inputs.real", [], "parity.inputs.real must be an object"),
    ("parity.inputs.real.dataset", "digits", "parity.inputs.real.dataset must be an object"),
    ("parity.runs", {}, "parity.runs must be a list"),
    ("source", "seed", "source must be an object"),
    ("source.kind", "magic", "source.kind must be one of checkpoint, state_dict, seed"),
    ("source.seed", "0", "source.seed must be an integer"),
    ("source.seed", 1.5, "source.seed must be an integer"),
    ("source.init_sha256", 5, "source.init_sha256 must be 64 hex digits or null"),
    ("batch_range", [1, 2], "batch_range must be an object with min, opt, max"),
    ("batch_range.min", "1", "batch_range.min must be an integer"),
    ("batch_range.max", None, "batch_range.max must be an integer"),
    ("batch_range.min", 0, "batch_range must satisfy 1 <= min <= opt <= max <= 4096"),
    ("batch_range.max", 10**9, "batch_range must satisfy 1 <= min <= opt <= max <= 4096"),
    ("batch_range", {"min": 4, "opt": 2, "max": 8}, "batch_range must satisfy"),
    ("inputs", [], "inputs must be a non-empty list"),
    ("inputs", None, "inputs must be a non-empty list"),
    ("inputs.0", "images", "inputs[0] must be an object with a name"),
    ("inputs.0.name", "", "inputs[0] must be an object with a name"),
    ("inputs.0.dtype", "int8", "inputs[0].dtype must be one of float32, float16"),
    ("outputs", [{}], "outputs[0] must be an object with a name"),
    ("precision", "fp99", "precision must be one of fp32, fp16"),
    ("precision", None, "precision must be one of fp32, fp16"),
    ("format", ["onnx"], "unknown format"),
    ("versions", "new", "versions must be an object"),
    ("versions.torch", 2, "versions values must be strings or null"),
    ("gpu", "H100", "gpu must be an object or null"),
    ("class_names", "0123456789", "class_names must be a list of strings or null"),
    ("opset", "20", "opset must be an integer"),
    ("created", 2024, "created must be an ISO 8601 string"),
    ("tool", None, "tool must be an object"),
    ("tensorrt", [], "tensorrt must be an object or null"),
    ("schema_version", "1", "schema_version '1'"),
    ("kind", None, "is not a resnet-deploy artifact manifest"),
    ("parity", _DROP, "lacks parity"),
]


@pytest.mark.parametrize("key,value,message", MALFORMED,
                         ids=[f"{k}={v!r}"[:40] for k, v, _ in MALFORMED])
def test_malformed_manifests_are_one_line_naming_the_key(art, key, value, message):
    edit_manifest(art, _set(key, value))
    with pytest.raises(UserError, match=None) as info:
        read_manifest(art)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError):
        load_artifact(art, verify=False)
    line = error_line(run("verify", art))
    assert message in line


def test_a_trt_manifest_must_say_what_its_engine_was_built_from(art):
    edit_manifest(art, lambda m: m.update(format="trt", tensorrt={"built_from": "gone.onnx"}))
    with pytest.raises(UserError, match="tensorrt.built_from must name one of its files"):
        read_manifest(art)


@pytest.mark.parametrize("content,message", [
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "not a resnet-deploy artifact manifest"),
])
def test_manifests_that_are_not_json_objects_are_one_line(art, content, message):
    (art / "manifest.json").write_bytes(content)
    line = error_line(run("verify", art))
    assert message in line


def test_a_manifest_too_large_to_be_one_is_not_read(art, monkeypatch):
    monkeypatch.setattr(artifact_mod, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(UserError, match="too large to be an artifact manifest"):
        read_manifest(art)


def test_a_damaged_recorded_dataset_is_a_note_not_a_traceback(art):
    edit_manifest(art, lambda m: m["parity"]["inputs"]["real"].update(
        dataset={"kind": "digits", "seed": "x"}), seal=True)
    result = run("verify", art)
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "real images unavailable" in result.output


# ---------------------------------------------------------------------------------------------
# A manifest is checked against the artifact itself, never trusted as written
# ---------------------------------------------------------------------------------------------


def _set_path(data, dotted, value):
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value


TAMPERED = [  # (key, value, what the one line says)
    ("model.num_classes", 20, "model.num_classes is 20, the graph outputs 10 scores"),
    ("model.num_classes", 5, "model.num_classes is 5, the graph outputs 10 scores"),
    ("model.input_size", 24, "the model takes 1x24x24 inputs"),
    ("inputs.0.name", "pixels", "its inputs are"),
    ("outputs.0.name", "scores", "its outputs are"),
    ("inputs.0.dtype", "float16", "its inputs are"),
    ("model.mean", [0.9], "model.mean is [0.9], the file's own metadata says"),
    ("model.std", [0.25], "model.std is [0.25], the file's own metadata says"),
    ("normalization.mean", [0.1], "normalization.mean is [0.1]"),
    ("class_names", [str(i) for i in range(11)], "class_names has 11 names for 10 outputs"),
    ("class_names", [str(9 - i) for i in range(10)], "class_names is"),
    ("batch_range.max", 2, None),  # unchanged value: still loads (control)
]


@pytest.mark.parametrize("key,value,message", TAMPERED, ids=[f"{k}={v!r}"[:40]
                                                             for k, v, _ in TAMPERED])
def test_a_manifest_edited_against_its_onnx_file_is_refused_at_load(art, key, value, message):
    edit_manifest(art, lambda d: _set_path(d, key, value))
    if message is None:
        load_artifact(art, verify=False)
        return
    for verify in (False, True):  # refused whether or not the digest is checked
        with pytest.raises(UserError) as info:
            load_artifact(art, verify=verify)
        text = str(info.value)
        assert "\n" not in text
        if not verify:
            assert "manifest.json does not match resnet20.onnx" in text and message in text, text


def test_verify_and_predict_refuse_an_edited_mean(cwd, art):
    edit_manifest(art, lambda d: _set_path(d, "model.mean", [0.9]))
    line = error_line(run("verify", art))
    assert "manifest.json was edited after export" in line
    from PIL import Image

    from export.predict.cli import main as predict_cli

    Image.new("L", (16, 16), 90).save(cwd / "a.png")
    line = error_line(CliRunner().invoke(predict_cli, [str(art), str(cwd / "a.png")]))
    assert "model.mean is [0.9], the file's own metadata" in line


def test_the_manifest_digest_tells_an_edit_from_a_reexport(cwd, art):
    from export.core.manifest import manifest_digest

    manifest = read_manifest(art)
    assert manifest["manifest_sha256"] == manifest_digest(manifest)
    edit_manifest(art, lambda d: d.update(created="2020-01-01T00:00:00+00:00"))
    line = error_line(run("verify", art))
    assert "manifest.json was edited after export" in line
    with pytest.raises(UserError, match="edited after export"):
        load_artifact(art)


def test_the_planners_deploy_section_is_left_out_of_the_digest(cwd, art):
    edit_manifest(art, lambda d: d.update(deploy={"runtime": "onnxruntime", "precision": "fp32",
                                                  "settings": {"threads": 1}}))
    load_artifact(art)  # verify=True: digest checked, deploy not part of it
    result = run("verify", art)
    assert result.exit_code == 0, result.output
    assert "matches its digest" in result.output


def test_a_manifest_without_a_digest_is_checked_against_its_file_only(cwd, art):
    edit_manifest(art, lambda d: d.pop("manifest_sha256"))
    load_artifact(art)
    result = run("verify", art)
    assert result.exit_code == 0, result.output
    assert "records no digest" in result.output


def test_bench_skips_an_edited_artifact_and_measures_the_good_one(tmp_path, art):
    from bench.cli import main as bench_cli

    root = tmp_path / "arts"
    root.mkdir()
    shutil.copytree(art, root / "good")
    shutil.copytree(art, root / "edited")
    edit_manifest(root / "edited", lambda d: _set_path(d, "model.mean", [0.9]))
    result = CliRunner().invoke(bench_cli, [
        "--artifacts", str(root), "--backends", "onnxruntime", "--batch-sizes", "1",
        "--warmup", "1", "--no-steady-warmup", "--min-iters", "2", "--min-time", "0",
        "--rounds", "1", "--no-throughput", "--no-progress", "--threads", "1",
        "--out", str(tmp_path / "out")])
    no_traceback(result)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert {Path(r["artifact"]).parent for r in doc["results"]} == {root / "good"}
    reasons = [s["reason"] for s in doc["skipped"]]
    assert any("model.mean is [0.9]" in r for r in reasons), reasons
