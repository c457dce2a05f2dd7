"""Runners: one small interface over every backend, shared by the parity gate and the benchmark.

A runner is built cheaply, does its expensive setup in :meth:`Runner.activate` (session creation,
compilation, engine deserialisation), answers :meth:`Runner.infer` with host (numpy) logits for a
host (numpy) batch, and frees what it holds in :meth:`Runner.deactivate`. Use it as a context
manager. The timed benchmark loop calls ``infer`` only; setup is timed apart from it.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

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
    """Eager PyTorch (optionally torch.compile), FP32 anywhere, FP16/BF16 on CUDA."""

    backend = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False):
        super().__init__(precision, device)
        if precision not in _TORCH_DTYPES:
            raise ValueError(f"precision must be one of {list(_TORCH_DTYPES)}, got {precision!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch on cuda: no CUDA device is visible to PyTorch")
        if precision != "fp32" and device != "cuda":
            raise BackendUnavailable(f"torch {precision}: reduced precision is measured on CUDA only")
        self.model = model
        self.channels_last = channels_last
        self.compile = compile
        if compile:
            self.backend = "torch-compile"
        self._module: Any = None

    def _activate(self) -> None:
        module = self.model.eval().to(self.device, _TORCH_DTYPES[self.precision])
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = torch.compile(module) if self.compile else module

    def _deactivate(self) -> None:
        self._module = None
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def to_device(self, batch: np.ndarray) -> torch.Tensor:
        """Host batch -> device tensor in the runner's dtype and memory format."""
        x = torch.from_numpy(batch).to(self.device, _TORCH_DTYPES[self.precision])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def forward_device(self, x: torch.Tensor) -> torch.Tensor:
        """Compute only: device tensor in, device logits out (no copies, no sync)."""
        return self._module(x)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        out = self.forward_device(self.to_device(batch))
        return out.float().cpu().numpy()


class OnnxRuntimeRunner(Runner):
    """An ONNX file in ONNX Runtime with the given execution providers."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: str | Path, providers: list[str] | None = None,
                 threads: int | None = None, precision: str = "fp32"):
        providers = providers or ["CPUExecutionProvider"]
        device = "cpu" if providers[0] == "CPUExecutionProvider" else "cuda"
        super().__init__(precision, device)
        self.onnx_path = Path(onnx_path)
        self.providers = providers
        self.threads = threads
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
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
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
