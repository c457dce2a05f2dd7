"""The Ray Serve applications: one per model at ``/v2/models/<name>``, one for ``/v2``.

Each model is its own Serve application whose FastAPI ingress *is* the model replica, so a
request goes proxy -> replica with no second hop; Ray's proxy picks the longest route prefix, so
``/v2/models/<name>/...`` reaches the model and everything else under ``/v2`` (health, server
metadata, an unknown model) reaches the small root application. Dynamic batching is
``@serve.batch`` counting rows, not requests (``batch_size_fn``), so a batch never exceeds
``--max-batch`` images; the runner runs in a worker thread so the replica keeps reading requests
(and forming the next batch) while a batch computes.
"""


import asyncio
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException

from ..core.errors import UserError
from ..data import preprocess, read_image
from ..predict.predictor import Predictor, conversion, top_k
from .protocol import (
    HEADER_LENGTH,
    ModelSignature,
    ProtocolError,
    decode_infer,
    decompress,
    encode_infer,
)
from .stats import Stats

# No ``from __future__ import annotations`` here: FastAPI reads the route methods' annotations
# (``request: Request``) at runtime, after Ray Serve has rebuilt their signatures.

SERVER_NAME = "resnet-serve"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration", "model_repository",
              "classify"]


@dataclass(frozen=True)
class ModelOptions:
    """What one model's replicas are told (all picklable: Ray ships it to each replica)."""

    folder: str
    name: str
    runtime: str
    threads: int
    max_batch: int
    batch_wait_s: float
    config: dict[str, Any]  # Triton's model configuration, for the model_configuration route


def _error(exc: ProtocolError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


class _RootSlash:
    """``/v2/models/<name>`` (no trailing slash) is the metadata route itself, not a redirect:
    the application sees it as an empty path under its route prefix."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        root = scope.get("root_path")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = dict(scope, path=root + "/")
        await self.app(scope, receive, send)


def _protocol_errors(api: FastAPI) -> FastAPI:
    """FastAPI's own errors (405, 404, a bad query) in the protocol's ``{"error": ...}`` form;
    the application's own URL answers without a redirect."""
    api.add_middleware(_RootSlash)

    @api.exception_handler(HTTPException)
    async def _http(_req: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": str(exc.errors()[0].get("msg", exc))}, status_code=400)

    return api


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, inflated, refusing (413) one longer than ``limit`` before reading it
    all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(413, f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return decompress(b"".join(chunks), request.headers.get("content-encoding"), limit)


def read_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded image -> uint8 C x H x W through ``resnet-predict``'s own reader (EXIF
    orientation, 8-bit conversion, decompression bombs refused), which reads regular files
    only: the bytes go through a private temporary file, and errors name the upload."""
    with tempfile.TemporaryDirectory(prefix="resnet-serve-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        try:
            return read_image(path)
        except UserError as exc:
            raise ProtocolError(400, str(exc).replace(str(path), name)) from None


def _rows(items: list[np.ndarray]) -> int:
    return sum(len(x) for x in items)


model_api = _protocol_errors(FastAPI(title="resnet-serve model", openapi_url=None))


@serve.deployment
@serve.ingress(model_api)
class ModelServer:
    """One replica of one model: the artifact loaded as ``resnet-predict`` loads it."""

    def __init__(self, opts: ModelOptions):
        self.opts = opts
        # the same checks as load_artifact: sha256, gate passed, contract, engine vs GPU
        self.predictor = Predictor.load(opts.folder, opts.runtime, opts.threads)
        self.predictor.runner.activate()
        self.sig = ModelSignature.from_manifest(opts.name, self.predictor.manifest)
        self.limit = self.sig.body_limit()
        self.lock = threading.Lock()  # OpenVINO's infer request is not re-entrant
        self.stats = Stats(opts.name)
        self._batched.set_max_batch_size(opts.max_batch)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(opts.batch_wait_s)  # type: ignore[attr-defined]
        self._run(np.zeros((1, *self.sig.input.shape[1:]), dtype=np.float32))  # warm up
        self.stats = Stats(opts.name)  # count requests, not the warm-up

    def _run(self, x: np.ndarray) -> np.ndarray:
        started = time.perf_counter_ns()
        with self.lock:
            logits = self.predictor.logits(x, min(self.opts.max_batch, self.sig.max_batch))
        self.stats.batch(len(x), time.perf_counter_ns() - started)
        return logits

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002, batch_size_fn=_rows)
    async def _batched(self, items: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        x = np.concatenate(items) if len(items) > 1 else items[0]
        logits = await asyncio.to_thread(self._run, x)
        out, start = [], 0
        for item in items:
            out.append((logits[start:start + len(item)], len(x)))
            start += len(item)
        return out

    async def logits(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Logits for ``x``: batched with other requests when it fits a batch, else alone."""
        if len(x) > self.opts.max_batch:
            return await asyncio.to_thread(self._run, x), len(x)
        result: tuple[np.ndarray, int] = await self._batched(x)
        return result

    # -- the protocol ----------------------------------------------------------------------

    @model_api.get("/")
    @model_api.get("/versions/{version}")
    def metadata(self, version: str = "1") -> Response:
        if version != "1":
            return _error(ProtocolError(404, f"model {self.sig.name!r} has no version "
                                             f"{version!r} (it has 1)"))
        return JSONResponse(self.sig.metadata())

    @model_api.get("/ready")
    @model_api.get("/versions/{version}/ready")
    def ready(self, version: str = "1") -> Response:
        return Response(status_code=200 if version == "1" else 404)

    @model_api.get("/config")
    @model_api.get("/versions/{version}/config")
    def config(self, version: str = "1") -> Response:
        return JSONResponse(self.opts.config)

    @model_api.get("/stats")
    @model_api.get("/versions/{version}/stats")
    def statistics(self, version: str = "1") -> Response:
        return JSONResponse(self.stats.document(os.getpid()))

    @model_api.post("/infer")
    @model_api.post("/versions/{version}/infer")
    async def infer(self, request: Request, version: str = "1") -> Response:
        started = time.perf_counter_ns()
        try:
            if version != "1":
                raise ProtocolError(404, f"model {self.sig.name!r} has no version {version!r}")
            body = await read_body(request, self.limit)
            req = decode_infer(self.sig, body, request.headers.get(HEADER_LENGTH))
            logits, formed = await self.logits(req.inputs)
            payload, headers = encode_infer(self.sig, req, logits)
        except ProtocolError as exc:
            self.stats.failure(time.perf_counter_ns() - started)
            return _error(exc)
        except Exception as exc:  # the runtime's own failure: an error, never a dead replica
            self.stats.failure(time.perf_counter_ns() - started)
            return _error(ProtocolError(500, f"inference failed: {type(exc).__name__}: {exc}"))
        self.stats.success(len(req.inputs), time.perf_counter_ns() - started)
        headers["x-batch-size"] = str(formed)
        return Response(payload, headers=headers, media_type=headers.pop("content-type"))

    @model_api.post("/classify")
    async def classify(self, request: Request, top_k_: int = 5) -> Response:
        """Image files (multipart ``files``/any file field, or one raw body) -> top-k labels,
        preprocessed exactly as ``resnet-predict`` does."""
        k = int(request.query_params.get("top_k", top_k_))
        try:
            files = await self._uploads(request)
            pixels = []
            for name, data in files:
                pixels.append((name, await asyncio.to_thread(read_upload, data, name)))
            x = np.concatenate([preprocess(p[None], self.predictor.spec) for _, p in pixels])
            logits = np.concatenate([(await self.logits(x[i:i + self.sig.max_batch]))[0]
                                     for i in range(0, len(x), self.sig.max_batch)])
        except ProtocolError as exc:
            return _error(exc)
        except Exception as exc:  # the runtime's own failure: an error, never a dead replica
            return _error(ProtocolError(500, f"inference failed: {type(exc).__name__}: {exc}"))
        tops = top_k(logits, self.sig.class_names, k)
        return JSONResponse({"model_name": self.sig.name, "results": [
            {"file": name, "top": [p.to_dict() for p in top],
             "converted": conversion(px.shape[0], self.predictor.spec.in_chans)}
            for (name, px), top in zip(pixels, tops)]})

    async def _uploads(self, request: Request) -> list[tuple[str, bytes]]:
        limit = max(self.limit, 64 << 20)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return [("body", await read_body(request, limit))]
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(413, f"body of {declared} bytes exceeds the limit of {limit}")
        try:
            form = await request.form(max_files=self.sig.max_batch * 4)
        except Exception as exc:
            raise ProtocolError(400, f"not a multipart form: {exc}") from None
        files = [(getattr(v, "filename", None) or k, await v.read())
                 for k, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise ProtocolError(400, "the form holds no file")
        return files

    def check_health(self) -> None:
        """Ray's health probe: a replica whose runner broke is replaced."""
        if self.predictor.runner is None:
            raise RuntimeError("runner gone")


root_api = _protocol_errors(FastAPI(title="resnet-serve", openapi_url=None))


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(root_api)
class Root:
    """``/v2``: server metadata, liveness, readiness (every model's application running) and
    the protocol's answer for a model that is not served."""

    def __init__(self, models: list[str], version: str):
        self.models = models
        self.version = version

    @root_api.get("/")
    def server_metadata(self) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": self.version,
                             "extensions": EXTENSIONS})

    @root_api.get("/health/live")
    def live(self) -> Response:
        return Response(status_code=200)

    async def _states(self) -> dict[str, str]:
        status = await asyncio.to_thread(serve.status)
        return {name: str(getattr(status.applications.get(name), "status", "NOT_FOUND"))
                for name in self.models}

    @root_api.get("/health/ready")
    async def ready(self) -> Response:
        states = await self._states()
        ok = all(s.endswith("RUNNING") for s in states.values())
        return Response(status_code=200 if ok else 503)

    @root_api.post("/repository/index")
    async def index(self) -> Response:
        states = await self._states()
        return JSONResponse([{"name": n, "version": "1",
                              "state": "READY" if s.endswith("RUNNING") else "UNAVAILABLE"}
                             for n, s in states.items()])

    @root_api.api_route("/models/{name}", methods=["GET", "POST"])
    @root_api.api_route("/models/{name}/{rest:path}", methods=["GET", "POST"])
    def unknown(self, name: str, rest: str = "") -> Response:
        return _error(ProtocolError(404, f"unknown model {name!r}; serving: "
                                         f"{', '.join(self.models)}"))


def scaling(replicas: int, autoscale: tuple[int, int] | None, max_batch: int) -> dict[str, Any]:
    """A fixed replica count, or Ray Serve's autoscaling between ``autoscale``'s bounds: a
    replica is added while each holds more than a full batch of requests on average (they
    batch, so a few in flight are not yet a queue)."""
    if autoscale is None:
        return {"num_replicas": replicas}
    low, high = autoscale
    return {"autoscaling_config": {"min_replicas": low, "initial_replicas": low,
                                   "max_replicas": high,
                                   "target_ongoing_requests": max(2, max_batch)}}


def model_app(opts: ModelOptions, replicas: int, cpus_per_replica: float,
              autoscale: tuple[int, int] | None = None) -> Any:
    """The bound application for one model; ``max_ongoing_requests`` lets a batch fill (Ray's
    default of 5 would cap every batch at 5 requests)."""
    return ModelServer.options(  # type: ignore[attr-defined]
        name="model", **scaling(replicas, autoscale, opts.max_batch),
        max_ongoing_requests=max(16, 2 * opts.max_batch),
        ray_actor_options={"num_cpus": cpus_per_replica,
                           "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(opts.threads)}}},
        graceful_shutdown_timeout_s=10, health_check_period_s=2, health_check_timeout_s=30,
    ).bind(opts)


def root_app(models: list[str], version: str) -> Any:
    return Root.options(name="root").bind(models, version)  # type: ignore[attr-defined]


def folder_of(path: str | Path) -> str:
    """Replicas may run in another working directory: give them an absolute path."""
    return str(Path(path).resolve())


__all__ = ["ModelOptions", "ModelServer", "Root", "folder_of", "model_app", "read_body",
           "root_app", "scaling"]
