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
from collections.abc import Callable
from dataclasses import dataclass
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


class Runner(abc.ABC):
    """activate, infer (or compute), deactivate; the contract is checked before every call."""

    #: short runtime name used in reports, e.g. "torch", "onnxruntime", "openvino", "tensorrt"
    backend: str = "?"
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
