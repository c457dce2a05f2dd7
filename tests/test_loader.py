"""load_artifact: one way to open any artifact, on the runtime asked for, at a judged precision."""

import importlib.util
import json
import shutil

import numpy as np
import pytest

from export.core import cpu_features
from export.core.errors import UserError
from export.core.shapes import BatchRange
from export.pipeline import ExportRequest, export_artifact
from export.runtime import load_artifact
from export.runtime.loader import runner_for
from export.runtime.ort_runner import OnnxRuntimeRunner

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader") / "resnet20-onnx"
    req = ExportRequest(fmt="onnx", model="resnet20", batch=BatchRange(1, 2, 2), out=out,
                        input_size=16)
    export_artifact(req, echo=lambda _: None, warn=lambda _: None)
    return out


def test_default_runtime_is_onnx_runtime_with_the_artifacts_contract(fp32_artifact):
    runner = load_artifact(fp32_artifact)
    assert isinstance(runner, OnnxRuntimeRunner)
    with runner, pytest.raises(ValueError, match="outside images's range"):
        runner.infer(np.zeros((3, 1, 16, 16), np.float32))


def test_a_runtime_that_cannot_run_the_format_is_one_line(fp32_artifact):
    with pytest.raises(UserError, match="runs on onnxruntime, .*openvino, not tensorrt"):
        load_artifact(fp32_artifact, runtime="tensorrt")
    with pytest.raises(UserError, match="at fp16: its gate did not judge that precision"):
        load_artifact(fp32_artifact, precision="fp16")
    manifest = json.loads((fp32_artifact / "manifest.json").read_text())
    with pytest.raises(UserError, match="a fp32 artifact does not run at bf16 on onnxruntime"):
        runner_for(fp32_artifact, manifest, precision="bf16")


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")
def test_openvino_runs_the_artifact_and_bf16_only_where_the_gate_judged_it(fp32_artifact,
                                                                          tmp_path):
    manifest = json.loads((fp32_artifact / "manifest.json").read_text())
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16), dtype=np.float32)
    with load_artifact(fp32_artifact, runtime="openvino") as ov, \
            load_artifact(fp32_artifact) as ort:
        assert ov.effective_precision == "f32"
        np.testing.assert_allclose(ov.infer(x), ort.infer(x), atol=1e-4)
    judged = manifest["parity"]["contracts"]
    assert judged["fp32"] is True
    assert ("bf16" in judged) is bool(cpu_features.native_bf16())  # judged where it is native
    if "bf16" in judged:
        with load_artifact(fp32_artifact, runtime="openvino", precision="bf16") as ov16:
            assert ov16.effective_precision == "bf16"
    copy = tmp_path / "copy"
    shutil.copytree(fp32_artifact, copy)
    manifest["parity"]["contracts"].pop("bf16", None)  # a gate that did not judge bf16
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="did not judge that precision"):
        load_artifact(copy, runtime="openvino", precision="bf16")
