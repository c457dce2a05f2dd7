"""The runner interface every runtime implements, shared by the parity gate, the benchmark and
prediction (Polygraphy's shape: loaders build, runners run, a comparator judges).

A runner is built cheaply, does its expensive setup in :meth:`Runner.activate` (session creation,
compilation, engine deserialisation), answers :meth:`Runner.infer` with host (numpy) logits for a
host (numpy) batch, and frees what it holds in :meth:`Runner.deactivate`. Use it as a context
manager. The input contract (an artifact's C/H/W and batch range) is checked here, once, for
every runtime. Each runner says which clock times it (:attr:`Runner.timing`): work queued on a
CUDA device needs CUDA events, host-synchronous work a host clock.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.manifest import Manifest
from ..core.shapes import BatchRange, check_batch


@dataclass(frozen=True)
class InputContract:
    """What an artifact promises to take: (N, C, H, W) with N in its batch range."""

    name: str
    chw: tuple[int, int, int]
    batch: BatchRange

    def check(self, shape: tuple[int, ...]) -> None:
        check_batch(tuple(shape), self.chw, self.batch, self.name)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> InputContract:
        spec = manifest["model"]
        return cls(manifest["inputs"][0]["name"],
                   (int(spec["in_chans"]), int(spec["input_size"]), int(spec["input_size"])),
                   BatchRange.from_dict(manifest["batch_range"]))


@dataclass(frozen=True)
class RunTarget:
    """What a runtime's runner factory (:mod:`.registry`) builds a runner for: a file, the
    precision to run it at, and the artifact's promises where there is an artifact (an
    on-the-fly ONNX file has none)."""

    path: Path  # the ONNX file or the engine to run
    precision: str
    contract: InputContract | None = None  # the artifact's input contract
    manifest: Manifest | None = None  # the artifact's manifest (an engine checks it here)
    providers: tuple[str, ...] | None = None  # ONNX Runtime execution providers, in order
    options: Mapping[str, Any] = field(default_factory=dict)  # the runner's keyword options


@dataclass
class RequestQueue:
    """A runtime's own throughput mode: asynchronous requests of one batch to keep in flight.

    ``queue`` starts a request (``start_async(userdata=...)``), calls back when one completes
    (``set_callback(fn(request, userdata))``) and waits for all (``wait_all()``), as OpenVINO's
    ``AsyncInferQueue`` does; ``facts`` is what the compiled model says (streams, threads, ...).
    """

    queue: Any
    requests: int
    compile_s: float
    facts: dict[str, Any] = field(default_factory=dict)


class Runner(abc.ABC):
    """activate, infer (or compute), deactivate; the contract is checked before every call."""

    #: short runtime name used in reports, e.g. "torch", "onnxruntime", "openvino", "tensorrt"
    backend: str = "?"
    #: whether :meth:`request_queue` gives the runtime's own throughput mode
    throughput_mode: bool = False
    #: what loading re-checked on this machine (:mod:`.recheck`); None: nothing was due
    recheck: Any = None

    def __init__(self, precision: str = "fp32", device: str = "cpu",
                 contract: InputContract | None = None):
        self.precision = precision
        self.device = device
        self.contract = contract
        self.active = False

    @property
    def label(self) -> str:
        return f"{self.backend}[{self.device},{self.precision}]"

    @property
    def timing(self) -> str:
        """The clock that times this runner's work: "cuda_event" for anything on a CUDA device
        (its work is queued on a stream; a host clock would time the launch), else "host"."""
        return "cuda_event" if self.device == "cuda" else "host"

    @property
    def arithmetic(self) -> str:
        """The precision the maths actually runs in (a runtime may upcast: say so)."""
        return self.precision

    def executed_precision(self) -> str:
        """What the maths ran in, as the runtime reports it once it has run (a runtime that
        reads it back overrides this; by default :attr:`arithmetic`)."""
        return self.arithmetic

    def report_facts(self) -> dict[str, Any] | None:
        """What the runtime says it ran, JSON-ready, for a benchmark row (None: nothing beyond
        the row's own fields)."""
        return None

    def activate(self) -> None:
        if not self.active:
            self._activate()
            self.active = True

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Refuse a batch the artifact does not promise, with one clear ValueError."""
        if self.contract is not None:
            self.contract.check(tuple(shape))

    def _require_active(self) -> None:
        if not self.active:
            raise RuntimeError(f"{self.label} used before activate()")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (float32, host) for an NCHW float32 host batch."""
        self._require_active()
        self.check_input(np.shape(batch))
        return self._infer(np.ascontiguousarray(batch, dtype=np.float32))

    def compute_fn(self, batch: np.ndarray) -> Callable[[], Any] | None:
        """A zero-argument call that runs the model on a device-resident copy of ``batch``.

        For compute-only timing (no host<->device copies). ``None`` where the runtime has no
        separate device to keep data on, or does not expose it; the benchmark then reports
        end-to-end timing only.
        """
        self._require_active()
        self.check_input(np.shape(batch))
        return self._compute_fn(np.ascontiguousarray(batch, dtype=np.float32))

    def request_queue(self, batch: np.ndarray, requests: int | None = None) -> RequestQueue:
        """Asynchronous requests of ``batch`` to keep in flight (where :attr:`throughput_mode`)."""
        raise NotImplementedError(f"{self.label} has no throughput mode")

    def synchronize(self) -> None:
        """Wait for work the runner queued on its device (nothing to wait for on the host)."""

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def _activate(self) -> None:  # pragma: no cover - default does nothing
        pass

    def _deactivate(self) -> None:  # pragma: no cover - default does nothing
        pass

    def _compute_fn(self, batch: np.ndarray) -> Callable[[], Any] | None:
        return None

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        ...
