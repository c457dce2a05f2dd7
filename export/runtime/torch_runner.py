"""PyTorch as a runtime: eager or torch.compile, FP32 anywhere, FP16/BF16 on CUDA, BF16 autocast on
a CPU with native BF16, CUDA graphs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import cpu_features
from ..core.errors import BackendUnavailable
from .base import Runner

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    """Eager PyTorch (optionally torch.compile), FP32 anywhere, FP16/BF16 on CUDA.

    BF16 on the CPU runs under ``torch.autocast("cpu", dtype=torch.bfloat16)``: weights and
    inputs stay FP32, and autocast runs the convolutions and matmuls in BF16 (oneDNN's AVX512-BF16
    or AMX kernels), casting their inputs on the way in. Only where the CPU computes BF16 natively
    (:func:`export.core.cpu_features.native_bf16`): elsewhere it would be emulated, slower than
    FP32, and :class:`BackendUnavailable` says so. FP16 stays CUDA-only.

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
        self.autocast = precision == "bf16" and device == "cpu"
        if self.autocast:
            _check_cpu_bf16()
        elif precision != "fp32" and device != "cuda":
            raise BackendUnavailable(f"torch {precision} on cpu: FP16 is measured on CUDA only "
                                     "(BF16 on the CPU: autocast)")
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

    @property
    def _dtype(self) -> torch.dtype:
        """The dtype of weights and inputs: FP32 under CPU autocast (it casts per operation)."""
        return torch.float32 if self.autocast else _TORCH_DTYPES[self.precision]

    @property
    def arithmetic(self) -> str:
        if self.autocast:
            return "bf16 (autocast)"  # convolutions and matmuls in bf16, weights kept fp32
        return self.precision

    def _autocast(self) -> Any:
        if self.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _activate(self) -> None:
        module = self.model.eval().to(self.device, self._dtype)
        if self.channels_last:
            # Module.to takes memory_format (documented); torch's type stubs do not list it
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._module = module
        if self.compile:
            options: dict[str, Any] = {}
            if self.compile_mode is not None:
                options["mode"] = self.compile_mode
            if self.compile_dynamic is not None:
                options["dynamic"] = self.compile_dynamic
            self._module = torch.compile(module, **options)
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
        x = torch.from_numpy(batch).to(self.device).to(self._dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def _graph_for(self, x: torch.Tensor) -> _CapturedGraph:
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
        with self._autocast():
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

    def _compute_fn(self, batch: np.ndarray) -> Callable[[], Any] | None:
        if self.device != "cuda":
            return None
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


def _check_cpu_bf16() -> None:
    """Refuse BF16 on a CPU that would emulate it (slower than FP32: not a BF16 figure)."""
    native = cpu_features.native_bf16()
    if native:
        return
    isa = cpu_features.summary()
    if native is None:
        raise BackendUnavailable(f"torch bf16 on cpu: cannot tell whether this CPU ({isa}) has "
                                 "native BF16 (no /proc/cpuinfo flags); not run")
    raise BackendUnavailable(f"torch bf16 on cpu: this CPU ({isa}) has no native BF16 (neither "
                             "AVX512-BF16 nor AMX-BF16); autocast would emulate it, slower than "
                             "FP32, so it is not run")


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


