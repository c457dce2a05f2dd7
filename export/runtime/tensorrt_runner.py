"""TensorRT as a runtime, kept thin: what this machine has, whether an engine fits it, and the
runner that runs a serialized engine (building engines is the exporter's job:
:mod:`export.convert.tensorrt_build`).

Everything that does not need TensorRT itself (what is missing, whether a recorded engine fits
this machine) is plain Python and unit-tested without a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import BackendUnavailable, EngineIncompatible, UserError
from ..core.manifest import Manifest
from .base import InputContract, Runner, RunTarget

MIN_TENSORRT_MAJOR = 10


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
    """The CUDA device this process works on (the current one, which need not be device 0)."""
    if not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    return GpuInfo(torch.cuda.get_device_name(device), f"{major}.{minor}")


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


def check_engine_compatible(manifest: Manifest, trt_version: str | None,
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


# ---------------------------------------------------------------------------------------------
# Runner that runs
# ---------------------------------------------------------------------------------------------


class TensorRTRunner(Runner):
    """A serialized engine, run with ``execute_async_v3`` on torch CUDA buffers.

    ``engine`` is the engine file or a callable that returns its bytes (read at activate).
    Refuses, at construction, an engine whose manifest names another TensorRT version or GPU.
    The engine runs on its own stream, ordered after the caller's stream (inputs it wrote) and
    before it (the caller's events and reads of the output), so CUDA events recorded on the
    caller's stream time the engine's work, not its launch.
    """

    backend = "tensorrt"

    def __init__(self, engine: str | Path | Callable[[], bytes], manifest: Manifest,
                 check_compatibility: bool = True):
        self.trt, self.gpu = require_tensorrt("running a TensorRT engine")
        super().__init__(manifest["precision"], "cuda", InputContract.from_manifest(manifest))
        if check_compatibility:
            check_engine_compatible(manifest, str(self.trt.__version__), self.gpu)
        self.engine_path: Path | None = None
        self._read_engine: Callable[[], bytes]
        if isinstance(engine, (str, Path)):
            self.engine_path = Path(engine)
            self._read_engine = self.engine_path.read_bytes
        else:
            self._read_engine = engine
        self.name = (self.engine_path.name if self.engine_path
                     else manifest.get("artifact", "engine"))
        self.input_name = manifest["inputs"][0]["name"]
        self.output_name = manifest["outputs"][0]["name"]
        self._num_classes = manifest["model"].get("num_classes")
        self._dtypes = (manifest["inputs"][0].get("dtype"), manifest["outputs"][0].get("dtype"))
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
        self._engine = self._runtime.deserialize_cuda_engine(self._read_engine())
        if self._engine is None:
            raise UserError(f"TensorRT could not deserialize {self.name}")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        for name in (self.input_name, self.output_name):
            if name not in names:
                raise UserError(f"{self.name} has no tensor {name!r} (has {names})")
        if self._engine.get_tensor_mode(self.input_name) != trt.TensorIOMode.INPUT:
            raise UserError(f"{self.input_name} is not an input of {self.name}")
        self._in_dtype = self._torch_dtype(self.input_name)
        self._out_dtype = self._torch_dtype(self.output_name)
        self._check_bindings()
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()

    def _check_bindings(self) -> None:
        """The engine's own bindings against the manifest: C, H, W, the number of classes and
        the dtypes; an edited manifest is refused, not run."""
        in_shape = tuple(self._engine.get_tensor_shape(self.input_name))
        out_shape = tuple(self._engine.get_tensor_shape(self.output_name))
        chw = self.contract.chw if self.contract is not None else None
        names = {torch.float32: "float32", torch.float16: "float16"}
        dtypes = (names[self._in_dtype], names[self._out_dtype])
        problems = []
        if chw is not None and tuple(in_shape[1:]) != tuple(chw):
            problems.append(f"input {in_shape[1:]} vs the manifest's {chw}")
        if out_shape[-1] != self._num_classes:
            problems.append(f"{out_shape[-1]} outputs vs num_classes {self._num_classes}")
        if any(said is not None and said != have for said, have in zip(self._dtypes, dtypes)):
            problems.append(f"dtypes {dtypes} vs the manifest's {self._dtypes}")
        if problems:
            raise UserError(f"{self.name} does not match its manifest ({'; '.join(problems)}); "
                            "refused")

    def _deactivate(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
        torch.cuda.empty_cache()

    def _enqueue(self, x: torch.Tensor) -> torch.Tensor:
        """Queue one inference on the engine's stream, ordered between the caller's work.

        The engine stream first waits for the caller's stream (which wrote ``x``); the caller's
        stream then waits for the engine's, so an event recorded there after this call covers
        the engine's work; the output is marked as used on the caller's stream so the caching
        allocator does not hand its memory out while the caller may still read it.
        """
        caller = torch.cuda.current_stream()
        if not self._context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"TensorRT refused input shape {tuple(x.shape)} for "
                             f"{self.input_name}")
        self._stream.wait_stream(caller)
        with torch.cuda.stream(self._stream):
            out = torch.empty(tuple(self._context.get_tensor_shape(self.output_name)),
                              dtype=self._out_dtype, device="cuda")
            self._context.set_tensor_address(self.input_name, x.data_ptr())
            self._context.set_tensor_address(self.output_name, out.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.name}")
        caller.wait_stream(self._stream)
        out.record_stream(caller)
        return out

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch).to("cuda").to(self._in_dtype).contiguous()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        out = self._enqueue(self._to_device(batch)).float().cpu()  # .cpu() waits for the copy
        return out.numpy()

    def _compute_fn(self, batch: np.ndarray) -> Callable[[], Any] | None:
        x = self._to_device(batch)
        return lambda: self._enqueue(x)

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()


def build(target: RunTarget) -> TensorRTRunner:
    """The registry's factory: an engine runs only with its manifest (checked against here)."""
    if target.manifest is None:
        raise UserError("tensorrt runs engine artifacts: pass the artifact folder")
    return TensorRTRunner(target.path, target.manifest)
