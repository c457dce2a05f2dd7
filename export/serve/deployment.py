"""The Ray Serve engine's applications: one per model at ``/v2/models/<name>``, one for ``/v2``,
each serving the shared application of :mod:`.routes` (so a route is written once).

Each model is its own Serve application whose ingress *is* the model replica, so a request goes
proxy -> replica with no second hop; Ray's proxy picks the longest route prefix, so
``/v2/models/<name>/...`` reaches the model and everything else under ``/v2`` (health, server
metadata, an unknown model) reaches the small root application. A replica holds the same
:class:`~.batcher.LocalModel` as the single-machine engine (runner, asyncio batcher counting
images, bounded queue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from .batcher import BatchSettings
from .protocol import ModelSignature, ProtocolError
from .routes import AppInfo, build_app
from .worker import ModelEntry, load_model


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
    max_queue: int = 0  # images queued per replica before 503 (0: four batches)
    info: AppInfo = field(default_factory=lambda: AppInfo("ray", ""))

    def batch(self) -> BatchSettings:
        return BatchSettings(self.max_batch, self.batch_wait_s,
                             self.max_queue or 4 * self.max_batch)


def full_paths(app: Any) -> Any:
    """Ray mounts an application under its route prefix (``root_path``); the shared
    application routes full paths, so the prefix is put back into the path."""

    async def mounted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            root, path = scope.get("root_path", ""), scope["path"]
            if root and not path.startswith(root):
                path = root + path
            scope = dict(scope, root_path="", path=path, raw_path=path.encode())
        await app(scope, receive, send)

    return mounted


@serve.deployment
@serve.ingress()
class ModelServer:
    """One replica of one model: the artifact loaded as ``resnet-predict`` loads it."""

    def __init__(self, opts: ModelOptions):
        self.opts = opts
        # the same checks as load_artifact: sha256, gate passed, contract, engine vs GPU
        self.model = load_model(ModelEntry(opts.folder, opts.name, opts.runtime, opts.threads,
                                           opts.batch()))
        configs = dict(opts.info.configs, **{opts.name: opts.config})
        self.info = AppInfo("ray", opts.info.version, opts.info.limits, configs)

    def __serve_build_asgi_app__(self) -> Any:
        return full_paths(build_app({self.opts.name: self.model}, self.info))

    def check_health(self) -> None:
        """Ray's health probe: a replica whose runner broke is replaced."""
        if not self.model.ready():
            raise RuntimeError("runner gone")


class _Deployed:
    """A model as the root application sees it: its signature, and whether Ray Serve reports
    its application running (the model's own routes are answered by its replicas)."""

    def __init__(self, signature: ModelSignature):
        self._signature = signature

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def ready(self) -> bool:
        app = serve.status().applications.get(self._signature.name)
        return str(getattr(app, "status", "")).endswith("RUNNING")

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        raise ProtocolError(503, f"model {self._signature.name!r} is not running")


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Root:
    """``/v2``: server metadata, liveness, readiness (every model's application running) and
    the protocol's answer for a model that is not served."""

    def __init__(self, signatures: list[ModelSignature], info: AppInfo):
        self.models = {s.name: _Deployed(s) for s in signatures}
        self.info = info

    def __serve_build_asgi_app__(self) -> Any:
        return full_paths(build_app(self.models, self.info))


def scaling(replicas: int, autoscale: tuple[int, int] | None,
            max_batch: int) -> dict[str, Any]:
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
    default of 5 would cap every batch at 5 requests); ``max_queued_requests`` bounds what
    waits in front of the replicas (503 past it)."""
    return ModelServer.options(  # type: ignore[attr-defined]
        name="model", **scaling(replicas, autoscale, opts.max_batch),
        max_ongoing_requests=max(16, 2 * opts.max_batch),
        max_queued_requests=opts.batch().max_queue,
        ray_actor_options={"num_cpus": cpus_per_replica,
                           "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(opts.threads)}}},
        graceful_shutdown_timeout_s=10, health_check_period_s=2, health_check_timeout_s=30,
    ).bind(opts)


def root_app(signatures: list[ModelSignature], info: AppInfo) -> Any:
    return Root.options(name="root").bind(signatures, info)  # type: ignore[attr-defined]


def folder_of(path: str | Path) -> str:
    """Replicas may run in another working directory: give them an absolute path."""
    return str(Path(path).resolve())


__all__ = ["ModelOptions", "ModelServer", "Root", "folder_of", "full_paths", "model_app",
           "root_app", "scaling"]
