"""One serving process of the single-machine engine: the models' runners, their batchers and the
shared application, built at the ASGI lifespan's startup and torn down at its shutdown.

:class:`WorkerApp` is picklable (only settings until it starts), so the same object serves in
the parent process (one replica) and in each spawned replica process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .batcher import BatchSettings, LocalModel
from .protocol import ModelSignature
from .routes import AppInfo, build_app

log = logging.getLogger("resnet-serve")


@dataclass(frozen=True)
class ModelEntry:
    """One model as every replica loads it."""

    folder: str
    name: str
    runtime: str
    threads: int
    batch: BatchSettings


@dataclass
class WorkerSettings:
    """Everything a replica process needs (picklable)."""

    models: list[ModelEntry]
    info: AppInfo
    grpc: tuple[str, int] | None = None  # (host, port) of the gRPC service, if asked for
    extra: dict[str, Any] = field(default_factory=dict)


def load_model(entry: ModelEntry) -> LocalModel:
    """The artifact loaded as ``resnet-predict`` loads it (sha256, gate, contract), warmed up."""
    from ..predict.predictor import Predictor

    predictor = Predictor.load(entry.folder, entry.runtime, entry.threads)
    options = getattr(predictor.runner, "session_config", None)
    if isinstance(options, dict):
        # ONNX Runtime's pool threads spin after every batch by default; in a server they would
        # take the cores from the event loop reading the next requests (and from other replicas)
        options.setdefault("session.intra_op.allow_spinning", "0")
    predictor.runner.activate()
    model = LocalModel(predictor, ModelSignature.from_manifest(entry.name, predictor.manifest),
                       entry.batch)
    model.warm_up()  # not counted in the statistics: it bypasses the batcher
    return model


class WorkerApp:
    """The ASGI application of one replica, built on the lifespan's startup."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.models: dict[str, LocalModel] = {}
        self.app: Any = None
        self.grpc: Any = None
        self.on_ready: Callable[[], None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def load(self) -> None:
        """Load every model (blocking); done before serving so ready means ready."""
        if not self.models:
            self.models = {e.name: load_model(e) for e in self.settings.models}

    async def startup(self) -> None:
        self.load()
        for model in self.models.values():
            model.batcher.start()
        self.app = build_app(self.models, self.settings.info)
        if self.settings.grpc is not None:
            await self._start_grpc(*self.settings.grpc)
        if self.on_ready is not None:
            self.on_ready()

    async def _start_grpc(self, host: str, port: int) -> None:
        """The protocol's gRPC service on the same models (runners and batchers) as HTTP."""
        from .grpc_service import start_grpc
        from .routes import SERVER_NAME

        info = self.settings.info
        self.grpc = await start_grpc(self.models, host, port, server_name=SERVER_NAME,
                                     version=info.version,
                                     allow_nonfinite=info.limits.allow_nonfinite)

    async def shutdown(self) -> None:
        if self.grpc is not None:
            from .grpc_service import stop_grpc

            await stop_grpc(self.grpc, 1.0)
        for model in self.models.values():
            await model.batcher.stop()
            model.predictor.close()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("could not start: %s: %s", type(exc).__name__, exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


__all__ = ["ModelEntry", "WorkerApp", "WorkerSettings", "load_model"]
