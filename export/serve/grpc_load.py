"""Load over the protocol's gRPC service, as :mod:`.loadgen` loads its HTTP routes: ``c`` calls in
flight (closed loop) until a call count or a time limit, after a short warm-up; every answer
checked (status, output shape, finite values). Returns the same :class:`~.loadgen.Step` rows,
so a bench can put a gRPC column beside the HTTP one.

It speaks with the protocol's own stubs (the ones ``tritonclient[grpc]`` ships) and one
prebuilt request, so the client costs little beside the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ..core.errors import UserError
from .loadgen import Step, closed_loop
from .protocol import NUMPY

#: the largest answer the client accepts
MAX_MESSAGE = 1 << 30


class GrpcClient:
    """One model behind a gRPC endpoint: a fixed request and the check of every answer."""

    def __init__(self, stub: Any, model: str, meta: Any, batch: int):
        self.stub = stub
        inp, out = meta.inputs[0], meta.outputs[0]
        dtype = NUMPY[inp.datatype].newbyteorder("<")
        x = np.random.default_rng(0).standard_normal((batch, *inp.shape[1:])).astype(dtype)
        self.request = pb.ModelInferRequest(
            model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
                name=inp.name, datatype=inp.datatype, shape=list(x.shape))],
            raw_input_contents=[x.tobytes()])
        self.out_dtype = NUMPY[out.datatype].newbyteorder("<")
        self.out_shape = [batch, *out.shape[1:]]

    async def one(self, step: Step) -> None:
        started = time.perf_counter()
        try:
            resp = await self.stub.ModelInfer(self.request, timeout=60)
            logits = np.frombuffer(resp.raw_output_contents[0], dtype=self.out_dtype)
        except grpc.aio.AioRpcError as exc:
            kind = f"grpc {exc.code().name}"
            step.errors[kind] = step.errors.get(kind, 0) + 1
            return
        except (IndexError, ValueError):
            logits = np.empty(0, dtype=self.out_dtype)
        if (list(resp.outputs[0].shape) if resp.outputs else []) != self.out_shape or \
                logits.size != int(np.prod(self.out_shape)) or not np.isfinite(logits).all():
            step.errors["wrong answer"] = step.errors.get("wrong answer", 0) + 1
            return
        step.latencies.append(time.perf_counter() - started)


async def _metadata(stub: Any, target: str, model: str) -> Any:
    try:
        return await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10)
    except grpc.aio.AioRpcError as exc:
        raise UserError(f"cannot read model {model!r} over gRPC at {target}: "
                        f"{exc.code().name} {exc.details()}") from None


async def grpc_step(target: str, model: str, level: int, count: int, duration: float,
                    batch: int = 1) -> Step:
    """``level`` calls in flight to ``target`` (``host:port``) until ``count`` calls or
    ``duration`` seconds, whichever comes first."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE),
               ("grpc.max_send_message_length", MAX_MESSAGE)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        client = GrpcClient(stub, model, await _metadata(stub, target, model), batch)
        step = Step(level)
        await closed_loop(client.one, step, count, duration)
    return step


class BenchCall:
    """One ModelInfer of a fixed batch per call, on one channel opened at the first call (inside
    the caller's event loop); returns the batch the server computed it in (its ``batch_size``
    parameter), for ``resnet-serve bench ARTIFACT --grpc``."""

    def __init__(self, target: str, model: str, x: np.ndarray):
        self.target = target
        self.model = model
        self.x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
        self.channel: Any = None
        self.stub: Any = None
        self.request: Any = None
        self.opening: asyncio.Lock | None = None

    async def _open(self) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                   ("grpc.max_send_message_length", MAX_MESSAGE)]
        self.channel = grpc.aio.insecure_channel(self.target, options=options)
        stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        inp = (await _metadata(stub, self.target, self.model)).inputs[0]
        self.request = pb.ModelInferRequest(
            model_name=self.model, inputs=[pb.ModelInferRequest.InferInputTensor(
                name=inp.name, datatype=inp.datatype, shape=list(self.x.shape))],
            raw_input_contents=[self.x.tobytes()])
        self.stub = stub  # last: concurrent first calls wait for the request to be built

    async def __call__(self) -> int:
        if self.stub is None:
            self.opening = self.opening or asyncio.Lock()
            async with self.opening:
                if self.stub is None:
                    await self._open()
        resp = await self.stub.ModelInfer(self.request, timeout=60)
        if not resp.raw_output_contents or not resp.outputs or \
                resp.outputs[0].shape[0] != len(self.x):
            raise ValueError("wrong answer: no output of the request's batch")
        return int(resp.parameters["batch_size"].int64_param) \
            if "batch_size" in resp.parameters else 0

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()


def bench_client(target: str, model: str, x: np.ndarray) -> BenchCall:
    """An async callable: one ModelInfer of ``x`` to ``model`` at ``target`` per call."""
    return BenchCall(target, model, x)


def grpc_sweep(target: str, model: str, levels: list[int], count: int, duration: float,
               batch: int = 1) -> list[dict[str, Any]]:
    """One row per concurrency level, as :func:`.loadgen.sweep` gives for HTTP."""
    return [asyncio.run(grpc_step(target, model, level, count, duration, batch)).row(batch)
            for level in levels]


__all__ = ["BenchCall", "GrpcClient", "bench_client", "grpc_step", "grpc_sweep"]
