"""The seams between the layers: defects found where one module meets another, each pinned.

Each test here failed before its fix: the clock follows the runner, not its class; one function
decides a model's defaults for every command; a static batch range is gated once per size; the
TensorRT parser's recorded errors fail a parse that returned true; the GPU recorded is the
current device; the FP16 gate says when its runtime did not compute in FP16; and the gpu extra
installs versions that work together.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from click.testing import CliRunner

import bench.sweep as sweep
from bench.cli import main as bench_cli
from export.convert.tensorrt_build import check_parse
from export.core.counting import count_parameters, family_table
from export.core.errors import UserError
from export.core.models import default_spec
from export.core.shapes import BatchRange
from export.pipeline import ExportRequest, export_artifact
from export.request import resolve_source
from export.runtime.base import Runner
from export.runtime.tensorrt_runner import cuda_gpu

REPO = Path(__file__).resolve().parents[1]


class _DeviceRunner(Runner):
    backend = "fake-accelerator"

    def _infer(self, batch):
        return np.zeros((len(batch), 10), np.float32)


def test_the_clock_follows_the_runners_device_not_its_class(monkeypatch):
    class FakeEvents:
        name = "cuda_event"

    monkeypatch.setattr(sweep, "CudaEventTimer", FakeEvents)
    assert isinstance(sweep.make_timer(_DeviceRunner("fp16", "cuda")), FakeEvents)
    assert isinstance(sweep.make_timer(_DeviceRunner("fp32", "cpu")), sweep.ClockTimer)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet18"])
def test_every_command_builds_the_same_network_for_a_name(name, tmp_path):
    exported = resolve_source(ExportRequest(model=name)).spec if name != "resnet18" else None
    decided = default_spec(name)
    if exported is not None:
        assert exported == decided
    (row,) = family_table(names=[name])
    assert row.params == count_parameters(decided.build())
    out = tmp_path / "bench"
    result = CliRunner().invoke(bench_cli, [
        "--model", name, "--backends", "null", "--batch-sizes", "1", "--warmup", "0",
        "--min-iters", "1", "--min-time", "0", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    benched = json.loads((out / "bench.json").read_text())["config"]["model"]
    assert benched == decided.to_dict()


def test_small_image_defaults_are_the_embedded_digits_shape():
    spec = default_spec("resnet20")
    assert (spec.num_classes, spec.in_chans, spec.input_size) == (10, 1, 32)
    assert default_spec("resnet20", in_chans=3).in_chans == 3
    assert (default_spec("50").num_classes, default_spec("50").in_chans) == (1000, 3)


@pytest.mark.parametrize("text,sizes", [("8", [8]), ("1:8:8", [1, 8]), ("1:4:16", [1, 4, 16]),
                                        ("2:2", [2])])
def test_gate_batch_sizes_are_each_size_once(text, sizes):
    assert BatchRange.parse(text).parity_sizes() == sizes


def test_a_parse_that_returned_true_but_recorded_errors_fails():
    check_parse(True, [], "m.onnx")  # clean
    with pytest.raises(UserError, match=r"rejected m.onnx: 2 error\(s\), first: bad node"):
        check_parse(True, ["bad node\nat line 3", "another"], "m.onnx")
    with pytest.raises(UserError, match=r"0 error\(s\), first: no error reported"):
        check_parse(False, [], "m.onnx")


def test_the_gpu_recorded_is_the_current_device_not_device_0(monkeypatch):
    names = {0: "GPU zero", 1: "GPU one"}
    caps = {0: (8, 0), 1: (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: names[d])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: caps[d])
    gpu = cuda_gpu()
    assert (gpu.name, gpu.compute_capability) == ("GPU one", "9.0")


def test_fp16_gate_on_the_cpu_provider_says_it_computed_in_fp32(tmp_path):
    out = tmp_path / "a"
    req = ExportRequest(fmt="onnx-fp16", model="resnet20", batch=BatchRange(1, 2, 2), out=out)
    result = export_artifact(req, echo=lambda _: None, warn=lambda _: None)
    arithmetic = {run["candidate"]: run["arithmetic"] for run in result.manifest["parity"]["runs"]}
    assert arithmetic["onnxruntime[CPU,fp16]"].startswith("fp32")
    assert "casts" in arithmetic["onnxruntime[CPU,fp16]"]
    has_openvino = importlib.util.find_spec("openvino") is not None
    assert ("openvino[cpu,fp16]" in arithmetic) == has_openvino  # a candidate where installed
    if has_openvino:
        assert arithmetic["openvino[cpu,fp16]"].startswith("fp32")


def _lower_bound(requirement: str) -> tuple[int, ...]:
    spec = requirement.split(">=", 1)[1].split(",")[0]
    return tuple(int(p) for p in spec.split("."))


def test_gpu_extra_pairs_tensorrt_11_with_an_onnxruntime_that_supports_it():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["gpu"]
    ort = next(r for r in extras if r.startswith("onnxruntime-gpu"))
    trt = next(r for r in extras if r.startswith("tensorrt"))
    allows_11 = "<11" not in trt.replace(" ", "")
    if allows_11:  # ONNX Runtime's TensorRT provider reads TensorRT 11 from 1.27 on
        assert _lower_bound(ort) >= (1, 27), ort
