"""The one application both engines serve: the Open Inference Protocol's routes (Triton's URLs)
and the image route, written once against :class:`~.served.ServedModel`.

A plain Starlette application (no request models, no dependency injection: the codec in
:mod:`.protocol` checks everything). Every answer that is not a tensor is JSON; every client
mistake is a 4xx with the protocol's ``{"error": ...}``; a full queue is 503 with
``Retry-After``; anything unexpected is a one-line 500, never a traceback to the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .protocol import HEADER_LENGTH, ProtocolError, decode_infer, encode_infer
from .served import Models, Overloaded, ServedModel, infer_batched
from .uploads import Limits, decode_images, read_body, read_files

SERVER_NAME = "resnet-serve"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration", "model_repository",
              "classify"]
log = logging.getLogger("resnet-serve")
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class AppInfo:
    """What the application says about itself and how it bounds requests."""

    engine: str  # "local" or "ray"
    version: str
    limits: Limits = field(default_factory=Limits)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # Triton model configs


def error(exc: ProtocolError) -> JSONResponse:
    headers = {}
    if isinstance(exc, Overloaded):
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    if exc.status in (408, 413):
        headers["connection"] = "close"  # the rest of the body is not read
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _version(request: Request) -> None:
    version = request.path_params.get("version", "1")
    if version != "1":
        raise ProtocolError(404, f"model {request.path_params['name']!r} has no version "
                                 f"{version!r} (it has 1)")


class Protocol:
    """The route handlers, bound to the models they serve."""

    def __init__(self, models: Models, info: AppInfo):
        self.models = models
        self.info = info

    def model(self, request: Request) -> ServedModel:
        name = request.path_params["name"]
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(404, f"unknown model {name!r:.80}; serving: "
                                     f"{', '.join(self.models)}")
        _version(request)
        return model

    async def server_metadata(self, _request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": self.info.version,
                             "extensions": EXTENSIONS, "engine": self.info.engine})

    async def live(self, _request: Request) -> Response:
        return Response(status_code=200)

    async def _ready(self) -> dict[str, bool]:
        states = await asyncio.gather(*(asyncio.to_thread(m.ready)
                                        for m in self.models.values()))
        return dict(zip(self.models, states))

    async def ready(self, _request: Request) -> Response:
        return Response(status_code=200 if all((await self._ready()).values()) else 503)

    async def index(self, _request: Request) -> Response:
        return JSONResponse([{"name": n, "version": "1", "state": "READY" if ok else
                              "UNAVAILABLE"} for n, ok in (await self._ready()).items()])

    async def metadata(self, request: Request) -> Response:
        return JSONResponse(self.model(request).signature.metadata())

    async def model_ready(self, request: Request) -> Response:
        model = self.model(request)
        return Response(status_code=200 if await asyncio.to_thread(model.ready) else 503)

    async def config(self, request: Request) -> Response:
        name = self.model(request).signature.name
        return JSONResponse(self.info.configs.get(name, {"name": name}))

    async def statistics(self, request: Request) -> Response:
        stats = getattr(self.model(request), "stats", None)
        if stats is None:
            raise ProtocolError(404, "statistics are kept by the model's replicas")
        return JSONResponse(stats.document(os.getpid()))

    async def infer(self, request: Request) -> Response:
        model = self.model(request)
        sig, stats = model.signature, getattr(model, "stats", None)
        started = time.perf_counter_ns()
        try:
            limit = sig.body_limit(binary=HEADER_LENGTH in request.headers)
            body = await read_body(request, limit, self.info.limits.request_timeout)
            req = decode_infer(sig, body, request.headers.get(HEADER_LENGTH),
                               self.info.limits.allow_nonfinite)
            logits, formed = await infer_batched(model, req.inputs)
            payload, headers = encode_infer(sig, req, logits)
        except ProtocolError:
            if stats is not None:
                stats.failure(time.perf_counter_ns() - started)
            raise
        if stats is not None:
            stats.success(len(req.inputs), time.perf_counter_ns() - started)
        headers["x-batch-size"] = str(formed)
        return Response(payload, headers=headers, media_type=headers.pop("content-type"))

    async def classify(self, request: Request) -> Response:
        """Image files (multipart ``files``/any file field, or one raw body) -> top-k labels,
        preprocessed exactly as ``resnet-predict`` does."""
        from ..data import preprocess
        from ..predict.predictor import conversion, top_k

        model = self.model(request)
        sig = model.signature
        k = _top_k(request.query_params.get("top_k", "5"), len(sig.class_names))
        spec = getattr(model, "spec", None)  # the preprocessing: where the runner is
        if spec is None:
            raise ProtocolError(404, "the classify route is served by the model's replicas")
        files = await read_files(request, self.info.limits, sig.max_batch * 4)
        prepared = await decode_images(files, self.info.limits, lambda px: (
            preprocess(px[None], spec), conversion(px.shape[0], spec.in_chans)))
        x = np.concatenate([p[0] for p in prepared])
        logits = np.concatenate([(await infer_batched(model, x[i:i + sig.max_batch]))[0]
                                 for i in range(0, len(x), sig.max_batch)])
        tops = top_k(logits, sig.class_names, k)
        return JSONResponse({"model_name": sig.name, "results": [
            {"file": name, "top": [p.to_dict() for p in top], "converted": conv}
            for (name, _), (_, conv), top in zip(files, prepared, tops)]})


def _top_k(value: str, classes: int) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 10_000:
        raise ProtocolError(400, f"top_k must be a whole number from 1, got {value!r:.40}")
    return min(int(value), classes)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


def _guarded(handler: Handler) -> Handler:
    """A client mistake -> its 4xx; the runtime's own failure -> one line in the log and a
    500, never a traceback and never a dead server."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except ProtocolError as exc:
            return error(exc)
        except Exception as exc:
            line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.error("%s %s failed: %s", request.method, request.url.path, line)
            return JSONResponse({"error": f"inference failed: {line}"}, status_code=500)

    return guarded


def build_app(models: Mapping[str, ServedModel], info: AppInfo) -> Starlette:
    """The application for ``models``, as served by either engine."""
    p = Protocol(models, info)
    base, version = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    table = [("/v2", p.server_metadata, "GET"), ("/v2/", p.server_metadata, "GET"),
             ("/v2/health/live", p.live, "GET"), ("/v2/health/ready", p.ready, "GET"),
             ("/v2/repository/index", p.index, "POST"),
             (f"{base}/classify", p.classify, "POST")]
    for prefix in (base, version):
        table += [(prefix, p.metadata, "GET"), (f"{prefix}/ready", p.model_ready, "GET"),
                  (f"{prefix}/config", p.config, "GET"), (f"{prefix}/stats", p.statistics, "GET"),
                  (f"{prefix}/infer", p.infer, "POST")]
    routes = [Route(path, _guarded(fn), methods=[method]) for path, fn, method in table]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


__all__ = ["AppInfo", "EXTENSIONS", "SERVER_NAME", "build_app", "error"]
