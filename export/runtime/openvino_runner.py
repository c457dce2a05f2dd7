"""OpenVINO (CPU plugin) as a runtime: an ONNX file compiled by ``openvino.Core`` at an explicit
precision, for synchronous latency and for benchmark_app-style throughput (its requests:
:meth:`OpenVINORunner.request_queue`; :mod:`bench.throughput` keeps them in flight and times them).

Precision is always explicit. On a CPU with AMX or AVX512-BF16 the CPU plugin runs FP32 models in
BF16 unless told otherwise (its ``INFERENCE_PRECISION_HINT`` defaults to bf16 there), so a runner
that left the default would report BF16 numbers under an FP32 label. Every compile here sets:

- ``INFERENCE_PRECISION_HINT``: f32 for "fp32" and "int8", bf16 for "bf16". For "int8" (a QDQ ONNX
  file) the quantized convolutions and matmuls run in INT8 whatever the hint says; the hint decides
  what the rest (the parts left in float) runs in, and that is f32.
- ``EXECUTION_MODE_HINT`` ACCURACY (``execution_mode=``): on its own it keeps the model's own
  precision; an explicit precision hint takes priority over it (checked: bf16 + ACCURACY runs
  bf16). What it adds: it also turns off the plugin's other accuracy-for-speed trades that
  PERFORMANCE allows silently (dynamic quantization of activations,
  ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` 32 -> 0; u8 KV caches). None of them applies to a ResNet
  today; ACCURACY keeps it that way, and costs no latency here (measured with resnet-bench).
- ``PERFORMANCE_HINT`` LATENCY (one stream) and ``INFERENCE_NUM_THREADS`` when threads are given.

After compiling, the precision that will actually run is read back from the compiled model
(``INFERENCE_PRECISION_HINT``) and checked against the request; the runtime model also says, per
compute layer, which precision and kernel ran (``runtimePrecision``, ``primitiveType`` such as
``brgconv_avx512_amx_bf16``): :meth:`OpenVINORunner.runtime_info` reports both.

BF16 on a CPU without native BF16 (no AVX512-BF16 or AMX-BF16; or the plugin does not list BF16 in
``OPTIMIZATION_CAPABILITIES``) raises :class:`BackendUnavailable`: it would be emulated, slower than
FP32 and not what a "bf16" row should mean.

Shapes: the exported files have a dynamic batch dimension. OpenVINO's CPU plugin runs a
dynamic-shape model 4-10% slower than the same model reshaped to a static shape (ResNet-50,
2 threads, measured with resnet-bench), and ``benchmark_app -shape`` measures the
static one. With ``static_shapes=True`` (the default) the runner compiles one static-shape model
per input shape on first sight of that shape, like the torch runner's one CUDA graph per shape:
the first call at a new batch size pays a compile (~0.3 s for ResNet-50), which any warm-up
absorbs; :meth:`prepare` does it ahead of time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core import cpu_features
from ..core.errors import BackendUnavailable
from .base import InputContract, RequestQueue, Runner, RunTarget

#: runner precision -> INFERENCE_PRECISION_HINT value
#: the runner's precision (an artifact's contract) -> the inference precision it is compiled at.
#: An FP16-typed ONNX runs at f32 on the CPU plugin (weights upcast): its arithmetic is FP32.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f32", "bf16": "bf16", "int8": "f32"}
EXECUTION_MODES = ("ACCURACY", "PERFORMANCE")
#: runtime-model layer types whose precision and kernel say what the model computed in
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
_LOW_PRECISION = ("u8", "i8", "u4", "i4")


def _import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"openvino is not installed ({exc}); pip install openvino") \
            from None
    return openvino


def _precision_name(value: Any) -> str:
    """An element type (``openvino.Type``) or its string as OpenVINO's short name: f32, bf16..."""
    name = getattr(value, "get_type_name", None)
    return name() if callable(name) else str(value)


def _is_quantized(model: Any) -> bool:
    """Whether a read ONNX model carries quantization: OpenVINO's ONNX reader turns
    QuantizeLinear into FakeQuantize and DequantizeLinear of int8 weights into a Convert of a
    low-precision constant."""
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant" and _precision_name(op.get_output_element_type(0)) in _LOW_PRECISION:
            return True
    return False


def _rt(op: Any, key: str) -> str | None:
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else None


@dataclass(frozen=True)
class OpenVINOSettings:
    """How an :class:`OpenVINORunner` compiles (module docstring says why each default).

    ``threads``: ``INFERENCE_NUM_THREADS`` (None: the plugin's choice, all usable cores).
    ``static_shapes``: one static-shape model per input shape (else the file's dynamic one).
    ``execution_mode``: one of :data:`EXECUTION_MODES`. ``performance_hint``: the synchronous
    compiles' (throughput windows use THROUGHPUT). ``config``: extra compile properties, applied
    last (the precision check still applies). ``ov_device``: only "CPU" is supported.
    """

    threads: int | None = None
    static_shapes: bool = True
    execution_mode: str = "ACCURACY"
    performance_hint: str = "LATENCY"
    config: dict[str, Any] = field(default_factory=dict)
    ov_device: str = "CPU"


class OpenVINORunner(Runner):
    """An ONNX file compiled by OpenVINO on the CPU at an explicit precision.

    ``precision``: "fp32", "bf16" or "int8" (a QDQ-quantized ONNX file; its float parts in f32).
    ``settings``: threads, shapes, hints and extra properties (:class:`OpenVINOSettings`).
    """

    backend = "openvino"
    throughput_mode = True

    def __init__(self, onnx_path: str | Path, precision: str = "fp32",
                 settings: OpenVINOSettings | None = None, *,
                 contract: InputContract | None = None):
        settings = settings if settings is not None else OpenVINOSettings()
        if precision not in INFERENCE_PRECISION:
            raise ValueError(f"precision must be one of {list(INFERENCE_PRECISION)}, "
                             f"got {precision!r}")
        if settings.execution_mode not in EXECUTION_MODES:
            raise ValueError(f"execution_mode must be one of {EXECUTION_MODES}, "
                             f"got {settings.execution_mode!r}")
        if settings.ov_device != "CPU":
            raise ValueError("only OpenVINO's CPU plugin is supported")
        super().__init__(precision, "cpu", contract)
        self.onnx_path = Path(onnx_path)
        self.settings = replace(settings, config=dict(settings.config or {}))
        ov_device = settings.ov_device
        ov = _import_openvino()
        self._ov = ov
        self._core = ov.Core()
        if ov_device not in self._core.available_devices:
            raise BackendUnavailable(f"openvino: no {ov_device} device "
                                     f"(available: {self._core.available_devices})")
        self.capabilities = list(self._core.get_property(ov_device, "OPTIMIZATION_CAPABILITIES"))
        if precision == "bf16":
            self._check_native_bf16()
        self._model: Any = None
        self._dynamic: Any = None  # compiled model with the file's own (dynamic) shapes
        # shape (None: the dynamic model) -> (compiled, request)
        self._compiled: dict[tuple[int, ...] | None, tuple[Any, Any]] = {}
        self._throughput_compiled: dict[tuple[int, ...], Any] = {}  # shape -> THROUGHPUT model
        self._last: Any = None  # the compiled model used last (runtime_info reads it)
        self._input_type: Any = None
        self.quantized: bool | None = None

    # -- configuration ---------------------------------------------------------------------

    @property
    def threads(self) -> int | None:
        """``INFERENCE_NUM_THREADS`` asked for (None: the plugin's choice), as other runners'."""
        return self.settings.threads

    @property
    def arithmetic(self) -> str:
        if self.precision == "fp16":
            return "fp32 (OpenVINO's CPU plugin computes the fp16 graph at f32)"
        if self.precision == "int8":
            return "int8 (quantized layers), fp32 (the rest)"
        return self.precision

    def _check_native_bf16(self) -> None:
        native = cpu_features.native_bf16()
        isa = cpu_features.summary()
        if native is False:
            raise BackendUnavailable(
                f"openvino bf16: this CPU ({isa}) has no native BF16 (neither AVX512-BF16 nor "
                "AMX-BF16); OpenVINO would emulate it, slower than FP32, so it is not run")
        if "BF16" not in self.capabilities:
            raise BackendUnavailable(
                f"openvino bf16: the CPU plugin does not list BF16 among its optimization "
                f"capabilities ({', '.join(self.capabilities)}) on this CPU ({isa})")

    def compile_config(self, performance_hint: str | None = None) -> dict[str, Any]:
        """The properties every compile of this runner gets (explicit precision and mode)."""
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[self.precision],
            "EXECUTION_MODE_HINT": self.settings.execution_mode,
            "PERFORMANCE_HINT": performance_hint or self.settings.performance_hint,
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        config.update(self.settings.config)
        return config

    def _compile(self, model: Any, performance_hint: str | None = None) -> Any:
        compiled = self._core.compile_model(model, self.settings.ov_device,
                                            self.compile_config(performance_hint))
        got = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        wanted = INFERENCE_PRECISION[self.precision]
        if got != wanted:  # never run another precision under this runner's label
            raise BackendUnavailable(f"openvino {self.precision}: asked for inference precision "
                                     f"{wanted}, the compiled model runs {got}")
        return compiled

    def _static_model(self, shape: tuple[int, ...]) -> Any:
        model = self._model.clone()
        model.reshape({model.inputs[0].get_any_name(): list(shape)})
        return model

    # -- Runner interface ------------------------------------------------------------------

    def _activate(self) -> None:
        model = self._core.read_model(str(self.onnx_path))
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"{self.onnx_path.name}: expected one input and one output, got "
                             f"{len(model.inputs)} and {len(model.outputs)}")
        self.quantized = _is_quantized(model)
        if self.precision == "int8" and not self.quantized:
            raise ValueError(f"{self.onnx_path.name} is not quantized (no QuantizeLinear/"
                             "DequantizeLinear pairs); int8 needs a QDQ ONNX file")
        if self.precision != "int8" and self.quantized:
            raise ValueError(f"{self.onnx_path.name} is a quantized (QDQ) model: its quantized "
                             f"layers would run in INT8, not {self.precision}; use precision "
                             "'int8'")
        self._model = model
        self._input_type = model.inputs[0].get_element_type()
        try:
            self._dynamic = self._compile(model)
        except RuntimeError as exc:
            if self.precision != "int8" or isinstance(exc, BackendUnavailable):
                raise
            raise RuntimeError(
                f"OpenVINO could not compile the QDQ model {self.onnx_path.name}: "
                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}. QDQ files "
                "with signed-int8 activations (onnxruntime's default) have been seen to fail "
                "here where u8 activations (QuantType.QUInt8) compile") from exc
        self._last = self._dynamic
        self._compiled = {}

    def _deactivate(self) -> None:
        self._compiled = {}
        self._throughput_compiled = {}
        self._dynamic = self._last = self._model = None

    def prepare(self, shapes: Iterable[tuple[int, ...]]) -> None:
        """Compile the static-shape models for these input shapes now (outside any timing)."""
        for shape in shapes:
            self._request_for(tuple(shape))

    def _request_for(self, shape: tuple[int, ...]) -> Any:
        key = shape if self.settings.static_shapes else None  # one request serves the dynamic model
        entry = self._compiled.get(key)
        if entry is None:
            compiled = (self._compile(self._static_model(shape)) if self.settings.static_shapes
                        else self._dynamic)
            entry = self._compiled[key] = (compiled, compiled.create_infer_request())
        self._last = entry[0]
        return entry[1]

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._input_type.to_dtype()) if self._input_type is not None \
            else np.dtype(np.float32)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        request = self._request_for(batch.shape)
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)  # e.g. FP16 I/O files
        request.infer({0: x}, share_inputs=True)
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    # -- what ran --------------------------------------------------------------------------

    @property
    def effective_precision(self) -> str | None:
        """The inference precision the compiled model reports (f32, bf16), None before activate."""
        if self._last is None:
            return None
        return _precision_name(self._last.get_property("INFERENCE_PRECISION_HINT"))

    def layer_precisions(self) -> dict[str, dict[str, int]]:
        """Per compute layer type, how many layers ran in each precision (runtime model)."""
        out: dict[str, Counter] = {}
        if self._last is None:
            return {}
        for op in self._last.get_runtime_model().get_ops():
            layer = _rt(op, "layerType")
            if layer in COMPUTE_LAYERS:
                out.setdefault(layer, Counter())[_rt(op, "runtimePrecision") or "?"] += 1
        return {k: dict(v) for k, v in out.items()}

    def kernels(self) -> dict[str, int]:
        """Kernels of the compute layers (``primitiveType``, e.g. ``brgconv_avx512_amx_bf16``);
        known once the model has run at least once."""
        if self._last is None:
            return {}
        return dict(Counter(_rt(op, "primitiveType") or "?"
                            for op in self._last.get_runtime_model().get_ops()
                            if _rt(op, "layerType") in COMPUTE_LAYERS))

    def runtime_info(self) -> dict[str, Any]:
        """JSON-ready: what was asked, what the compiled model says it runs, and on what CPU."""
        info: dict[str, Any] = {
            "backend": self.backend,
            "openvino": self._ov.get_version(),
            "device": self.settings.ov_device,
            "device_name": self._core.get_property(self.settings.ov_device,
                                                   "FULL_DEVICE_NAME"),
            "cpu": cpu_features.describe(),
            "optimization_capabilities": self.capabilities,
            "precision": self.precision,
            "requested": {k: str(v) for k, v in self.compile_config().items()},
            "static_shapes": self.settings.static_shapes,
            "compiled_shapes": [list(s) for s in self._compiled if s is not None],
        }
        if self._last is not None:
            c = self._last
            info.update({
                "effective_precision": self.effective_precision,
                "execution_mode": str(c.get_property("EXECUTION_MODE_HINT")).split(".")[-1],
                "performance_hint": str(c.get_property("PERFORMANCE_HINT")).split(".")[-1],
                "inference_num_threads": int(c.get_property("INFERENCE_NUM_THREADS")),
                "num_streams": int(c.get_property("NUM_STREAMS")),
                "optimal_number_of_infer_requests":
                    int(c.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")),
                "input_element_type": _precision_name(self._input_type),
                "quantized_model": self.quantized,
                "layer_precisions": self.layer_precisions(),
                "kernels": self.kernels(),
            })
        return info

    def executed_precision(self) -> str:
        """The compiled model's inference precision, and the convolutions' where they differ
        (an INT8 model: "f32 (convolutions: u8)")."""
        try:
            convs = sorted(self.layer_precisions().get("Convolution", {}))
        except Exception:  # noqa: BLE001 - a report detail, never a reason to fail a row
            convs = []
        hint = self.effective_precision
        return f"{hint} (convolutions: {', '.join(convs)})" if convs and convs != [hint] \
            else str(hint)

    def report_facts(self) -> dict[str, Any]:
        info = self.runtime_info()
        keep = ("openvino", "effective_precision", "execution_mode", "performance_hint",
                "inference_num_threads", "num_streams", "layer_precisions", "kernels",
                "requested")
        return {k: info.get(k) for k in keep}

    # -- throughput ------------------------------------------------------------------------

    def request_queue(self, batch: np.ndarray, requests: int | None = None) -> RequestQueue:
        """``benchmark_app -hint throughput``'s requests: an ``AsyncInferQueue`` of a separately
        compiled static-shape model (``PERFORMANCE_HINT`` THROUGHPUT, the runner's precision,
        mode and threads) with ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` requests (or ``requests``),
        each input set to ``batch`` once. The THROUGHPUT model is compiled on the first call for
        a shape and kept until :meth:`deactivate` (``compile_s`` is 0 afterwards), so windows
        can be repeated, e.g. interleaved with other measurements; :mod:`bench.throughput`
        keeps the requests in flight and times them."""
        self._require_active()
        ov = self._ov
        data = np.ascontiguousarray(batch, dtype=self.input_dtype)
        t0 = time.perf_counter()
        compiled = self._throughput_compiled.get(tuple(data.shape))
        if compiled is None:  # compiled once per shape: repeated windows (rounds) reuse it
            compiled = self._compile(self._static_model(data.shape),
                                     performance_hint="THROUGHPUT")
            self._throughput_compiled[tuple(data.shape)] = compiled
        compile_s = time.perf_counter() - t0
        nreq = int(requests or compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, nreq)
        for i in range(len(queue)):
            queue[i].set_input_tensor(ov.Tensor(data.copy()))
        return RequestQueue(queue, nreq, compile_s, {
            "num_streams": int(compiled.get_property("NUM_STREAMS")),
            "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "effective_precision": _precision_name(compiled.get_property(
                "INFERENCE_PRECISION_HINT"))})

def build(target: RunTarget) -> OpenVINORunner:
    """The registry's factory: the ONNX file at the target's explicit precision."""
    return OpenVINORunner(target.path, target.precision, OpenVINOSettings(**target.options),
                          contract=target.contract)
