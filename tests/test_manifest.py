"""manifest.json: the documented schema, refusals of bad manifests, and load_artifact."""

import json
import shutil

import numpy as np
import pytest

from export import __version__
from export.core.artifact import read_manifest, verify_files
from export.core.errors import BackendUnavailable, UserError
from export.core.manifest import REQUIRED_KEYS, SCHEMA_VERSION, write_manifest
from export.core.models import ModelSpec
from export.core.shapes import BatchRange
from export.pipeline import ExportRequest, export_artifact
from export.runtime import load_artifact
from export.runtime.ort_runner import OnnxRuntimeRunner
from export.runtime.tensorrt_runner import cuda_gpu, tensorrt_version

BATCH = BatchRange(1, 2, 4)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """One FP16 resnet20 artifact (FP16 I/O, to check dtypes) shared by the module."""
    out = tmp_path_factory.mktemp("m") / "resnet20-onnx-fp16"
    req = ExportRequest(fmt="onnx-fp16", model="resnet20", batch=BATCH, out=out, io_fp16=True)
    export_artifact(req, echo=lambda _: None, warn=lambda _: None)
    return out


@pytest.fixture
def copy_of(artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def test_manifest_has_the_documented_keys_and_values(artifact):
    m = read_manifest(artifact)
    assert set(REQUIRED_KEYS) <= set(m)
    assert m["schema_version"] == SCHEMA_VERSION == 1
    assert (m["format"], m["precision"], m["artifact"]) == ("onnx-fp16", "fp16",
                                                            "resnet20.fp16.onnx")
    assert ModelSpec.from_dict(m["model"]) == ModelSpec.create("resnet20", num_classes=10,
                                                               in_chans=1)
    assert m["files"] == [{"path": "resnet20.fp16.onnx", "sha256": m["files"][0]["sha256"],
                           "bytes": (artifact / "resnet20.fp16.onnx").stat().st_size,
                           "role": "artifact"}]
    assert len(m["files"][0]["sha256"]) == 64
    assert m["inputs"] == [{"name": "images", "shape": ["batch", 1, 32, 32], "dtype": "float16"}]
    assert m["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float16"}]
    assert m["batch_range"] == {"min": 1, "opt": 2, "max": 4}
    assert m["opset"] == 20
    assert m["source"]["kind"] == "seed" and m["source"]["seed"] == 0
    assert m["source"]["path"] is None and m["source"]["sha256"] is None
    assert set(m["versions"]) == {"python", "torch", "onnx", "onnxruntime", "tensorrt"}
    assert m["versions"]["tensorrt"] == tensorrt_version()
    assert m["gpu"] is None and m["tensorrt"] is None  # not an engine
    assert m["fp16"]["io_fp16"] is True
    assert m["parity"]["passed"] is True
    assert m["parity"]["inputs"]["batch_sizes"] == [1, 2, 4]
    assert m["parity"]["inputs"]["real"]["available"] is True
    assert m["tool"] == {"name": "resnet-deploy", "version": __version__}
    assert m["created"].endswith("+00:00")
    assert m["normalization"]["mean"] == [0.5] and m["normalization"]["layout"] == "NCHW"


def test_manifest_and_folder_are_readable_by_others(artifact):
    assert (artifact / "manifest.json").stat().st_mode & 0o044 == 0o044
    assert artifact.stat().st_mode & 0o055 == 0o055


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(schema_version=99), "schema_version 99"),
    (lambda m: m.pop("batch_range"), "lacks batch_range"),
    (lambda m: m.update(kind="something"), "not a resnet-deploy artifact manifest"),
    (lambda m: m.update(format="tflite"), "unknown format"),
    (lambda m: m.update(artifact="other.onnx"), "not among its files"),
    (lambda m: m.update(int8=5), "int8 must be an object or null"),
])
def test_bad_manifests_are_refused_with_one_line(copy_of, edit, message):
    path = copy_of / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message) as info:
        read_manifest(copy_of)
    assert "\n" not in str(info.value)


def test_missing_and_corrupt_manifests(tmp_path, copy_of):
    with pytest.raises(UserError, match="no manifest.json"):
        read_manifest(tmp_path)
    (copy_of / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(copy_of)


def test_verify_files_catches_tampering_truncation_and_escapes(copy_of):
    manifest = read_manifest(copy_of)
    verify_files(copy_of, manifest)  # untouched: fine
    path = copy_of / "resnet20.fp16.onnx"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 mismatch for .*resnet20.fp16.onnx"):
        verify_files(copy_of, manifest)
    path.unlink()
    with pytest.raises(UserError, match="is missing"):
        verify_files(copy_of, manifest)
    evil = dict(manifest, files=[{"path": "../x", "sha256": "0" * 64}])
    with pytest.raises(UserError, match="outside the artifact folder"):
        verify_files(copy_of, evil)


def test_load_artifact_gives_a_working_onnx_runtime_runner(artifact):
    runner = load_artifact(artifact)
    assert isinstance(runner, OnnxRuntimeRunner) and runner.contract is not None
    assert runner.precision == "fp16" and runner.label == "onnxruntime[CPU,fp16]"
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32), dtype=np.float32)
    with runner:
        out = runner.infer(x)
    assert out.shape == (3, 10) and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("shape,message", [
    ((2, 3, 32, 32), r"input shape \(2, 3, 32, 32\) does not fit images: expected \(N, 1, 32, 32\)"
                     r" with N in 1..4"),
    ((2, 1, 64, 64), "does not fit images"),
    ((8, 1, 32, 32), "batch size 8 is outside images's range"),
    ((1, 32, 32), "does not fit images"),
])
def test_wrong_input_shape_gives_a_clear_error(artifact, shape, message):
    with load_artifact(artifact) as runner:
        with pytest.raises(ValueError, match=message):
            runner.infer(np.zeros(shape, np.float32))


def test_loader_refuses_tampered_files_unless_told_not_to_check(copy_of):
    import onnx

    path = copy_of / "resnet20.fp16.onnx"
    proto = onnx.load(str(path))  # a change that keeps it an ONNX file: the loader reads it
    proto.doc_string += " (edited)"
    onnx.save(proto, str(path))
    with pytest.raises(UserError, match="sha256 mismatch"):
        load_artifact(copy_of)
    assert load_artifact(copy_of, verify=False) is not None


@pytest.mark.skipif(tensorrt_version() is not None and cuda_gpu() is not None,
                    reason="this machine can run TensorRT engines")
def test_engine_manifest_without_tensorrt_is_one_clear_line(copy_of):
    path = copy_of / "manifest.json"
    data = json.loads(path.read_text())
    data.update(format="trt", gpu={"name": "NVIDIA H100", "compute_capability": "9.0"},
                tensorrt={"built_from": data["artifact"]})  # an engine's manifest names its ONNX
    data["versions"]["tensorrt"] = "10.9.0"
    write_manifest(copy_of, data)  # sealed as an engine export would write it
    with pytest.raises(BackendUnavailable) as info:
        load_artifact(copy_of)
    assert "needs TensorRT and a CUDA GPU" in str(info.value) and "\n" not in str(info.value)
