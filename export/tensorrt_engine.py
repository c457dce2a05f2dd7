"""TensorRT, kept thin: prerequisites, the engine builder, the runner, and the compatibility check.

Supports TensorRT 10.x and 11.x with one code path:

- The network is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: precision comes
  from the ONNX graph's types. TensorRT 11 removed ``BuilderFlag.FP16`` (and all weak typing;
  the flag is still accepted there but ignored, as strong typing is always on); on 10.x we choose
  strong typing too rather than ``BuilderFlag.FP16``, so the engine computes in exactly the
  precision of the FP16 ONNX that the ONNX Runtime gate already judged, on both versions.
- ``EXPLICIT_BATCH`` is never set: it is ignored since 10.0 and gone from 11's enum.
- FP32 engines (``--trt-precision fp32``) are built from the FP32 ONNX with ``BuilderFlag.TF32``
  cleared, so they are true FP32 and meet the FP32 tolerance.
- A timing cache in the output folder is loaded before the build and saved after it; it is only
  reused when the previous manifest names the same TensorRT version and GPU.

Everything that does not need TensorRT itself (what is missing, whether a recorded engine fits
this machine, the profile shapes) is plain Python and unit-tested without a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import UserError
from .runners import BackendUnavailable, Runner
from .shapes import BatchRange, check_batch

MIN_TENSORRT_MAJOR = 10
DEFAULT_WORKSPACE = 4 << 30  # 4 GiB: ResNet-152 tactics need far less; a cap, not an allocation


class EngineIncompatible(UserError):
    """A serialized engine built for another TensorRT version or GPU."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.9"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "compute_capability": self.compute_capability}


# ---------------------------------------------------------------------------------------------
# What this machine has (no TensorRT needed to ask)
# ---------------------------------------------------------------------------------------------


def tensorrt_version() -> str | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def cuda_gpu() -> GpuInfo | None:
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return GpuInfo(torch.cuda.get_device_name(0), f"{major}.{minor}")


def missing_prerequisites(trt_version: str | None, gpu: GpuInfo | None,
                          torch_cuda: str | None) -> list[str]:
    """What stops a TensorRT build here, in words (empty: nothing)."""
    missing = []
    if trt_version is None:
        missing.append("TensorRT is not installed (the 'gpu' extra: pip install -e '.[gpu]')")
    elif _major(trt_version) < MIN_TENSORRT_MAJOR:
        missing.append(f"TensorRT {trt_version} is too old (need 10.x or 11.x)")
    if gpu is None:
        why = ("this torch is a CPU-only build" if torch_cuda is None
               else f"torch (CUDA {torch_cuda}) sees no GPU")
        missing.append(f"no CUDA GPU is visible to PyTorch ({why})")
    return missing


def require_tensorrt(what: str = "--fmt trt") -> tuple[Any, GpuInfo]:
    """The ``tensorrt`` module and the GPU, or ONE line saying everything that is missing."""
    version, gpu = tensorrt_version(), cuda_gpu()
    missing = missing_prerequisites(version, gpu, torch.version.cuda)
    if missing:
        raise BackendUnavailable(f"{what} needs TensorRT and a CUDA GPU: " + "; ".join(missing))
    import tensorrt as trt

    assert gpu is not None
    return trt, gpu


def _major(version: str) -> int:
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else 0


def check_engine_compatible(manifest: dict[str, Any], trt_version: str | None,
                            gpu: GpuInfo | None) -> None:
    """Refuse an engine unless this TensorRT version and GPU (name and compute capability) are
    the ones it was built with: serialized engines are not portable across either."""
    built_trt = manifest.get("versions", {}).get("tensorrt")
    built_gpu = manifest.get("gpu") or {}
    problems = []
    if trt_version is None:
        problems.append("TensorRT is not installed here")
    elif trt_version != built_trt:
        problems.append(f"it was built with TensorRT {built_trt}, this is TensorRT {trt_version}")
    if gpu is None:
        problems.append("no CUDA GPU is visible here")
    elif (gpu.name, gpu.compute_capability) != (built_gpu.get("name"),
                                                 built_gpu.get("compute_capability")):
        problems.append(f"it was built for {built_gpu.get('name')} (compute capability "
                        f"{built_gpu.get('compute_capability')}), this GPU is {gpu.name} "
                        f"(compute capability {gpu.compute_capability})")
    if problems:
        raise EngineIncompatible(f"refusing engine {manifest.get('artifact')}: "
                                 + "; ".join(problems) + "; rebuild it here with --fmt trt")


def parse_size(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1.5GiB"`` or a plain number of MiB -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise UserError(f"--workspace wants a size such as 4G or 512M, got {text!r}")
    value, unit = float(match.group(1)), match.group(2).upper()
    factor = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    size = int(value * factor)
    if size < (16 << 20):
        raise UserError(f"--workspace {text} is below 16 MiB; TensorRT would find few tactics")
    return size


def network_flags(trt: Any) -> int:
    """STRONGLY_TYPED where the enum has it (10.x needs it; 11.x accepts and ignores it)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def timing_cache_reusable(previous_manifest: dict[str, Any] | None, trt_version: str,
                          gpu: GpuInfo) -> bool:
    """A cache is only worth loading on the TensorRT version and GPU that wrote it."""
    if not previous_manifest:
        return False
    try:
        check_engine_compatible(previous_manifest, trt_version, gpu)
    except EngineIncompatible:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Loader that builds: ONNX file -> serialized engine
# ---------------------------------------------------------------------------------------------


def build_engine(onnx_path: Path, engine_path: Path, input_name: str,
                 profile_shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
                 precision: str, workspace: int, timing_cache: Path,
                 reuse_timing_cache: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Parse ``onnx_path`` into a strongly typed network and build ``engine_path``.

    Returns the build settings for the manifest's ``tensorrt`` section.
    """
    trt, _gpu = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"TensorRT's ONNX parser rejected {onnx_path.name}: "
                        + (errors[0].splitlines()[0] if errors else "no error reported"))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 would round FP32 convolutions to 10 bits

    profile = builder.create_optimization_profile()
    shape_min, shape_opt, shape_max = profile_shapes
    profile.set_shape(input_name, shape_min, shape_opt, shape_max)
    config.add_optimization_profile(profile)

    reuse = reuse_timing_cache and timing_cache.is_file()
    cache_bytes = timing_cache.read_bytes() if reuse else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):
        log("timing cache from the previous build does not fit; starting a new one")
        cache_bytes = b""
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)

    log(f"building TensorRT {trt.__version__} engine ({precision}, strongly typed, "
        f"profile {shape_min[0]}/{shape_opt[0]}/{shape_max[0]}); this takes a while")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT could not build the engine (its log above says why)")
    with open(engine_path, "wb") as fh:
        fh.write(memoryview(serialized))
    with open(timing_cache, "wb") as fh:
        fh.write(memoryview(config.get_timing_cache().serialize()))
    return {"version": trt.__version__, "strongly_typed": True,
            "network_flags": network_flags(trt), "tf32": precision != "fp32",
            "workspace_bytes": workspace, "built_from": onnx_path.name,
            "timing_cache": timing_cache.name, "timing_cache_reused": bool(cache_bytes),
            "profile": {"input": input_name, "min": list(shape_min), "opt": list(shape_opt),
                        "max": list(shape_max)}}


# ---------------------------------------------------------------------------------------------
# Runner that runs
# ---------------------------------------------------------------------------------------------


class TensorRTRunner(Runner):
    """A serialized engine, run with ``execute_async_v3`` on torch CUDA buffers.

    Refuses, at construction, an engine whose manifest names another TensorRT version or GPU.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, manifest: dict[str, Any],
                 check_compatibility: bool = True):
        super().__init__(manifest["precision"], "cuda")
        self.trt, self.gpu = require_tensorrt("running a TensorRT engine")
        if check_compatibility:
            check_engine_compatible(manifest, str(self.trt.__version__), self.gpu)
        self.engine_path = Path(engine_path)
        spec = manifest["model"]
        self.expected_chw = (spec["in_chans"], spec["input_size"], spec["input_size"])
        self.batch_range = BatchRange.from_dict(manifest["batch_range"])
        self.input_name = manifest["inputs"][0]["name"]
        self.output_name = manifest["outputs"][0]["name"]
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None

    def _torch_dtype(self, name: str) -> torch.dtype:
        dtype = self._engine.get_tensor_dtype(name)
        table = {self.trt.DataType.FLOAT: torch.float32, self.trt.DataType.HALF: torch.float16}
        if dtype not in table:
            raise UserError(f"engine tensor {name} has type {dtype}; expected FLOAT or HALF")
        return table[dtype]

    def _activate(self) -> None:
        trt = self.trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise UserError(f"TensorRT could not deserialize {self.engine_path.name}")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        for name in (self.input_name, self.output_name):
            if name not in names:
                raise UserError(f"{self.engine_path.name} has no tensor {name!r} (has {names})")
        if self._engine.get_tensor_mode(self.input_name) != trt.TensorIOMode.INPUT:
            raise UserError(f"{self.input_name} is not an input of {self.engine_path.name}")
        self._in_dtype = self._torch_dtype(self.input_name)
        self._out_dtype = self._torch_dtype(self.output_name)
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()

    def _deactivate(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
        torch.cuda.empty_cache()

    def _enqueue(self, x: torch.Tensor) -> torch.Tensor:
        """Set shape and addresses and queue one inference on the runner's stream."""
        if not self._context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"TensorRT refused input shape {tuple(x.shape)} for "
                             f"{self.input_name}")
        out = torch.empty(tuple(self._context.get_tensor_shape(self.output_name)),
                          dtype=self._out_dtype, device="cuda")
        self._context.set_tensor_address(self.input_name, x.data_ptr())
        self._context.set_tensor_address(self.output_name, out.data_ptr())
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.engine_path.name}")
        return out

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        check_batch(batch.shape, self.expected_chw, self.batch_range, self.input_name)
        with torch.cuda.stream(self._stream):
            return torch.from_numpy(batch).to("cuda").to(self._in_dtype).contiguous()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = self._to_device(batch)
        with torch.cuda.stream(self._stream):
            out = self._enqueue(x).float().cpu()
        self._stream.synchronize()
        return out.numpy()

    def compute_fn(self, batch: np.ndarray) -> Callable[[], Any] | None:
        if not self.active:
            raise RuntimeError(f"{self.label} used before activate()")
        x = self._to_device(np.ascontiguousarray(batch, dtype=np.float32))

        def run() -> Any:
            with torch.cuda.stream(self._stream):
                out = self._enqueue(x)
            # torch's side streams do not synchronise with the default stream: without this,
            # a CUDA event recorded on the caller's stream would not wait for the engine.
            torch.cuda.current_stream().wait_stream(self._stream)
            return out

        return run

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
