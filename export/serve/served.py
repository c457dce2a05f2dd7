"""What a front end (HTTP routes, the gRPC service) needs of one served model, whatever engine
runs it: its protocol signature, whether it can answer now, and an awaitable inference.

Front ends are written against :class:`ServedModel` only, so a route or an RPC is written once
and served by the single-machine engine and by Ray Serve alike. Client mistakes are raised as
:class:`~.protocol.ProtocolError` (a 4xx), a full queue as :class:`Overloaded` (503 with
Retry-After on HTTP, UNAVAILABLE on gRPC).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from .protocol import ModelSignature, ProtocolError


class Overloaded(ProtocolError):
    """The model's queue is full: try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(503, message)
        self.retry_after = retry_after


class ServedModel(Protocol):
    """One model as the front ends see it."""

    @property
    def signature(self) -> ModelSignature:
        """Name, input/output tensors, batch range, class names (from the manifest)."""
        ...

    def ready(self) -> bool:
        """Whether a request sent now would be answered (a live runner behind it)."""
        ...

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (float32, N x classes) for an input batch already checked against the
        signature; raises :class:`Overloaded` when the queue is full."""
        ...


#: the models a server holds, by protocol name
Models = Mapping[str, ServedModel]


async def infer_batched(model: ServedModel, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Logits and the largest batch they were computed in, where the model reports it (the
    local engine's batcher); else the request's own size."""
    batched = getattr(model, "infer_batched", None)
    if batched is not None:
        result: tuple[np.ndarray, int] = await batched(x)
        return result
    return await model.infer(x), len(x)


__all__ = ["Models", "Overloaded", "ServedModel", "infer_batched"]
