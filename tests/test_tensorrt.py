"""TensorRT: the logic around it everywhere; the real build and run where TensorRT and a GPU are.

Nothing here imitates TensorRT. The tests in the first part exercise the decisions this project
makes about TensorRT (what is missing, whether an engine fits this machine, profile shapes,
workspace sizes) as plain Python; the marked tests at the end build and run real engines and
skip, saying why, where there is no TensorRT or no CUDA GPU.
"""

import json
import types

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from export.cli import main as export_cli
from export.convert.tensorrt_build import network_flags, parse_size, timing_cache_reusable
from export.core.errors import BackendUnavailable, EngineIncompatible, UserError
from export.core.models import ModelSpec
from export.core.shapes import BatchRange, check_batch
from export.runtime.tensorrt_runner import (
    GpuInfo,
    TensorRTRunner,
    check_engine_compatible,
    cuda_gpu,
    missing_prerequisites,
    require_tensorrt,
    tensorrt_version,
)

from cli_helpers import error_line, invoke

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
BUILT = {"artifact": "resnet50.engine", "versions": {"tensorrt": "10.9.0.34"},
         "gpu": H100.to_dict()}

HAVE_TRT = tensorrt_version() is not None
HAVE_GPU = cuda_gpu() is not None


# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------


def test_nothing_missing_with_tensorrt_10_or_11_and_a_gpu():
    assert missing_prerequisites("10.9.0.34", H100, "12.8") == []
    assert missing_prerequisites("11.1.0", H100, "13.0") == []


@pytest.mark.parametrize("trt,gpu,cuda,expected", [
    (None, H100, "12.8", ["TensorRT is not installed"]),
    ("8.6.1", H100, "12.1", ["TensorRT 8.6.1 is too old (need 10.x or 11.x)"]),
    ("10.9.0", None, None, ["no CUDA GPU is visible to PyTorch (this torch is a CPU-only build)"]),
    ("10.9.0", None, "12.8", ["torch (CUDA 12.8) sees no GPU"]),
    (None, None, None, ["TensorRT is not installed", "CPU-only build"]),
])
def test_missing_prerequisites_say_what_is_missing(trt, gpu, cuda, expected):
    missing = missing_prerequisites(trt, gpu, cuda)
    assert len(missing) == len(expected)
    for line, words in zip(missing, expected):
        assert words in line


@pytest.mark.skipif(HAVE_TRT and HAVE_GPU, reason="this machine has TensorRT and a GPU")
def test_require_tensorrt_is_one_line_naming_everything_missing():
    with pytest.raises(BackendUnavailable) as info:
        require_tensorrt()
    message = str(info.value)
    assert message.startswith("--fmt trt needs TensorRT and a CUDA GPU: ")
    assert "\n" not in message
    assert ("TensorRT is not installed" in message) == (not HAVE_TRT)
    assert ("no CUDA GPU" in message) == (not HAVE_GPU)


@pytest.mark.skipif(HAVE_TRT and HAVE_GPU, reason="this machine has TensorRT and a GPU")
def test_tensorrt_runner_refuses_to_start_without_tensorrt(tmp_path):
    with pytest.raises(BackendUnavailable, match="running a TensorRT engine needs TensorRT"):
        TensorRTRunner(tmp_path / "x.engine", {**BUILT, "precision": "fp16"})


# ---------------------------------------------------------------------------------------------
# Engine compatibility (the loader's refusal)
# ---------------------------------------------------------------------------------------------


def test_engine_on_the_machine_it_was_built_for_is_accepted():
    check_engine_compatible(BUILT, "10.9.0.34", H100)


@pytest.mark.parametrize("trt,gpu,words", [
    ("10.10.0.31", H100, "built with TensorRT 10.9.0.34, this is TensorRT 10.10.0.31"),
    ("11.0.0", H100, "this is TensorRT 11.0.0"),
    ("10.9.0.34", GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"),
     "built for NVIDIA H100 80GB HBM3 (compute capability 9.0), this GPU is NVIDIA "
     "A100-SXM4-80GB (compute capability 8.0)"),
    ("10.9.0.34", GpuInfo("NVIDIA H100 80GB HBM3", "9.1"), "compute capability 9.1"),
    ("10.9.0.34", GpuInfo("NVIDIA H100 PCIe", "9.0"), "this GPU is NVIDIA H100 PCIe"),
    (None, None, "TensorRT is not installed here; no CUDA GPU is visible here"),
])
def test_engine_for_another_tensorrt_or_gpu_is_refused_clearly(trt, gpu, words):
    with pytest.raises(EngineIncompatible) as info:
        check_engine_compatible(BUILT, trt, gpu)
    message = str(info.value)
    assert message.startswith("refusing engine resnet50.engine: ")
    assert words in message and message.endswith("rebuild it here with --fmt trt")
    assert "\n" not in message
    assert isinstance(info.value, UserError)  # so the CLI shows it as one line, exit 1


def test_timing_cache_is_reused_only_for_the_same_tensorrt_and_gpu():
    assert timing_cache_reusable(BUILT, "10.9.0.34", H100)
    assert not timing_cache_reusable(BUILT, "10.9.0.35", H100)
    assert not timing_cache_reusable(BUILT, "10.9.0.34", GpuInfo("NVIDIA L4", "8.9"))
    assert not timing_cache_reusable(None, "10.9.0.34", H100)


# ---------------------------------------------------------------------------------------------
# Build settings
# ---------------------------------------------------------------------------------------------


def test_profile_shapes_follow_the_batch_range_and_the_spec():
    spec = ModelSpec.create("resnet50", input_size=224)
    assert BatchRange(1, 8, 32).profile_shapes(spec) == ((1, 3, 224, 224), (8, 3, 224, 224),
                                                         (32, 3, 224, 224))
    gray = ModelSpec.create("resnet20", num_classes=10, in_chans=1)
    assert BatchRange.default_for(gray).profile_shapes(gray)[2] == (256, 1, 32, 32)


def test_batch_check_matches_the_profile():
    check_batch((32, 3, 224, 224), (3, 224, 224), BatchRange(1, 8, 32), "images")
    with pytest.raises(ValueError, match="batch size 33 is outside images's range"):
        check_batch((33, 3, 224, 224), (3, 224, 224), BatchRange(1, 8, 32), "images")


@pytest.mark.parametrize("text,size", [("4G", 4 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29),
                                       ("2048", 2 << 30), ("64mb", 64 << 20)])
def test_workspace_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "4X", "1M", "-1G"])
def test_bad_workspace_sizes(text):
    with pytest.raises(UserError):
        parse_size(text)


def test_network_flags_ask_for_strong_typing_where_the_enum_has_it():
    """The decision only (the enum is the one thing read from TensorRT): 10.x and 11.x enums
    carry STRONGLY_TYPED; a future enum without it means strong typing is the only mode."""
    ten = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(
        EXPLICIT_BATCH=0, STRONGLY_TYPED=1))
    eleven = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(
        STRONGLY_TYPED=0))
    later = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace())
    assert network_flags(ten) == 1 << 1  # never EXPLICIT_BATCH
    assert network_flags(eleven) == 1 << 0
    assert network_flags(later) == 0


# ---------------------------------------------------------------------------------------------
# Each command on an engine, as far as it goes without TensorRT or a GPU
# ---------------------------------------------------------------------------------------------
# An engine artifact folder as --fmt trt writes it (every file matches its sha256; the engine's
# bytes are not an engine): each path runs up to where it needs the hardware and stops there with
# one line, exit 1, no traceback.

no_trt_here = pytest.mark.skipif(HAVE_TRT and HAVE_GPU,
                                 reason="this machine has TensorRT and a GPU: the engine would run")


@no_trt_here
def test_verify_of_an_engine_checks_its_files_then_asks_for_tensorrt(engine_artifact):
    result = invoke(export_cli, ["verify", engine_artifact], catch_exceptions=True)
    line = error_line(result, 1)
    assert line.startswith("Error: verifying a TensorRT engine needs TensorRT and a CUDA GPU: ")
    assert f"{engine_artifact}: 2 files match their sha256" in result.stdout


@no_trt_here
def test_verify_of_a_tampered_engine_stops_at_its_sha256(engine_artifact):
    (engine_artifact / "resnet20.engine").write_bytes(b"another engine")
    result = invoke(export_cli, ["verify", engine_artifact], catch_exceptions=True)
    assert "sha256 mismatch" in error_line(result, 1)


@no_trt_here
def test_loading_an_engine_stops_at_the_tensorrt_runner(engine_artifact):
    from export.runtime import load_artifact

    with pytest.raises(BackendUnavailable) as info:
        load_artifact(engine_artifact)
    message = str(info.value)
    assert message.startswith("running a TensorRT engine needs TensorRT and a CUDA GPU: ")
    assert "\n" not in message


@no_trt_here
@pytest.mark.parametrize("runtime", [[], ["--runtime", "tensorrt"]])
def test_predict_with_an_engine_is_one_line(engine_artifact, tmp_path, runtime):
    from export.predict.cli import main as predict_cli

    image = tmp_path / "digit.png"
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(image)
    line = error_line(invoke(predict_cli, [engine_artifact, image, *runtime]), 1)
    assert line.startswith("Error: running a TensorRT engine needs TensorRT and a CUDA GPU: ")


@no_trt_here
def test_tensorrt_bench_row_on_an_engine_is_skipped_with_its_reason(engine_artifact, tmp_path):
    from bench.cli import main as bench_cli
    from export.runtime.registry import get_runtime

    result = invoke(bench_cli, ["--artifacts", engine_artifact.parent, "--backends", "tensorrt",
                                "--no-progress", "--out", tmp_path / "out"])
    reason = get_runtime("tensorrt").unavailable()
    assert reason and ("not installed" in reason or "GPU" in reason)
    assert error_line(result, 1) == f"Error: nothing to measure: {reason}"
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(HAVE_GPU, reason="this machine has a CUDA GPU")
def test_tensorrt_bench_on_cuda_without_a_gpu_is_one_line(engine_artifact, tmp_path):
    from bench.cli import main as bench_cli

    result = invoke(bench_cli, ["--artifacts", engine_artifact.parent, "--backends", "tensorrt",
                                "--device", "cuda", "--no-progress", "--out", tmp_path / "out"])
    assert error_line(result, 1).startswith("Error: --device cuda: no CUDA GPU is visible to "
                                            "PyTorch")
    assert not (tmp_path / "out").exists()


@no_trt_here
def test_building_an_engine_from_a_trained_checkpoint_asks_for_tensorrt_first(trained_project,
                                                                               tmp_path,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = trained_project / "artifacts/train/resnet20-digits/best.pt"
    result = invoke(export_cli, ["--checkpoint", checkpoint, "--fmt", "onnx", "--fmt", "trt"],
                    catch_exceptions=True)
    assert error_line(result, 1).startswith("Error: --fmt trt needs TensorRT and a CUDA GPU: ")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The real thing (TensorRT and a CUDA GPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_engine_builds_passes_the_gate_and_verifies(tmp_path, monkeypatch, precision):
    from export.runtime import load_artifact

    monkeypatch.chdir(tmp_path)
    args = ["--depth", "20", "--fmt", "trt", "--trt-precision", precision,
            "--batch-range", "1:4:8", "--workspace", "1G"]
    result = CliRunner().invoke(export_cli, args)
    assert result.exit_code == 0, result.output
    name = "resnet20-trt" if precision == "fp16" else "resnet20-trt-fp32"
    folder = tmp_path / "artifacts" / name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "trt" and manifest["precision"] == precision
    assert manifest["gpu"] == cuda_gpu().to_dict()
    assert manifest["versions"]["tensorrt"] == tensorrt_version()
    assert manifest["tensorrt"]["strongly_typed"] is True
    assert manifest["tensorrt"]["built_from"] == ("resnet20.fp16.onnx" if precision == "fp16"
                                                  else "resnet20.onnx")
    roles = {f["role"] for f in manifest["files"]}
    assert roles == {"artifact", "source-onnx", "timing-cache"}
    labels = [run["candidate"] for run in manifest["parity"]["runs"]]
    assert any(label.startswith("tensorrt[cuda") for label in labels)

    runner = load_artifact(folder)
    assert isinstance(runner, TensorRTRunner)
    with runner:
        out = runner.infer(np.zeros((3, 1, 32, 32), np.float32))
        assert out.shape == (3, 10) and np.isfinite(out).all()
        with pytest.raises(ValueError, match="outside images's range"):
            runner.infer(np.zeros((9, 1, 32, 32), np.float32))
    assert CliRunner().invoke(export_cli, ["verify", str(folder)]).exit_code == 0

    again = CliRunner().invoke(export_cli, args)  # rebuild: the timing cache is reused
    assert again.exit_code == 0, again.output
    rebuilt = json.loads((folder / "manifest.json").read_text())
    assert rebuilt["tensorrt"]["timing_cache_reused"] is True


@pytest.mark.tensorrt
@pytest.mark.cuda
def test_engine_from_another_gpu_is_refused_by_the_loader(tmp_path, monkeypatch):
    from export.runtime import load_artifact

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_cli, ["--depth", "20", "--fmt", "trt",
                                             "--batch-range", "1:2:4"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "artifacts" / "resnet20-trt"
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["gpu"] = {"name": "Some Other GPU", "compute_capability": "1.0"}
    path.write_text(json.dumps(manifest))
    with pytest.raises(EngineIncompatible, match="this GPU is"):
        load_artifact(folder)


@pytest.mark.cuda
def test_fp16_onnx_gate_also_runs_on_the_cuda_execution_provider(tmp_path, monkeypatch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDAExecutionProvider")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_cli, ["--depth", "20", "--fmt", "onnx-fp16",
                                             "--batch-range", "1:2:4"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime[CUDA,fp16]" in result.output
