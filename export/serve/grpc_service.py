"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``) on grpc.aio,
written against :data:`~.served.Models` only, so any engine can serve it (the local engine
does, on ``--grpc-port``, beside its HTTP routes).

The service definition is the one ``tritonclient[grpc]`` ships (``service_pb2``,
``service_pb2_grpc``), so Triton's and KServe's gRPC clients work unchanged. Requests are checked
with the HTTP codec's own rules (:func:`~.protocol.check_input`, :func:`~.protocol.raw_input`):
inputs come as ``raw_input_contents`` or typed ``contents``; outputs always go back as
``raw_output_contents`` (the only place Triton's client reads them). A protocol error is a gRPC
status: INVALID_ARGUMENT (a 4xx), NOT_FOUND (404), UNAVAILABLE (queue full), RESOURCE_EXHAUSTED
(413; gRPC itself refuses a message over ``max_message_bytes`` with it, unread).
"""

from __future__ import annotations

import math
import time
import weakref
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ..core.errors import UserError
from .protocol import (
    NUMPY,
    ModelSignature,
    ProtocolError,
    check_finite,
    check_input,
    raw_input,
)
from .served import Models, Overloaded, ServedModel, infer_batched

EXTENSIONS = ["binary_tensor_data", "classify"]
#: typed ``contents`` field for each datatype (FP16 has none: raw contents only)
TYPED = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
         "INT32": "int_contents", "INT8": "int_contents", "UINT8": "uint_contents",
         "BOOL": "bool_contents"}
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
         503: grpc.StatusCode.UNAVAILABLE}
#: idle connections are closed after this long; a client reconnects transparently
IDLE_MS = 5 * 60 * 1000
#: calls in progress at once (each may hold a message of up to the limit); more are refused
MAX_CONCURRENT = 1024
_PORTS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def message_limit(models: Models) -> int:
    """The largest message worth reading: the biggest model's full batch of raw input (typed
    contents take as many bytes) plus 1 MiB for the rest of the request."""
    sizes = [m.signature.max_batch * m.signature.row_elements()
             * NUMPY[m.signature.input.datatype].itemsize for m in models.values()]
    return max(sizes, default=0) + (1 << 20)


def _tensor_meta(spec: Any) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype,
                                                   shape=list(spec.shape))


def decode_request(sig: ModelSignature, request: Any, allow_nonfinite: bool = False
                   ) -> np.ndarray:
    """A ``ModelInferRequest`` -> the input batch, by the HTTP codec's rules (NaN/Inf refused
    unless ``allow_nonfinite``, as for binary HTTP tensors)."""
    if len(request.inputs) != 1:
        names = sorted(i.name for i in request.inputs)
        raise ProtocolError(400, f"model {sig.name!r} takes one input {sig.input.name!r}, got "
                                 f"{names}")
    for out in request.outputs:
        if out.name != sig.output.name:
            raise ProtocolError(400, f"model {sig.name!r} has no output {out.name!r} (it has "
                                     f"{sig.output.name!r})")
    item = request.inputs[0]
    shape = check_input(sig, item.name, item.datatype, list(item.shape))
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise ProtocolError(400, f"{len(request.raw_input_contents)} raw_input_contents "
                                     "for one input")
        arr = raw_input(sig, shape, request.raw_input_contents[0], "raw_input_contents")
    else:
        field = TYPED.get(sig.input.datatype)
        values = getattr(item.contents, field) if field else []
        if len(values) != math.prod(shape):
            raise ProtocolError(400, f"input {sig.input.name!r}: {len(values)} values in "
                                     f"contents.{field or '(raw only for FP16)'} for shape "
                                     f"{list(shape)} ({math.prod(shape)} values)")
        arr = np.asarray(values, dtype=NUMPY[sig.input.datatype]).reshape(shape)
    if not allow_nonfinite:
        check_finite(sig, arr)
    return arr


def encode_response(sig: ModelSignature, request: Any, logits: np.ndarray, formed: int = 0
                    ) -> Any:
    """Logits -> a ``ModelInferResponse`` with the output in ``raw_output_contents``; the batch
    they were computed in as the ``batch_size`` parameter (HTTP's ``x-batch-size``)."""
    out = np.ascontiguousarray(logits, dtype=NUMPY[sig.output.datatype].newbyteorder("<"))
    tensor = pb.ModelInferResponse.InferOutputTensor(
        name=sig.output.name, datatype=sig.output.datatype, shape=list(out.shape))
    resp = pb.ModelInferResponse(model_name=sig.name, model_version="1", id=request.id,
                                 outputs=[tensor], raw_output_contents=[out.tobytes()])
    if formed:
        resp.parameters["batch_size"].int64_param = formed
    return resp


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs over a fixed set of models; unlisted RPCs answer UNIMPLEMENTED."""

    def __init__(self, models: Models, server_name: str, version: str,
                 allow_nonfinite: bool = False):
        self.models = models
        self.server_name = server_name
        self.version = version
        self.allow_nonfinite = allow_nonfinite

    def _model(self, name: str, version: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(404, f"unknown model {name!r}; serving: "
                                     f"{', '.join(self.models)}")
        if version not in ("", "1"):
            raise ProtocolError(404, f"model {name!r} has no version {version!r} (it has 1)")
        return model

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=all(m.ready() for m in self.models.values()))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name=self.server_name, version=self.version,
                                         extensions=EXTENSIONS)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            model = self._model(request.name, request.version)
        except ProtocolError as exc:
            return await _abort(context, exc)
        return pb.ModelReadyResponse(ready=model.ready())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            sig = self._model(request.name, request.version).signature
        except ProtocolError as exc:
            return await _abort(context, exc)
        return pb.ModelMetadataResponse(
            name=sig.name, versions=["1"], platform=sig.platform,
            inputs=[_tensor_meta(sig.input)], outputs=[_tensor_meta(sig.output)])

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        index = [pb.RepositoryIndexResponse.ModelIndex(
            name=name, version="1", state="READY" if model.ready() else "UNAVAILABLE")
            for name, model in self.models.items()]
        return pb.RepositoryIndexResponse(
            models=[m for m in index if m.state == "READY" or not request.ready])

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        started, stats = time.perf_counter_ns(), None
        try:
            model = self._model(request.model_name, request.model_version)
            stats = getattr(model, "stats", None)  # the local engine's statistics, as HTTP
            x = decode_request(model.signature, request, self.allow_nonfinite)
            logits, formed = await infer_batched(model, x)
            resp = encode_response(model.signature, request, logits, formed)
        except ProtocolError as exc:
            if stats is not None:
                stats.failure(time.perf_counter_ns() - started)
            return await _abort(context, exc)
        except Exception as exc:  # the runtime's own failure: an error, never a dead server
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"inference failed: {type(exc).__name__}: {exc}")
        if stats is not None:
            stats.success(len(x), time.perf_counter_ns() - started)
        return resp


async def _abort(context: Any, exc: ProtocolError) -> Any:
    """End the call with the status for ``exc`` (a full queue says when to retry)."""
    trailer = ((("retry-after", f"{exc.retry_after:g}"),) if isinstance(exc, Overloaded)
               else ())
    await context.abort(CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc), trailer)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc(models: Models, host: str, port: int, *, server_name: str, version: str,
                     allow_nonfinite: bool = False, max_message_bytes: int | None = None,
                     max_concurrent_rpcs: int | None = MAX_CONCURRENT) -> grpc.aio.Server:
    """Serve ``models`` on ``host:port`` (only that address; port 0: a free one, see
    :func:`bound_port`). A port already taken, by any program, is a :class:`UserError` naming
    it: port reuse is off, so two servers never share a port. Messages over
    ``max_message_bytes`` (default: :func:`message_limit`) and calls beyond
    ``max_concurrent_rpcs`` in progress are refused with RESOURCE_EXHAUSTED, unread;
    ``allow_nonfinite`` is the server's ``--allow-nonfinite``."""
    limit = max_message_bytes or message_limit(models)
    server = grpc.aio.server(maximum_concurrent_rpcs=max_concurrent_rpcs, options=[
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_connection_idle_ms", IDLE_MS),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceService(models, server_name, version, allow_nonfinite), server)
    address = _address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise UserError(f"gRPC port {address} is in use or cannot be bound (another server "
                        "there?); choose another --grpc-port")
    await server.start()
    _PORTS[server] = bound
    return server


def bound_port(server: grpc.aio.Server) -> int:
    """The port a server from :func:`start_grpc` listens on (the chosen one for port 0)."""
    return _PORTS[server]


async def stop_grpc(server: grpc.aio.Server, grace: float) -> None:
    """Stop accepting calls at once, let those already received finish for up to ``grace``
    seconds, then cancel what is left."""
    await server.stop(grace)


__all__ = ["InferenceService", "bound_port", "decode_request", "encode_response",
           "message_limit", "start_grpc", "stop_grpc"]
