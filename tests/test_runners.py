"""Runners: the same logits from every backend, clear refusals, and (on a GPU) the CUDA paths."""

import numpy as np
import pytest
import torch

from export.core.errors import BackendUnavailable
from export.core.models import ModelSpec
from export.runtime.ort_runner import OnnxRuntimeRunner
from export.runtime.torch_runner import TorchRunner


def _model(name="resnet20", seed=0):
    torch.manual_seed(seed)
    return ModelSpec.create(name, num_classes=10).build().eval()


def _batch(n, size=32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def test_torch_runner_gives_the_models_logits_on_cpu():
    model = _model()
    x = _batch(3)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    with TorchRunner(model) as runner:
        out = runner.infer(x)
        assert runner.compute_fn(x) is None  # no separate device memory on the CPU
    assert out.dtype == np.float32 and out.shape == (3, 10)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_torch_runner_channels_last_matches_nchw_on_cpu():
    x = _batch(2)
    with TorchRunner(_model()) as a, TorchRunner(_model(), channels_last=True) as b:
        np.testing.assert_allclose(b.infer(x), a.infer(x), rtol=1e-4, atol=1e-4)


def test_runner_refuses_inference_before_activate():
    with pytest.raises(RuntimeError, match="before activate"):
        TorchRunner(_model()).infer(_batch(1))


@pytest.mark.parametrize("kwargs,message", [
    (dict(precision="fp16"), "CUDA only"),
    (dict(cuda_graphs=True), "CUDA graphs need a CUDA device"),
])
def test_torch_runner_refusals_on_cpu(kwargs, message):
    with pytest.raises(BackendUnavailable, match=message):
        TorchRunner(_model(), device="cpu", **kwargs)


def test_torch_bf16_on_cpu_is_autocast_where_the_cpu_has_native_bf16():
    from export.core import cpu_features

    if not cpu_features.native_bf16():
        pytest.skip(f"this CPU ({cpu_features.summary()}) has no native BF16")
    model, x = _model(), _batch(4)
    with TorchRunner(model) as fp32, TorchRunner(model, precision="bf16") as bf16:
        a, b = fp32.infer(x), bf16.infer(x)
        assert bf16.arithmetic == "bf16 (autocast)" and bf16.label == "torch[cpu,bf16]"
    assert b.dtype == np.float32 and next(model.parameters()).dtype == torch.float32
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.999 and not np.array_equal(a, b)  # BF16 arithmetic, close to FP32


def test_torch_bf16_on_cpu_without_native_bf16_is_refused(monkeypatch):
    from export.core import cpu_features

    model = _model()
    monkeypatch.setattr(cpu_features, "native_bf16", lambda *a: False)
    with pytest.raises(BackendUnavailable, match="no native BF16"):
        TorchRunner(model, precision="bf16")
    monkeypatch.setattr(cpu_features, "native_bf16", lambda *a: None)
    with pytest.raises(BackendUnavailable, match="cannot tell"):
        TorchRunner(model, precision="bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_torch_runner_on_cuda_without_a_gpu_says_so():
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        TorchRunner(_model(), device="cuda")


@pytest.mark.cuda
def test_torch_runner_rejects_a_compile_mode_that_contradicts_cuda_graphs():
    with pytest.raises(ValueError, match="reduce-overhead"):
        TorchRunner(_model(), device="cuda", compile=True, compile_mode="max-autotune",
                    cuda_graphs=True)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from bench.onnx_cache import cached_onnx

    spec = ModelSpec.create("resnet20", num_classes=10)
    path, info = cached_onnx(_model(), spec, seed=0, cache_dir=tmp_path_factory.mktemp("onnx"))
    assert not info["onnx_cached"] and info["export_s"] > 0
    return path


def test_onnxruntime_runner_matches_torch_and_applies_its_options(onnx_file):
    x = _batch(4)
    with TorchRunner(_model()) as ref:
        expected = ref.infer(x)
    runner = OnnxRuntimeRunner(onnx_file, threads=1, optimization_level="basic",
                               session_config={"session.intra_op.allow_spinning": "0"})
    with runner:
        np.testing.assert_allclose(runner.infer(x), expected, rtol=1e-3, atol=1e-4)
        options = runner._session.get_session_options()
        assert options.intra_op_num_threads == 1
        assert options.graph_optimization_level.name == "ORT_ENABLE_BASIC"
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert runner.compute_fn(x) is None  # end-to-end timing only


def test_onnx_cache_reuses_the_file(onnx_file):
    from bench.onnx_cache import cached_onnx

    spec = ModelSpec.create("resnet20", num_classes=10)
    path, info = cached_onnx(_model(), spec, seed=0, cache_dir=onnx_file.parent)
    assert path == onnx_file and info["onnx_cached"] and info["export_s"] == 0.0


def test_onnxruntime_runner_refusals(onnx_file):
    with pytest.raises(ValueError, match="optimization_level"):
        OnnxRuntimeRunner(onnx_file, optimization_level="turbo")
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has the CUDA provider")
    with pytest.raises(BackendUnavailable,
                       match="CUDAExecutionProvider is not in this onnxruntime build"):
        OnnxRuntimeRunner(onnx_file, ["CUDAExecutionProvider", "CPUExecutionProvider"])


# -- CUDA (run with: python3 -m pytest -m cuda) ---------------------------------------------


@pytest.mark.cuda
def test_cuda_fp16_logits_are_close_to_fp32():
    torch.manual_seed(0)
    model = ModelSpec.create("resnet18").build()
    x = _batch(4, size=224)
    with TorchRunner(model, device="cuda") as fp32:
        ref = fp32.infer(x)
    with TorchRunner(model, device="cuda", precision="fp16", channels_last=True) as fp16:
        out = fp16.infer(x)
    assert np.isfinite(out).all()
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.999
    np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max())


@pytest.mark.cuda
def test_cuda_graph_replay_gives_the_eager_output():
    x1, x2 = _batch(2, seed=3), _batch(5, seed=4)
    with TorchRunner(_model(), device="cuda") as eager:
        ref1, ref2 = eager.infer(x1), eager.infer(x2)
    with TorchRunner(_model(), device="cuda", cuda_graphs=True) as graphed:
        out1 = graphed.infer(x1)
        out2 = graphed.infer(x2)  # a second shape gets its own graph
        again = graphed.infer(x1)  # replays the first graph on new data in its static buffer
        assert set(graphed._graphs) == {(2, 3, 32, 32), (5, 3, 32, 32)}
        compute = graphed.compute_fn(x2)
        compute()
        torch.cuda.synchronize()
        on_device = graphed._graphs[(5, 3, 32, 32)].static_out.float().cpu().numpy()
    # same kernels, replayed: only library-internal choices (e.g. cuBLAS under capture) differ
    for out, ref in ((out1, ref1), (out2, ref2), (again, ref1), (on_device, ref2)):
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@pytest.mark.cuda
def test_cuda_compute_only_path_keeps_the_input_on_the_device():
    x = _batch(3)
    with TorchRunner(_model(), device="cuda") as runner:
        ref = runner.infer(x)
        compute = runner.compute_fn(x)
        out = compute()
        assert out.is_cuda
        np.testing.assert_allclose(out.float().cpu().numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_cuda_event_timer_times_inside_the_host_window():
    import time

    from bench.timing import CudaEventTimer, TimingConfig, measure

    a = torch.randn(2048, 2048, device="cuda")
    timer = CudaEventTimer()
    t0 = time.perf_counter()
    samples = measure(lambda: a @ a, TimingConfig(2, 0, 5, 0), timer=timer)
    host_s = time.perf_counter() - t0
    assert samples.timer == "cuda_event" and samples.iterations == 5
    assert (samples.latencies_s > 0).all()
    # each event pair is recorded inside the loop, so the events cannot add up to more time
    assert samples.latencies_s.sum() <= host_s


@pytest.mark.cuda
def test_cuda_compiled_reduce_overhead_gives_the_eager_output():
    x = _batch(2)
    with TorchRunner(_model(), device="cuda") as eager:
        ref = eager.infer(x)
    runner = TorchRunner(_model(), device="cuda", compile=True, compile_dynamic=False,
                         cuda_graphs=True)
    assert runner.compile_mode == "reduce-overhead"
    with runner:
        outs = [runner.infer(x) for _ in range(4)]  # warm-up, record, replays
    # inductor fuses the pointwise ops differently; FP32 convolutions may run as TF32 on both
    for out in outs:
        np.testing.assert_allclose(out, ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


@pytest.mark.cuda
def test_cuda_compiled_end_to_end_and_compute_only_share_one_compilation():
    """Both timing paths must feed the compiled module the same kind of tensor, or dynamo
    recompiles on every switch, hits its limit and silently runs eager."""
    import torch._dynamo

    x = _batch(2)
    torch._dynamo.reset()
    runner = TorchRunner(_model(), device="cuda", compile=True, compile_dynamic=False)
    with runner:
        runner.infer(x)  # compiles once
        compute = runner.compute_fn(x)
        with torch._dynamo.config.patch(error_on_recompile=True):
            compute()
            runner.infer(x)
        runner.synchronize()


@pytest.mark.slow
def test_compiled_runner_gives_the_eager_output_on_cpu():
    """torch.compile (default mode, static shapes) on the CPU: 10-30 s of compilation."""
    x = _batch(2)
    with TorchRunner(_model()) as eager:
        ref = eager.infer(x)
    runner = TorchRunner(_model(), compile=True, compile_dynamic=False)
    assert runner.backend == "torch-compile" and runner.compile_mode is None
    with runner:
        out = runner.infer(x)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
