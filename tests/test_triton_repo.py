"""resnet-export triton-repo: every config.pbtxt parses with Triton's own model-config schema
(the protobuf tritonclient ships) and says what the manifest says."""

import copy
import json
import shutil

import pytest
from click.testing import CliRunner

from export.cli import main
from export.convert.triton_repo import RepoOptions, config_text, model_config

from built_artifacts import BATCH

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                         reason="tritonclient[grpc] is not installed")
text_format = pytest.importorskip("google.protobuf.text_format")


@pytest.fixture(scope="module")
def artifact(onnx_artifact):
    """The session's trained ONNX artifact (read-only: built once, never rebuilt here)."""
    return onnx_artifact


def invoke(*args):
    return CliRunner().invoke(main, ["triton-repo", *map(str, args)], catch_exceptions=False)


def parse(path):
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def check_against_manifest(config, manifest, name):
    assert config.name == name
    assert config.max_batch_size == manifest["batch_range"]["max"]
    (inp,), (out,) = config.input, config.output
    for tensor, item in ((inp, manifest["inputs"][0]), (out, manifest["outputs"][0])):
        assert tensor.name == item["name"]
        assert list(tensor.dims) == item["shape"][1:]
        assert mc.DataType.Name(tensor.data_type) == "TYPE_" + {"float32": "FP32",
                                                                "float16": "FP16"}[item["dtype"]]
    rng = manifest["batch_range"]
    assert list(config.dynamic_batching.preferred_batch_size) == sorted({rng["opt"], rng["max"]})
    assert all(b <= config.max_batch_size for b in config.dynamic_batching.preferred_batch_size)
    assert len(config.instance_group) == 1 and config.instance_group[0].count >= 1


def test_onnx_artifact_becomes_an_onnxruntime_model_triton_can_parse(artifact, tmp_path):
    result = invoke(artifact, "--out", tmp_path / "repo")
    assert result.exit_code == 0, result.output
    manifest = json.loads((artifact / "manifest.json").read_text())
    folder = tmp_path / "repo/resnet20-onnx"
    config = parse(folder / "config.pbtxt")
    check_against_manifest(config, manifest, "resnet20-onnx")
    assert config.backend == "onnxruntime"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (folder / "1/model.onnx").read_bytes() == (artifact / manifest["artifact"]).read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt"]


def test_openvino_only_where_the_gate_judged_it(artifact, tmp_path):
    result = invoke(artifact, "--out", tmp_path, "--backend", "openvino", "--name", "ov",
                    "--instances", "2")
    assert result.exit_code == 0, result.output
    config = parse(tmp_path / "ov/config.pbtxt")
    assert config.backend == "openvino" and config.default_model_filename == "model.onnx"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 2
    assert config.parameters["INFERENCE_PRECISION_HINT"].string_value == "f32"
    manifest = json.loads((artifact / "manifest.json").read_text())
    unjudged = copy.deepcopy(manifest)
    unjudged["parity"]["runs"] = [r for r in unjudged["parity"]["runs"]
                                  if not r["candidate"].startswith("openvino")]
    with pytest.raises(Exception, match="not judged on openvino at export"):
        model_config(unjudged, "x", RepoOptions(backend="openvino"))
    assert invoke(artifact, "--out", tmp_path, "--backend", "tensorrt").exit_code == 2


def test_an_engine_manifest_gives_a_tensorrt_plan_config(artifact):
    """The config of an engine (no engine can be built here: only its manifest is needed)."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest.update(format="trt", precision="fp16", artifact="resnet20.plan",
                    gpu={"name": "NVIDIA H100"})
    manifest["versions"]["tensorrt"] = "10.9.0"
    config_pbtxt = config_text(model_config(manifest, "resnet20-trt", RepoOptions()), manifest)
    config = text_format.Parse(config_pbtxt, mc.ModelConfig())
    check_against_manifest(config, manifest, "resnet20-trt")
    assert config.backend == "tensorrt"
    assert "TensorRT 10.9.0 for NVIDIA H100" in config_pbtxt


def test_refuses_what_it_must(artifact, tmp_path):
    repo = tmp_path / "repo"
    assert invoke(artifact, "--out", repo).exit_code == 0
    again = invoke(artifact, "--out", repo)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert invoke(artifact, "--out", repo, "--overwrite").exit_code == 0  # ours: replaced
    (repo / "resnet20-onnx/notes.txt").write_text("a user's file")
    assert invoke(artifact, "--out", repo, "--overwrite").exit_code == 1  # not provably ours
    assert (repo / "resnet20-onnx/notes.txt").exists()
    assert invoke(artifact, artifact, "--out", tmp_path / "two").exit_code == 2  # same name
    assert invoke(artifact, "--out", repo, "--name", "../escape").exit_code == 2
    tampered = tmp_path / "tampered"
    shutil.copytree(artifact, tampered)
    onnx = next(tampered.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    result = invoke(tampered, "--out", tmp_path / "t")
    assert result.exit_code == 1 and "sha256 mismatch" in result.output
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())
    assert BATCH.max == parse(repo / "resnet20-onnx/config.pbtxt").max_batch_size
