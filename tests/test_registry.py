"""The runtime registry: one answer to "which runtimes exist here, what do they run natively, and
why not", asked by the loader, the gate, resnet-predict and resnet-bench alike."""

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

import export.runtime.registry as registry
from export.core import cpu_features
from export.core.errors import UserError
from export.core.models import ModelSpec
from export.core.shapes import BatchRange
from export.gate.judge import gate_candidates
from export.pipeline import ExportRequest, export_artifact
from export.runtime.base import Runner, RunTarget
from export.runtime.registry import (
    RUNTIMES,
    RuntimeInfo,
    Setting,
    get_runtime,
    runtimes_for,
)

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(autouse=True)
def fresh_probes():
    registry.clear_probe_cache()
    yield
    registry.clear_probe_cache()


def test_every_runtime_says_whether_it_runs_here_and_why_not():
    assert get_runtime("onnxruntime").unavailable() is None  # a core dependency
    assert (get_runtime("openvino").unavailable() is None) == HAS_OPENVINO
    reason = get_runtime("tensorrt").unavailable()
    if not HAS_TENSORRT:
        assert "tensorrt is not installed" in reason and "[gpu]" in reason
    for info in RUNTIMES.values():  # a reason is one line, never an exception
        why = info.unavailable()
        assert why is None or (isinstance(why, str) and "\n" not in why)


def test_an_unknown_runtime_is_one_line_naming_the_choices():
    with pytest.raises(UserError, match="unknown runtime 'tvm'; choose from onnxruntime, "):
        get_runtime("tvm")


def test_formats_and_flavours_decide_which_runtimes_run_an_artifact():
    names = lambda *a, **k: [r.name for r in runtimes_for(*a, **k)]  # noqa: E731
    assert names("onnx", device="cpu") == ["onnxruntime", "openvino"]
    # OpenVINO does not compile signed INT8 activations: the tensorrt flavour is not its
    assert "openvino" not in names("onnx-int8", "tensorrt")
    assert "openvino" in names("onnx-int8", "cpu")
    assert names("trt", direct=True) == ["tensorrt"]
    # an engine folder keeps its source ONNX, which the ONNX runtimes can run
    assert set(names("trt")) == {"onnxruntime", "onnxruntime-cuda", "openvino", "tensorrt"}


def test_native_precisions_follow_the_device_and_the_cpu(monkeypatch):
    ort, ov = get_runtime("onnxruntime"), get_runtime("openvino")
    assert ort.not_native("fp32") is None and ort.not_native("int8") is None
    assert "computes fp16 in FP32" in ort.not_native("fp16")
    assert ort.arithmetic("fp16") == "fp32" and get_runtime("tensorrt").arithmetic("fp16") == "fp16"
    assert "does not run bf16" in ort.not_native("bf16")
    monkeypatch.setattr(cpu_features, "native_bf16", lambda *a: False)
    assert "no native BF16" in ov.not_native("bf16")
    monkeypatch.setattr(cpu_features, "native_bf16", lambda *a: True)
    assert ov.not_native("bf16") is None


def test_probes_are_asked_once_per_process(monkeypatch):
    calls = []
    real = RUNTIMES["openvino"]._probe

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setitem(RUNTIMES, "openvino", dataclasses.replace(RUNTIMES["openvino"],
                                                                    _probe=counting))
    for _ in range(3):
        get_runtime("openvino").unavailable()
    assert len(calls) == 1


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("registry") / "resnet20-onnx"
    export_artifact(ExportRequest(fmt="onnx", model="resnet20", input_size=16,
                                  batch=BatchRange(1, 1, 2), out=out),
                    echo=lambda _: None, warn=lambda _: None)
    return out


def test_the_gate_judges_on_what_the_registry_says_is_here(small_artifact, monkeypatch):
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    monkeypatch.setattr(cpu_features, "native_bf16", lambda *a: False)
    found = [(c.runner.backend, c.contract) for c in gate_candidates(small_artifact, manifest)]
    assert found[0] == ("onnxruntime", "fp32")
    assert (("openvino", "fp32") in found) == HAS_OPENVINO
    assert ("openvino", "bf16") not in found  # not native here: never judged, never emulated
    monkeypatch.setitem(RUNTIMES, "openvino", dataclasses.replace(
        RUNTIMES["openvino"], _probe=lambda: "openvino is not installed (test)"))
    registry.clear_probe_cache()
    found = [c.runner.backend for c in gate_candidates(small_artifact, manifest)]
    assert found == ["onnxruntime"]


# -- a runtime added by one registry entry, seen by every tool ---------------------------------


class NumpyRunner(Runner):
    """A runtime of this test only: logits that put every image in class 3."""

    backend = "numpy"

    def __init__(self, target: RunTarget):
        super().__init__(target.precision, "cpu", target.contract)
        self.path, self.threads = target.path, target.options.get("threads")
        self.classes = target.manifest["model"]["num_classes"] if target.manifest else 10

    def _infer(self, batch):
        logits = np.zeros((len(batch), self.classes), np.float32)
        logits[:, 3] = 1.0
        return logits


@pytest.fixture
def numpy_runtime():
    """One entry: the runtime's name, what it runs, its factory and the settings worth trying."""
    info = registry.register(RuntimeInfo(
        "numpy", "a numpy runner (test)", "cpu", ("onnx",), ("fp32",), ("fp32",),
        factory=NumpyRunner, options=("threads",),
        settings=(Setting("threads", ("cores",), "every core"),)))
    yield info
    del RUNTIMES[info.name]
    registry.clear_probe_cache()


def test_a_registered_runtime_appears_in_bench_predict_and_plan(small_artifact, numpy_runtime,
                                                                 tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    import bench.matrix as matrix
    from bench.cli import main as bench_main
    from export.plan.space import candidates_for
    from export.predict.cli import main as predict_main

    # bench: a default CPU run measures it on the on-the-fly ONNX file, built by its factory
    spec = ModelSpec.create("resnet20", input_size=16)
    cases = matrix.build(matrix.Request(spec, "cpu", None, ["fp32"], threads=1,
                                       cache_dir=tmp_path / "cache"))
    (cand,) = [c for c in cases.candidates if c.backend == "numpy"]
    runner, _ = cand.prepare()
    assert isinstance(runner, NumpyRunner) and runner.path.suffix == ".onnx"
    assert runner.path.is_file() and runner.threads == 1
    out = tmp_path / "bench"
    result = CliRunner().invoke(bench_main, [
        "--artifacts", str(small_artifact), "--backends", "numpy", "--batch-sizes", "1",
        "--warmup", "1", "--no-steady-warmup", "--min-iters", "2", "--min-time", "0",
        "--rounds", "1", "--no-progress", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((out / "bench.json").read_text())["results"]
    assert (row["backend"], row["format"], row["batch_size"]) == ("numpy", "onnx", 1)

    # resnet-predict: one of --runtime's choices, and the runner that classifies
    image = tmp_path / "grey.png"
    Image.new("RGB", (16, 16), (128, 128, 128)).save(image)
    result = CliRunner().invoke(predict_main, [str(small_artifact), str(image), "--json",
                                               "--runtime", "numpy", "--top-k", "1"])
    assert result.exit_code == 0, result.output
    (file,) = json.loads(result.stdout)["results"]
    assert file["top"][0]["index"] == 3
    bad = CliRunner().invoke(predict_main, [str(small_artifact), str(image), "--runtime", "x"])
    assert bad.exit_code == 2 and "'numpy'" in bad.output

    # resnet-plan: a candidate of the space, with its settings resolved on this machine
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    found = candidates_for(small_artifact, manifest, "sha", "cpu", 2, "latency")
    assert [(c.runtime, c.settings) for c in found if c.runtime == "numpy"] == \
        [("numpy", {"threads": 2})]
