"""The runtime registry: which runtimes exist, whether each can run here (and why not), what it
runs natively on this machine, and how to build its runner.

Every caller that needs to name or choose a runtime asks here: the parity gate (which runtimes
judge an artifact), :func:`~.loader.load_artifact` (which runtimes may run a format, and the
runner each one builds), ``resnet-predict --runtime``, ``resnet-bench --backends``, the
deployment planner (the candidate space and the reasons a candidate is pruned) and
``resnet-export triton-repo`` (each runtime's Triton backend). Adding a runtime is one entry
here (:func:`register`) and its runner module; no caller names a runtime. Probes are cheap
(imports and provider lists, no model is built) and cached per process; a runner factory
imports its runtime only when it builds a runner, so a missing runtime costs nothing.

A precision is *native* on a runtime when the runtime computes it in that arithmetic on this
machine. ONNX Runtime's CPU provider and OpenVINO's CPU plugin run an FP16-typed ONNX, but compute
it in FP32 (casts around FP32 kernels): they can *judge* an FP16 artifact, not speed it up. BF16 is
native on OpenVINO and torch only where the CPU has AVX512-BF16 or AMX-BF16; elsewhere it would be
emulated, slower than FP32, and is refused rather than measured.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core import cpu_features
from ..core.errors import UserError
from .base import Runner, RunTarget

#: the precision contracts an artifact can carry (fp32, fp16, int8) or be run at (bf16)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


#: what to run (file, precision, contract, options) -> a runner, not yet activated
RunnerFactory = Callable[[RunTarget], Runner]


def lazy_factory(module: str, name: str = "build") -> RunnerFactory:
    """A factory that imports ``module`` (relative to this package) only when it builds."""
    def factory(target: RunTarget) -> Runner:
        built: Runner = getattr(importlib.import_module(module, __package__), name)(target)
        return built
    return factory


def _no_factory(target: RunTarget) -> Runner:
    raise UserError(f"no runner factory for {target.path}")


@dataclass(frozen=True)
class RuntimeInfo:
    """One runtime: what it runs, on which device, and how to tell whether it can run here."""

    name: str
    description: str
    device: str  # "cpu" or "cuda"
    #: artifact formats it runs, directly or (``onnx_of_engine``) through an engine's source ONNX
    formats: tuple[str, ...]
    #: precisions it can run at all (native or not); an artifact's own precision is one of these
    precisions: tuple[str, ...]
    #: precisions it computes in their own arithmetic (before the machine's checks below)
    native: tuple[str, ...]
    #: INT8 QDQ flavours it compiles (``cpu``: u8 activations; ``tensorrt``: symmetric s8); the
    #: first is the one it runs fast (the others it can judge)
    int8_flavours: tuple[str, ...] = ()
    #: ONNX Runtime execution providers, in order (ONNX Runtime entries only)
    providers: tuple[str, ...] = ()
    #: runs the ONNX file an engine was built from (an engine folder keeps it beside the engine)
    onnx_of_engine: bool = False
    #: the parity gate judges artifacts on it (ONNX Runtime's TensorRT provider builds an engine
    #: of its own: the engine artifact is judged on TensorRT itself)
    judges: bool = True
    #: the runner options worth searching when choosing how to deploy on this runtime
    #: (:func:`setting_grid` resolves them against this machine)
    settings: tuple[Setting, ...] = ()
    #: builds its runner (:func:`lazy_factory`: the runtime is imported only then)
    factory: RunnerFactory = _no_factory
    #: the keyword options its runner takes (threads, ...): a caller passes only these
    options: tuple[str, ...] = ()
    #: its backend in a Triton model repository (None: Triton does not serve it)
    triton_backend: str | None = None
    #: extra entries of a Triton model configuration on that backend
    triton_config: Mapping[str, Any] = field(default_factory=dict)
    #: how its runner's label starts (the gate records labels as ``candidate``) [default: name[]
    label_prefix: str = ""
    _probe: Callable[[], str | None] = lambda: None

    def build(self, target: RunTarget) -> Runner:
        """Its runner for ``target`` (not yet activated); options it does not take are refused."""
        unknown = sorted(set(target.options) - set(self.options))
        if unknown:
            raise UserError(f"{self.name} takes no option {', '.join(unknown)} (it takes "
                            f"{', '.join(self.options) or 'none'})")
        return self.factory(dataclasses.replace(
            target, providers=target.providers or self.providers or None))

    def judged(self, run: Mapping[str, Any]) -> bool:
        """Whether a gate verdict (an entry of a manifest's ``parity.runs``) ran on it."""
        return str(run.get("candidate", "")).startswith(self.label_prefix or f"{self.name}[")

    def unavailable(self) -> str | None:
        """Why this runtime cannot run here (None: it can)."""
        return _probe_cached(self.name)

    @property
    def available(self) -> bool:
        return self.unavailable() is None

    def not_native(self, precision: str) -> str | None:
        """Why ``precision`` would not run natively here (None: it would)."""
        if precision not in self.precisions:
            return f"{self.name} does not run {precision}"
        if precision not in self.native:
            return (f"{self.name} computes {precision} in FP32 on this device (no {precision} "
                    "kernels): it can judge such an artifact, not speed it up")
        if precision == "bf16" and self.device == "cpu":
            return bf16_unavailable(self.name)
        return None

    def slow_flavour(self, flavour: str | None) -> str | None:
        """Why an INT8 artifact of ``flavour`` would not run fast here (None: it would)."""
        if flavour is None or not self.int8_flavours or flavour == self.int8_flavours[0]:
            return None
        return (f"{self.name} compiles the {flavour} INT8 flavour but runs its own "
                f"({self.int8_flavours[0]}) fast: it can judge such an artifact, not speed it up")

    def arithmetic(self, precision: str) -> str:
        """What the runtime computes in when it runs a ``precision`` artifact."""
        if precision in self.native:
            return precision
        return "fp32"

    def runs(self, fmt: str, int8_flavour: str | None = None) -> bool:
        """Whether this runtime runs artifacts of format ``fmt`` (and INT8 flavour)."""
        if fmt not in self.formats:
            return False
        return fmt != "onnx-int8" or int8_flavour is None or int8_flavour in self.int8_flavours


@dataclass(frozen=True)
class Setting:
    """One runner option (its keyword argument) and the values worth trying on a deployment.

    Values ``"cores"`` and ``"half-cores"`` are resolved against the cores this process may use;
    ``objective`` limits a setting to plans with that objective (None: every plan).
    """

    name: str
    values: tuple[Any, ...]
    why: str
    objective: str | None = None

    def resolve(self, cores: int) -> tuple[Any, ...]:
        named = {"cores": cores, "half-cores": max(1, cores // 2)}
        return tuple(dict.fromkeys(named.get(v, v) if isinstance(v, str) else v
                                   for v in self.values))


def setting_grid(info: RuntimeInfo, cores: int, objective: str = "latency"
                 ) -> list[dict[str, Any]]:
    """Every combination of ``info``'s settings for ``objective`` on ``cores`` cores."""
    chosen = [s for s in info.settings if s.objective in (None, objective)]
    values = [s.resolve(cores) for s in chosen]
    return [dict(zip((s.name for s in chosen), combo)) for combo in itertools.product(*values)]


def bf16_unavailable(runtime: str) -> str | None:
    """Why BF16 would not be native on this CPU (None: it is)."""
    native = cpu_features.native_bf16()
    if native:
        return None
    isa = cpu_features.summary()
    if native is None:
        return f"cannot tell whether this CPU ({isa}) has native BF16; {runtime} bf16 not run"
    return (f"this CPU ({isa}) has no native BF16 (neither AVX512-BF16 nor AMX-BF16); {runtime} "
            "would emulate it, slower than FP32, so it is not run")


def _module_missing(module: str, install: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed ({install})"
    return None


def _cuda_missing() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    return None


def _ort_probe(providers: tuple[str, ...], cuda: bool) -> Callable[[], str | None]:
    def probe() -> str | None:
        from .ort_runner import missing_provider

        return missing_provider(list(providers)) or (_cuda_missing() if cuda else None)
    return probe


def _tensorrt_probe() -> str | None:
    return (_module_missing("tensorrt", "pip install 'resnet-deploy[gpu]'")
            or _cuda_missing())


_ONNX = ("onnx", "onnx-fp16", "onnx-int8")
_CPU_ORT = ("CPUExecutionProvider",)
_CUDA_ORT = ("CUDAExecutionProvider", "CPUExecutionProvider")
_TRT_ORT = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

_ORT_OPTIONS = ("threads", "optimization_level", "session_config")
_OPENVINO_OPTIONS = ("threads", "static_shapes", "execution_mode", "performance_hint", "config")
_ORT_FACTORY = lazy_factory(".ort_runner")
_THREADS = Setting("threads", ("cores", "half-cores"),
                   "intra-op threads: all usable cores is fastest on a quiet machine, fewer "
                   "can win where other work shares the cores")
_ORT_CPU_SETTINGS = (
    _THREADS,
    Setting("optimization_level", ("all", "extended"),
            "'all' adds the NCHWc layout transforms (most of the CPU speed), which some "
            "graphs (QDQ) do not profit from"),
)
_OPENVINO_SETTINGS = (
    Setting("threads", ("cores",), "INFERENCE_NUM_THREADS: every usable core"),
    Setting("performance_hint", ("LATENCY", "THROUGHPUT"),
            "LATENCY: one stream with every thread; THROUGHPUT: the plugin picks streams "
            "(NUM_STREAMS) and keeps several requests in flight"),
)

#: every runtime, in the order a format's default is chosen (the first that runs it)
RUNTIMES: dict[str, RuntimeInfo] = {r.name: r for r in (
    RuntimeInfo("onnxruntime", "ONNX Runtime, CPU execution provider", "cpu",
                (*_ONNX, "trt"), ("fp32", "fp16", "int8"), ("fp32", "int8"),
                int8_flavours=("cpu", "tensorrt"), providers=_CPU_ORT, onnx_of_engine=True,
                settings=_ORT_CPU_SETTINGS, factory=_ORT_FACTORY, options=_ORT_OPTIONS,
                triton_backend="onnxruntime", label_prefix="onnxruntime[CPU,",
                _probe=_ort_probe(_CPU_ORT, cuda=False)),
    RuntimeInfo("onnxruntime-cuda", "ONNX Runtime, CUDA execution provider", "cuda",
                (*_ONNX, "trt"), ("fp32", "fp16", "int8"), ("fp32", "fp16", "int8"),
                int8_flavours=("cpu", "tensorrt"), providers=_CUDA_ORT, onnx_of_engine=True,
                factory=_ORT_FACTORY, options=_ORT_OPTIONS, triton_backend="onnxruntime",
                label_prefix="onnxruntime[CUDA,", _probe=_ort_probe(_CUDA_ORT, cuda=True)),
    RuntimeInfo("onnxruntime-trt", "ONNX Runtime, TensorRT execution provider", "cuda",
                _ONNX, ("fp32", "fp16", "int8"), ("fp32", "fp16", "int8"),
                int8_flavours=("tensorrt",), providers=_TRT_ORT, judges=False,
                factory=_ORT_FACTORY, options=_ORT_OPTIONS, triton_backend="onnxruntime",
                label_prefix="onnxruntime[Tensorrt,", _probe=_ort_probe(_TRT_ORT, cuda=True)),
    RuntimeInfo("openvino", "OpenVINO, CPU plugin (the openvino extra)", "cpu",
                (*_ONNX, "trt"), ("fp32", "fp16", "bf16", "int8"), ("fp32", "bf16", "int8"),
                int8_flavours=("cpu",), onnx_of_engine=True, settings=_OPENVINO_SETTINGS,
                factory=lazy_factory(".openvino_runner"), options=_OPENVINO_OPTIONS,
                triton_backend="openvino",
                # the backend reads model.xml unless told otherwise (it also runs ONNX files);
                # never let OpenVINO pick the precision (it runs BF16 by itself on AMX CPUs)
                triton_config={"default_model_filename": "model.onnx", "parameters": {
                    "INFERENCE_PRECISION_HINT": {"string_value": "f32"}}},
                _probe=lambda: _module_missing("openvino",
                                               "pip install 'resnet-deploy[openvino]'")),
    RuntimeInfo("tensorrt", "TensorRT, a serialized engine (the gpu extra)", "cuda",
                ("trt",), ("fp32", "fp16", "int8"), ("fp32", "fp16", "int8"),
                int8_flavours=("tensorrt",), factory=lazy_factory(".tensorrt_runner"),
                triton_backend="tensorrt", _probe=_tensorrt_probe),
)}

#: an artifact may also run at another precision than its contract where its gate judged that
#: contract: (runtime, artifact precision) -> the precisions it may run at
EXECUTION_PRECISIONS = {("openvino", "fp32"): ("fp32", "bf16")}


@functools.cache
def _probe_cached(name: str) -> str | None:
    return RUNTIMES[name]._probe()


def get_runtime(name: str) -> RuntimeInfo:
    """The registry entry for ``name``; an unknown name is one :class:`UserError` line."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise UserError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}") from None


def runtimes_for(fmt: str, int8_flavour: str | None = None, *, device: str | None = None,
                 direct: bool = False) -> list[RuntimeInfo]:
    """Runtimes that run format ``fmt`` (an engine's source ONNX counts unless ``direct``), in
    registry order, on ``device`` if given; available or not (ask each one)."""
    found = []
    for info in RUNTIMES.values():
        if device is not None and info.device != device:
            continue
        if fmt == "trt" and info.onnx_of_engine:
            if not direct:
                found.append(info)
            continue
        if info.runs(fmt, int8_flavour):
            found.append(info)
    return found


def default_runtime(fmt: str) -> str:
    """The runtime an artifact of ``fmt`` runs on when none is named: the first in registry
    order that runs the format itself (an engine on TensorRT, not its source ONNX)."""
    found = runtimes_for(fmt, direct=True)
    if not found:
        raise UserError(f"no runtime runs {fmt} artifacts")
    return found[0].name


def register(info: RuntimeInfo) -> RuntimeInfo:
    """Add (or replace) a runtime: every caller of the registry sees it from then on."""
    RUNTIMES[info.name] = info
    _probe_cached.cache_clear()
    return info


def triton_backends() -> tuple[str, ...]:
    """Every Triton backend a runtime of the registry maps to, in registry order."""
    return tuple(dict.fromkeys(r.triton_backend for r in RUNTIMES.values() if r.triton_backend))


def clear_probe_cache() -> None:
    """Forget the probes' answers (tests that change what is installed)."""
    _probe_cached.cache_clear()


#: how strict each precision contract is (the deployment planner's tie rule prefers the first)
STRICTNESS = ("fp32", "fp16", "bf16", "int8")

__all__ = ["EXECUTION_PRECISIONS", "PRECISIONS", "RUNTIMES", "STRICTNESS", "RunTarget",
           "RunnerFactory", "RuntimeInfo", "Setting", "bf16_unavailable", "clear_probe_cache",
           "default_runtime", "get_runtime", "lazy_factory", "register", "runtimes_for",
           "setting_grid", "triton_backends"]
