"""OpenVINO runner: explicit precision read back, the eager logits, dynamic batch, throughput mode,
clear refusals."""

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")

from export.convert.onnx_export import export_onnx, save_onnx
from export.core import cpu_features
from export.core.errors import BackendUnavailable
from export.core.models import ModelSpec
from export.core.weights import fresh_source
from export.gate.parity import compare
from export.gate.tolerances import TOLERANCES
from export.runtime.openvino_runner import OpenVINORunner, OpenVINOSettings

SPEC = ModelSpec.create("resnet20", num_classes=10, in_chans=1)


@pytest.fixture(scope="module")
def source():
    return fresh_source(SPEC)


@pytest.fixture(scope="module")
def onnx_file(source, tmp_path_factory):
    return save_onnx(export_onnx(source.model, SPEC), tmp_path_factory.mktemp("ov") / "m.onnx")


def _batch(n, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32), dtype=np.float32)


@torch.no_grad()
def _eager(source, x):
    return source.model(torch.from_numpy(x)).numpy()


def test_fp32_matches_eager_and_runs_f32_although_this_cpu_defaults_otherwise(source, onnx_file):
    x = _batch(4)
    with OpenVINORunner(onnx_file, "fp32", OpenVINOSettings(threads=2)) as runner:
        out = runner.infer(x)
        info = runner.runtime_info()
    result = compare(_eager(source, x), out, TOLERANCES["fp32"], name="openvino fp32")
    assert result.passed, result.failures
    assert out.dtype == np.float32 and out.shape == (4, 10)
    assert runner.label == "openvino[cpu,fp32]"
    assert info["effective_precision"] == "f32"
    assert info["requested"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert info["execution_mode"] == "ACCURACY" and info["performance_hint"] == "LATENCY"
    assert info["inference_num_threads"] == 2
    assert set(info["layer_precisions"]["Convolution"]) == {"f32"}


def test_the_plugin_would_run_bf16_by_itself_where_the_cpu_has_native_bf16(onnx_file):
    """Why fp32 is asked for explicitly: left alone, the plugin picks BF16 on such a CPU."""
    import openvino as ov

    if not cpu_features.native_bf16():
        pytest.skip(f"this CPU ({cpu_features.summary()}) has no native BF16")
    default = ov.Core().compile_model(str(onnx_file), "CPU")
    assert default.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"


def test_bf16_is_close_or_refused_with_the_reason(source, onnx_file):
    try:
        runner = OpenVINORunner(onnx_file, "bf16", OpenVINOSettings(threads=2))
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    x = _batch(4)
    with runner:
        out = runner.infer(x)
        assert runner.effective_precision == "bf16"
        assert set(runner.layer_precisions()["Convolution"]) == {"bf16"}
    ref = _eager(source, x)
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert np.isfinite(out).all() and cos.min() > 0.99


def test_bf16_without_native_bf16_is_refused_not_emulated(onnx_file, monkeypatch):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda features=None: False)
    with pytest.raises(BackendUnavailable, match="no native BF16"):
        OpenVINORunner(onnx_file, "bf16")


@pytest.mark.parametrize("static_shapes", [True, False])
def test_dynamic_batch_sizes_1_and_3(source, onnx_file, static_shapes):
    settings = OpenVINOSettings(threads=2, static_shapes=static_shapes)
    with OpenVINORunner(onnx_file, "fp32", settings) as runner:
        for n in (1, 3, 1):
            x = _batch(n, seed=n)
            result = compare(_eager(source, x), runner.infer(x), TOLERANCES["fp32"])
            assert result.passed, result.failures
        shapes = runner.runtime_info()["compiled_shapes"]
    assert shapes == ([[1, 1, 32, 32], [3, 1, 32, 32]] if static_shapes else [])


def test_fp16_io_file_gets_its_input_cast(source, onnx_file, tmp_path):
    import onnx

    from export.convert.fp16 import convert_to_fp16

    proto, _ = convert_to_fp16(onnx.load(str(onnx_file)), io_fp16=True)
    path = save_onnx(proto, tmp_path / "fp16io.onnx")
    x = _batch(2)
    with OpenVINORunner(path, "fp32", OpenVINOSettings(threads=2)) as runner:
        assert runner.input_dtype == np.float16
        out = runner.infer(x)
    assert out.dtype == np.float32
    result = compare(_eager(source, x), out, TOLERANCES["fp16"])
    assert result.passed, result.failures


def test_int8_runs_a_qdq_file_in_int8_and_refuses_a_float_one(source, onnx_file, tmp_path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": _batch(8, seed=s)} for s in range(2)])

        def get_next(self):
            return next(self.batches, None)

    # u8 activations (OpenVINO's own convention): with onnxruntime's default signed-int8
    # activations this model's QDQ graph does not compile in OpenVINO 2026.4 (inconsistent
    # Subtract shapes in its shape inference), whatever the precision hints
    pre, qdq = tmp_path / "pre.onnx", tmp_path / "int8.onnx"
    quant_pre_process(str(onnx_file), str(pre))
    quantize_static(str(pre), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    x = _batch(4)
    with OpenVINORunner(qdq, "int8", OpenVINOSettings(threads=2)) as runner:
        out = runner.infer(x)
        info = runner.runtime_info()
    assert info["effective_precision"] == "f32" and info["quantized_model"]
    assert set(info["layer_precisions"]["Convolution"]) <= {"u8", "i8"}
    ref = _eager(source, x)
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.95
    with pytest.raises(ValueError, match="not quantized"):
        OpenVINORunner(onnx_file, "int8").activate()
    with pytest.raises(ValueError, match="use precision 'int8'"):
        OpenVINORunner(qdq, "fp32").activate()


def test_refusals(onnx_file, monkeypatch):
    with pytest.raises(ValueError, match="precision"):
        OpenVINORunner(onnx_file, "int4")
    with pytest.raises(RuntimeError, match="before activate"):
        OpenVINORunner(onnx_file).infer(_batch(1))
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendUnavailable, match="openvino is not installed"):
        OpenVINORunner(onnx_file)
