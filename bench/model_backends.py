"""The benchmark's own backends: the ones that run a model built in this process (eager PyTorch,
torch.compile) and the one that runs nothing (the harness's own cost).

Every other backend is a runtime of the registry (:mod:`export.runtime.registry`), which runs
ONNX files and engines. These are not there because no artifact runs on them: they are what an
artifact is measured against. This table is the one place bench names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelBackend:
    """A backend that runs the model itself, or nothing."""

    name: str
    description: str
    #: devices whose default run (no --backends) measures it
    defaults: tuple[str, ...]
    #: device -> why a default run there leaves it out
    not_default: Mapping[str, str] = field(default_factory=dict)
    compile: bool = False  # torch.compile the model first
    harness: bool = False  # runs nothing: the harness's own cost (no MACs, no speed-up)


#: eager PyTorch FP32: the row every speed-up is measured against
EAGER = "torch"
#: does nothing and returns a preallocated output
HARNESS = "null"

MODEL_BACKENDS: dict[str, ModelBackend] = {b.name: b for b in (
    ModelBackend(EAGER, "eager PyTorch", ("cpu", "cuda")),
    ModelBackend("torch-compile", "torch.compile (inductor)", ("cuda",),
                 {"cpu": "left out of the default CPU run: compiling takes tens of seconds per "
                         "batch size on a few cores (add it with --backends torch-compile)"},
                 compile=True),
    ModelBackend(HARNESS, "nothing: measures the harness itself", (), harness=True),
)}


def is_model(name: str) -> bool:
    """Whether ``name`` runs a model built here (an eager baseline), not an artifact."""
    backend = MODEL_BACKENDS.get(name)
    return backend is not None and not backend.harness


__all__ = ["EAGER", "HARNESS", "MODEL_BACKENDS", "ModelBackend", "is_model"]
