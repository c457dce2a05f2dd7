"""bench's throughput mode: a runtime's own requests (OpenVINO's AsyncInferQueue) kept in flight
and timed by bench/throughput.py, the way benchmark_app -hint throughput measures."""

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")

from bench.throughput import measure_throughput
from export.convert.onnx_export import export_onnx, save_onnx
from export.core.models import ModelSpec
from export.core.weights import fresh_source
from export.runtime.openvino_runner import OpenVINORunner, OpenVINOSettings
from export.runtime.ort_runner import OnnxRuntimeRunner

SPEC = ModelSpec.create("resnet20", num_classes=10, in_chans=1)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return save_onnx(export_onnx(fresh_source(SPEC).model, SPEC),
                     tmp_path_factory.mktemp("tput") / "m.onnx")


def test_windows_of_requests_in_flight(onnx_file):
    batch = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with OpenVINORunner(onnx_file, "fp32", OpenVINOSettings(threads=2)) as runner:
        result = measure_throughput(runner, batch, min_time_s=0.3, min_iters=20)
        again = measure_throughput(runner, batch, min_time_s=0, min_iters=3)  # a second window
    assert result["images_per_s"] > 0 and result["requests"] >= 1
    assert result["iterations"] >= 20 and result["batch"] == 4
    assert result["effective_precision"] == "f32"
    assert len(result["latencies_ms"]) == result["iterations"]  # one per completed request
    assert again["compile_s"] < result["compile_s"]  # the THROUGHPUT model is compiled once
    assert again["iterations"] >= 3 and len(again["latencies_ms"]) == again["iterations"]


def test_a_runner_without_the_mode_says_so(onnx_file):
    batch = np.zeros((1, 1, 32, 32), np.float32)
    with OnnxRuntimeRunner(onnx_file) as runner:
        assert not runner.throughput_mode
        with pytest.raises(NotImplementedError, match="no throughput mode"):
            measure_throughput(runner, batch, min_time_s=0)
