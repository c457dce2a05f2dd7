"""ONNX Runtime as a runtime: an ONNX file (or a session, or a callable that makes one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BackendUnavailable
from .base import InputContract, Runner, RunTarget

#: --ort-opt-level names -> onnxruntime.GraphOptimizationLevel members. "all" adds the layout
#: optimisations (NCHWc blocked convolutions on x86), which is where most CPU speed comes from.
ORT_OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def missing_provider(providers: list[str]) -> str | None:
    """Why these execution providers cannot run here (None: they can): the one provider check."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    have = ort.get_available_providers()
    missing = [p for p in providers if p not in have]
    if not missing:
        return None
    return f"{missing[0]} is not in this onnxruntime build (available: {', '.join(have)})"


Session = Any  # onnxruntime.InferenceSession
SessionSource = str | Path | Session | Callable[[], Session]


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime with the given execution providers.

    ``model`` is an ONNX file, an ``InferenceSession``, or a callable that makes one (built at
    :meth:`activate`), as Polygraphy's runners take loaders. From a file, the session is made with
    the given threads, graph optimisation level and session config entries.
    """

    backend = "onnxruntime"

    def __init__(self, model: SessionSource, providers: list[str] | None = None,
                 threads: int | None = None, precision: str = "fp32", *,
                 optimization_level: str = "all", session_config: dict[str, str] | None = None,
                 contract: InputContract | None = None):
        providers = providers or ["CPUExecutionProvider"]
        if optimization_level not in ORT_OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization_level must be one of {list(ORT_OPTIMIZATION_LEVELS)}, "
                             f"got {optimization_level!r}")
        device = "cpu" if providers[0] == "CPUExecutionProvider" else "cuda"
        super().__init__(precision, device, contract)
        self.onnx_path = Path(model) if isinstance(model, (str, Path)) else None
        self._source = model
        self.providers = providers
        self.threads = threads
        self.optimization_level = optimization_level
        self.session_config = dict(session_config or {})
        self._session: Any = None
        reason = missing_provider(providers)
        if reason:
            raise BackendUnavailable(reason)

    @property
    def label(self) -> str:
        short = self.providers[0].replace("ExecutionProvider", "")
        return f"{self.backend}[{short},{self.precision}]"

    @property
    def arithmetic(self) -> str:
        # The CPU provider has no FP16 convolution kernels: it inserts casts and computes the
        # FP16 graph in FP32 (its optimised graph shows the Cast nodes).
        if self.precision == "fp16" and self.device == "cpu":
            return "fp32 (ONNX Runtime's CPU provider casts the fp16 graph to fp32)"
        return self.precision

    def _make_session(self) -> Session:
        import onnxruntime as ort

        if self.onnx_path is None:
            return self._source() if callable(self._source) else self._source
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, ORT_OPTIMIZATION_LEVELS[self.optimization_level])
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(str(self.onnx_path), options, providers=self.providers)

    def _activate(self) -> None:
        self._session = self._make_session()
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self._input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self._session.run(None, {self._input_name: batch.astype(self._input_dtype,
                                                                          copy=False)})
        return out.astype(np.float32, copy=False)


def build(target: RunTarget) -> OnnxRuntimeRunner:
    """The registry's factory: the file on the target's execution providers."""
    return OnnxRuntimeRunner(target.path, list(target.providers or ()) or None,
                             precision=target.precision, contract=target.contract,
                             **target.options)
