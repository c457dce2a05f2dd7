"""resnet-bench's matrix (what a run measures) and rows for the CPU runtimes: OpenVINO latency
and throughput rows, the precision of each runtime or the reason it is skipped, INT8 on the fly,
and exported artifacts of several models, each compared with an eager baseline of its own
model."""

import json
import shutil

import pytest
from click.testing import CliRunner

import bench.matrix as matrix
from bench import report
from bench.cli import main
from bench.onnx_cache import cached_onnx
from export.core import cpu_features
from export.core.models import ModelSpec

FAST = ["--warmup", "1", "--no-steady-warmup", "--min-iters", "2", "--min-time", "0",
        "--rounds", "2", "--no-progress", "--threads", "1"]
SPEC = ModelSpec.create("resnet18", input_size=32)


def _openvino(reason):
    """The registry's probes, with OpenVINO's answer replaced by ``reason``."""
    real = matrix._unavailable
    return lambda backend: reason if backend == "openvino" else real(backend)


def _build(monkeypatch, backends, precisions, device="cpu", **patches):
    for name, value in patches.items():
        monkeypatch.setattr(matrix, name, value)
    cases = matrix.build(matrix.Request(SPEC, device, backends, precisions))
    candidates, skipped = cases.candidates, cases.skipped
    got = {(c.backend, c.precision) for c in candidates}
    reasons = {(s.backend, s.precision): s.reason for s in skipped}
    return candidates, got, reasons


def test_openvino_rows_with_an_explicit_precision_and_the_reason_for_each_skip(monkeypatch):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda *a: True)
    candidates, got, reasons = _build(
        monkeypatch, ["torch", "onnxruntime", "openvino"], ["fp32", "bf16", "int8", "fp16"],
        _unavailable=_openvino(None),
        int8_quantizer_unavailable=lambda: "INT8 quantizer not available (test)")
    assert got == {("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"),
                   ("openvino", "fp32"), ("openvino", "bf16")}
    assert reasons[("onnxruntime", "int8")] == reasons[("openvino", "int8")] == \
        "INT8 quantizer not available (test)"
    assert "no BF16 inference setting" in reasons[("onnxruntime", "bf16")]
    assert "benchmark an FP16 ONNX" in reasons[("openvino", "fp16")]
    assert "CUDA only" in reasons[("torch", "fp16")]
    assert "no INT8 path" in reasons[("torch", "int8")]
    by = {(c.backend, c.precision): c for c in candidates}
    # throughput rows are asked of every runner; only a runner with the mode gives them
    assert by[("openvino", "fp32")].throughput and by[("onnxruntime", "fp32")].throughput
    from export.runtime.openvino_runner import OpenVINORunner
    from export.runtime.ort_runner import OnnxRuntimeRunner
    assert OpenVINORunner.throughput_mode and not OnnxRuntimeRunner.throughput_mode
    assert "autocast" in by[("torch", "bf16")].note

    # a CPU without native BF16: no bf16 row anywhere, and the reason names the CPU
    monkeypatch.setattr(cpu_features, "native_bf16", lambda *a: False)
    _, got, reasons = _build(monkeypatch, ["torch", "openvino"], ["bf16"],
                            _unavailable=_openvino(None))
    assert not got
    assert "no native BF16" in reasons[("openvino", "bf16")]
    assert "no native BF16" in reasons[("torch", "bf16")]


def test_int8_rows_on_both_onnx_runtimes_when_the_quantizer_is_there(monkeypatch):
    candidates, got, reasons = _build(monkeypatch, ["onnxruntime", "openvino"], ["fp32", "int8"],
                                     _unavailable=_openvino(None),
                                     int8_quantizer_unavailable=lambda: None)
    assert got == {(b, p) for b in ("onnxruntime", "openvino") for p in ("fp32", "int8")}
    for c in candidates:
        assert ("speed row" in (c.note or "")) == (c.precision == "int8")


def test_openvino_missing_or_on_cuda_is_skipped_with_the_reason(monkeypatch):
    _, got, reasons = _build(monkeypatch, None, None,
                            _unavailable=_openvino("openvino is not installed (test)"))
    assert ("openvino", "fp32") not in got and ("torch", "fp32") in got
    assert reasons[("openvino", "fp32")] == "openvino is not installed (test)"
    # a CUDA run leaves the CPU runtimes out, saying how to measure them ...
    _, got, reasons = _build(monkeypatch, None, ["fp32"], device="cuda",
                            _unavailable=_openvino(None))
    assert ("openvino", "fp32") not in got
    assert reasons[("openvino", None)] == ("cpu runtime: measured with --device cpu (or "
                                           "--backends openvino)")
    # ... and runs one that is named
    _, got, _ = _build(monkeypatch, ["openvino"], ["fp32"], device="cuda",
                      _unavailable=_openvino(None))
    assert got == {("openvino", "fp32")}


def _artifact(root, spec, cache):
    """A real artifact folder around the cached on-the-fly ONNX of ``spec``."""
    from export.core.manifest import (
        ManifestParts,
        build_manifest,
        file_entry,
        write_manifest,
    )

    onnx_path, _ = cached_onnx(spec.build().eval(), spec, 0, cache)
    folder = root / f"{spec.name}-onnx"
    folder.mkdir()
    shutil.copy(onnx_path, folder / "model.onnx")
    write_manifest(folder, build_manifest(ManifestParts(
        fmt="onnx", precision="fp32", artifact="model.onnx",
        files=[file_entry(folder, "model.onnx", "model")], model=spec.to_dict(),
        class_names=None, normalization={"mean": list(spec.mean), "std": list(spec.std)},
        source={"kind": "seed", "seed": 0},
        inputs=[{"name": "images", "shape": ["batch", spec.in_chans, 32, 32],
                 "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": ["batch", spec.num_classes], "dtype": "float32"}],
        batch_range={"min": 1, "opt": 1, "max": 4}, opset=20, fp16=None, tensorrt=None,
        gpu=None, versions={}, parity={"passed": True, "runs": []})))
    return folder


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    cache = tmp_path_factory.mktemp("cache")
    small = ModelSpec.create("resnet20", num_classes=10, in_chans=1)
    for spec in (SPEC, small):
        _artifact(root, spec, cache)
    return root, small


def test_artifacts_of_two_models_get_one_eager_baseline_each(two_models, monkeypatch):
    root, small = two_models
    monkeypatch.setattr(matrix, "_unavailable", _openvino(None))
    cases = matrix.build(matrix.Request(SPEC, "cpu", artifacts=root))
    candidates = cases.candidates
    assert cases.specs == [SPEC, small]  # resnet18-onnx, then resnet20-onnx
    baselines = [c for c in candidates if c.backend == "torch"]
    assert [(c.spec, c.precision) for c in baselines] == [(SPEC, "fp32"), (small, "fp32")]
    assert all(c.baseline for c in baselines)  # measured only beside a loaded artifact
    onnx_rows = sorted((c.backend, c.spec.name) for c in candidates if c.artifact)
    assert onnx_rows == [("onnxruntime", "resnet18"), ("onnxruntime", "resnet20"),
                         ("openvino", "resnet18"), ("openvino", "resnet20")]


def test_a_report_over_two_models_has_a_section_and_a_baseline_per_model(two_models,
                                                                          tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed")
    root, _ = two_models
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [*FAST, "--artifacts", str(root), "--batch-sizes", "2",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "bench.json").read_text())
    report.validate(doc)
    labels = ["resnet18 32x32x3, 1000 classes", "resnet20 32x32x1, 10 classes"]
    assert [m["name"] for m in doc["config"]["models"]] == ["resnet18", "resnet20"]
    rows = {(r["model_label"], r["backend"], r["timing"]): r for r in doc["results"]}
    assert set(rows) == {(m, b, t) for m in labels for b, t in
                         (("torch", "e2e"), ("onnxruntime", "e2e"), ("openvino", "e2e"),
                          ("openvino", "throughput"))}
    for label in labels:
        eager, ort = rows[(label, "torch", "e2e")], rows[(label, "onnxruntime", "e2e")]
        assert eager["input_shape"][1:] == ort["input_shape"][1:]  # the artifact's own model
        assert ort["speedup_vs_torch"] == pytest.approx(eager["p50_ms"] / ort["p50_ms"])
        assert ort["speedup_vs_torch_rounds"] is not None
        ov = rows[(label, "openvino", "e2e")]
        assert ov["effective_precision"] == "f32"
        assert ov["runtime_facts"]["effective_precision"] == "f32"
        assert ov["format"] == "onnx" and ov["artifact"].endswith("model.onnx")
        tput = rows[(label, "openvino", "throughput")]
        assert tput["throughput_ips"] > 0 and tput["speedup_vs_torch"] is None  # never mixed up
        assert tput["throughput_mode"]["requests"] >= 1 and tput["rounds"] == 2
    md = (out / "bench.md").read_text()
    assert md.startswith("# resnet-bench: 2 models")
    assert md.index(f"## {labels[0]}") < md.index(f"## {labels[1]}")
    assert "| openvino fp32 (resnet20-onnx) | fp32 | f32 | throughput |" in md
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_int8_rows_beside_fp32_on_onnx_runtime_and_openvino(tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed")
    if matrix.int8_quantizer_unavailable():
        pytest.skip(matrix.int8_quantizer_unavailable())
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        *FAST, "--model", "resnet20", "--backends", "onnxruntime,openvino", "--precision",
        "fp32,int8", "--no-throughput", "--batch-sizes", "2", "--cache-dir", str(tmp_path),
        "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "bench.json").read_text())
    rows = {(r["backend"], r["precision"]): r for r in doc["results"]}
    assert set(rows) == {(b, p) for b in ("onnxruntime", "openvino") for p in ("fp32", "int8")}
    for backend in ("onnxruntime", "openvino"):
        int8 = rows[(backend, "int8")]
        assert "speed row" in int8["note"] and int8["int8"]["int8_method"] == "minmax"
        assert int8["model_label"] == rows[(backend, "fp32")]["model_label"]
    assert rows[("openvino", "int8")]["effective_precision"].endswith("(convolutions: u8)")
    assert rows[("openvino", "fp32")]["effective_precision"] == "f32"
    assert "speed row" in (out / "bench.md").read_text()
    assert len(list(tmp_path.glob("resnet20-*-int8-*.onnx"))) == 1  # quantized once, cached


def test_an_fp32_artifact_also_runs_at_bf16_on_openvino_when_asked(two_models, monkeypatch):
    root, _ = two_models
    monkeypatch.setattr(matrix, "_unavailable", _openvino(None))
    monkeypatch.setattr(cpu_features, "native_bf16", lambda *a: True)
    cases = matrix.build(matrix.Request(SPEC, "cpu", ["openvino"], ["fp32", "bf16"],
                                                    artifacts=root))
    candidates, skipped = cases.candidates, cases.skipped
    assert sorted((c.precision, c.spec.name) for c in candidates) == [
        ("bf16", "resnet18"), ("bf16", "resnet20"), ("fp32", "resnet18"), ("fp32", "resnet20")]
    monkeypatch.setattr(cpu_features, "native_bf16", lambda *a: False)
    cases = matrix.build(matrix.Request(SPEC, "cpu", ["openvino"], ["fp32", "bf16"],
                                                    artifacts=root))
    candidates, skipped = cases.candidates, cases.skipped
    assert {c.precision for c in candidates} == {"fp32"}
    assert all("no native BF16" in s.reason for s in skipped if s.precision == "bf16")
