"""Runners: one small interface over every backend, shared by the parity gate and the benchmark.

A runner is built cheaply, does its expensive setup in :meth:`Runner.activate` (session creation,
compilation, engine deserialisation), answers :meth:`Runner.infer` with host (numpy) logits for a
host (numpy) batch, and frees what it holds in :meth:`Runner.deactivate`. Use it as a context
manager. The timed benchmark loop calls ``infer`` only; setup is timed apart from it.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine; the message says what is missing."""


class Runner(abc.ABC):
    """Polygraphy-style runner: activate, infer, deactivate."""

    #: short backend name used in reports, e.g. "torch", "onnxruntime", "tensorrt"
    backend: str = "?"

    def __init__(self, precision: str = "fp32", device: str = "cpu"):
        self.precision = precision
        self.device = device
        self.active = False

    @property
    def label(self) -> str:
        return f"{self.backend}[{self.device},{self.precision}]"

    def activate(self) -> None:
        if not self.active:
            self._activate()
            self.active = True

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (float32, host) for an NCHW float32 host batch."""
        if not self.active:
            raise RuntimeError(f"{self.label} used before activate()")
        return self._infer(np.ascontiguousarray(batch, dtype=np.float32))

    def compute_fn(self, batch: np.ndarray) -> Callable[[], Any] | None:
        """A zero-argument call that runs the model on a device-resident copy of ``batch``.

        For compute-only timing (no host<->device copies). ``None`` where the backend has no
        separate device to keep data on, or does not expose it; the benchmark then reports
        end-to-end timing only.
        """
        return None

    def synchronize(self) -> None:
        """Wait for work the runner queued on its device (nothing to wait for on the host)."""

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def _activate(self) -> None:  # pragma: no cover - default does nothing
        pass

    def _deactivate(self) -> None:  # pragma: no cover - default does nothing
        pass

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        ...


_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    """Eager PyTorch (optionally torch.compile), FP32 anywhere, FP16/BF16 on CUDA.

    ``cuda_graphs=True`` (CUDA only) replays the whole forward as one CUDA graph: eager models are
    captured with ``torch.cuda.CUDAGraph`` on static input/output buffers (one graph per input
    shape); compiled models use ``torch.compile(mode="reduce-overhead")``. With graphs, the tensor
    :meth:`forward_device` returns is a static buffer that the next call overwrites.
    """

    backend = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False, *,
                 compile_mode: str | None = None, compile_dynamic: bool | None = None,
                 cuda_graphs: bool = False):
        super().__init__(precision, device)
        if precision not in _TORCH_DTYPES:
            raise ValueError(f"precision must be one of {list(_TORCH_DTYPES)}, got {precision!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch on cuda: no CUDA device is visible to PyTorch")
        if precision != "fp32" and device != "cuda":
            raise BackendUnavailable(f"torch {precision}: reduced precision is measured on CUDA only")
        if cuda_graphs and device != "cuda":
            raise BackendUnavailable("CUDA graphs need a CUDA device (--device cuda)")
        if cuda_graphs and compile:
            if compile_mode not in (None, "reduce-overhead"):
                raise ValueError(f"CUDA graphs with torch.compile use mode='reduce-overhead', "
                                 f"not {compile_mode!r}")
            compile_mode = "reduce-overhead"
        self.model = model
        self.channels_last = channels_last
        self.compile = compile
        self.compile_mode = compile_mode
        self.compile_dynamic = compile_dynamic
        self.cuda_graphs = cuda_graphs
        if compile:
            self.backend = "torch-compile"
        self._module: Any = None
        self._graphs: dict[tuple[int, ...], _CapturedGraph] = {}

    @property
    def _manual_graphs(self) -> bool:
        return self.cuda_graphs and not self.compile

    def _activate(self) -> None:
        module = self.model.eval().to(self.device, _TORCH_DTYPES[self.precision])
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.compile:
            options: dict[str, Any] = {}
            if self.compile_mode is not None:
                options["mode"] = self.compile_mode
            if self.compile_dynamic is not None:
                options["dynamic"] = self.compile_dynamic
            module = torch.compile(module, **options)
        self._module = module
        self._graphs = {}

    def _deactivate(self) -> None:
        self._module = None
        self._graphs = {}
        if self.device == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def to_device(self, batch: np.ndarray) -> torch.Tensor:
        """Host batch -> device tensor in the runner's dtype and memory format.

        Copy first, cast on the device: a blocking host->device copy that also changes the dtype
        would do the conversion on the CPU, which costs more than the copy at large batches.
        Always an inference tensor: torch.compile guards on that, and a mix of inference and
        normal inputs (end-to-end vs compute-only timing) recompiles until its limit and then
        silently falls back to eager.
        """
        x = torch.from_numpy(batch).to(self.device).to(_TORCH_DTYPES[self.precision])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def _graph_for(self, x: torch.Tensor) -> "_CapturedGraph":
        graph = self._graphs.get(tuple(x.shape))
        if graph is None:
            graph = self._graphs[tuple(x.shape)] = _CapturedGraph(self._module, x)
        return graph

    @torch.inference_mode()
    def forward_device(self, x: torch.Tensor) -> torch.Tensor:
        """Compute only: device tensor in, device logits out (no copies, no sync)."""
        if self._manual_graphs:
            return self._graph_for(x).run(x)
        if self.cuda_graphs:  # compiled with mode="reduce-overhead": a new step, a new replay
            torch.compiler.cudagraph_mark_step_begin()
        return self._module(x)

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self._manual_graphs:
            graph = self._graphs.get(batch.shape) or self._graph_for(self.to_device(batch))
            # host->device copy (FP32), then the cast into the graph's static input on the device
            graph.static_in.copy_(torch.from_numpy(batch).to(self.device))
            graph.graph.replay()
            out = graph.static_out
        else:
            out = self.forward_device(self.to_device(batch))
        return out.float().cpu().numpy()

    def compute_fn(self, batch: np.ndarray) -> Callable[[], Any] | None:
        if self.device != "cuda":
            return None
        if not self.active:
            raise RuntimeError(f"{self.label} used before activate()")
        x = self.to_device(batch)
        if self._manual_graphs:
            graph = self._graph_for(x)
            with torch.inference_mode():
                graph.static_in.copy_(x)
            return graph.graph.replay
        return lambda: self.forward_device(x)

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


class _CapturedGraph:
    """One CUDA graph of a module's forward on static input/output buffers (one input shape)."""

    def __init__(self, module: nn.Module, example: torch.Tensor, warmup: int = 3):
        # Warm up on a side stream first (cuDNN picks its algorithms, allocations settle), as
        # torch.cuda.graph's documentation asks; then capture one forward.
        self.static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                module(self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = module(self.static_in)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if x.data_ptr() != self.static_in.data_ptr():
            self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out


#: --ort-opt-level names -> onnxruntime.GraphOptimizationLevel members. "all" adds the layout
#: optimisations (NCHWc blocked convolutions on x86), which is where most CPU speed comes from.
ORT_OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class OnnxRuntimeRunner(Runner):
    """An ONNX file in ONNX Runtime with the given execution providers."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: str | Path, providers: list[str] | None = None,
                 threads: int | None = None, precision: str = "fp32", *,
                 optimization_level: str = "all", session_config: dict[str, str] | None = None):
        providers = providers or ["CPUExecutionProvider"]
        if optimization_level not in ORT_OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization_level must be one of {list(ORT_OPTIMIZATION_LEVELS)}, "
                             f"got {optimization_level!r}")
        device = "cpu" if providers[0] == "CPUExecutionProvider" else "cuda"
        super().__init__(precision, device)
        self.onnx_path = Path(onnx_path)
        self.providers = providers
        self.threads = threads
        self.optimization_level = optimization_level
        self.session_config = dict(session_config or {})
        self._session: Any = None
        import onnxruntime as ort

        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime {missing[0]} is not available in this onnxruntime build "
                f"(available: {', '.join(ort.get_available_providers())})")

    @property
    def label(self) -> str:
        short = self.providers[0].replace("ExecutionProvider", "")
        return f"{self.backend}[{short},{self.precision}]"

    def _activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, ORT_OPTIMIZATION_LEVELS[self.optimization_level])
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        self._session = ort.InferenceSession(str(self.onnx_path), options,
                                             providers=self.providers)
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self._input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self._session.run(None, {self._input_name: batch.astype(self._input_dtype,
                                                                          copy=False)})
        return out.astype(np.float32, copy=False)
