"""Start, run and stop the service: check every artifact, share the cores among replicas, pick
the engine (single-machine by default, Ray Serve with ``--engine ray`` or ``--address``),
announce where it listens, and stop in order.

The artifacts are checked here first, in the calling process, exactly as the replicas will
check them (:meth:`Predictor.load`, i.e. :func:`export.runtime.load_artifact`: sha256 of every
file, gate passed, the runtime allowed by the contract), so a failed or foreign artifact is one
line before any engine starts.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.artifact import read_manifest
from ..core.errors import BadOption, UserError, first_line
from ..core.hardware import usable_cores
from ..predict.predictor import Predictor
from .uploads import MAX_IMAGE_PIXELS, Limits

Echo = Callable[[str], None]


@dataclass
class ServeConfig:
    """What ``resnet-serve`` was asked for (None: choose)."""

    artifacts: list[Path]
    names: list[str] = field(default_factory=list)
    runtime: str = "auto"
    replicas: int = 1
    threads: int | None = None
    max_batch: int | None = None
    batch_wait_ms: float = 0.0
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    metrics_port: int | None = None
    engine: str | None = None  # "local" or "ray"; None: ray with --address, else local
    grpc_port: int | None = None
    request_timeout: float = 5.0
    keep_alive: float = 5.0
    max_connections: int = 2048
    max_queue: int | None = None  # images per replica; None: four batches
    max_image_pixels: int = MAX_IMAGE_PIXELS
    drain_timeout: float = 10.0
    allow_nonfinite: bool = False
    verbose: bool = False
    autoscale: tuple[int, int] | None = None  # (min, max) replicas: Ray Serve's autoscaling

    def engine_name(self) -> str:
        return self.engine or ("ray" if self.address or self.autoscale else "local")

    def limits(self) -> Limits:
        return Limits(self.request_timeout, self.max_image_pixels, 4 * self.max_image_pixels,
                      allow_nonfinite=self.allow_nonfinite)


@dataclass(frozen=True)
class Checked:
    """One model as it will be served: its folder, name, manifest and batch bound."""

    folder: Path
    name: str
    manifest: Mapping[str, Any]
    max_batch: int


def check_models(cfg: ServeConfig) -> list[Checked]:
    """Check every artifact (as load_artifact does) and name it; bad options raise BadOption."""
    from ..convert.triton_repo import check_name, model_name

    if cfg.names and len(cfg.names) != len(cfg.artifacts):
        raise BadOption(f"--name given {len(cfg.names)} time(s) for {len(cfg.artifacts)} "
                        "artifact(s): give one per artifact, in order")
    checked = []
    for i, folder in enumerate(cfg.artifacts):
        manifest = read_manifest(folder)
        Predictor.load(folder, cfg.runtime, verify=True)  # the replicas' checks, up front
        name = check_name(cfg.names[i] if cfg.names else model_name(manifest))
        top = int(manifest["batch_range"]["max"])
        if cfg.max_batch is not None and cfg.max_batch > top:
            raise BadOption(f"--max-batch {cfg.max_batch} is above {folder}'s batch range "
                            f"{manifest['batch_range']['min']}..{top}")
        checked.append(Checked(folder.resolve(), name, manifest, cfg.max_batch or top))
    names = [c.name for c in checked]
    if len(set(names)) != len(names):
        raise BadOption(f"two artifacts would both be served as {names!r}; give --name for each")
    return checked


def size_threads(cfg: ServeConfig, models: int, cpus: int) -> tuple[int, float, str]:
    """(runner threads per replica, CPUs Ray reserves per replica, the sentence saying why).

    By default every replica of every model gets an equal share of the cores, so replicas x
    threads never exceeds them. Asked for more, the threads are honoured and Ray's reservation
    shrinks to a fair share so the replicas can still be placed (and the sentence says it
    oversubscribes)."""
    count = models * (cfg.autoscale[0] if cfg.autoscale else cfg.replicas)
    if cfg.threads is None:
        threads = max(1, cpus // count)
        why = (f"{count} replica(s) x {threads} thread(s) on {cpus} core(s) (threads default to "
               "an equal share)")
    else:
        threads = cfg.threads
        why = f"{count} replica(s) x {threads} thread(s) on {cpus} core(s)"
    reserve = float(threads)
    if count * threads > cpus:
        reserve = max(0.01, math.floor(cpus / count * 100) / 100)  # rounded up, they'd not fit
        why += (f": OVERSUBSCRIBED ({count * threads} threads); Ray reserves {reserve} CPU per "
                "replica")
    return threads, reserve, why


def _configs(checked: list[Checked]) -> dict[str, dict[str, Any]]:
    from ..convert.triton_repo import RepoOptions, model_config

    return {c.name: model_config(c.manifest, c.name, RepoOptions(kind="cpu")) for c in checked}


def _info(cfg: ServeConfig, checked: list[Checked]) -> Any:
    from .. import __version__
    from .routes import AppInfo

    return AppInfo(cfg.engine_name(), __version__, cfg.limits(), _configs(checked))


def _run_local(cfg: ServeConfig, checked: list[Checked], echo: Echo,
               announce: Callable[[str], None], sock: Any) -> None:
    from .batcher import BatchSettings
    from .engine import EngineOptions, serve_local
    from .guard import Guard
    from .worker import ModelEntry, WorkerSettings

    threads, _, why = size_threads(cfg, len(checked), usable_cores())
    echo(f"threads: {why}")
    entries = [ModelEntry(str(c.folder), c.name, cfg.runtime, threads, BatchSettings(
        c.max_batch, cfg.batch_wait_ms / 1000.0, cfg.max_queue or 4 * c.max_batch))
        for c in checked]
    grpc = (cfg.host, cfg.grpc_port) if cfg.grpc_port else None
    settings = WorkerSettings(entries, _info(cfg, checked), grpc)
    opts = EngineOptions(cfg.host, cfg.port, cfg.replicas, cfg.keep_alive, cfg.drain_timeout,
                         Guard(cfg.request_timeout, cfg.max_connections), cfg.verbose)
    serve_local(settings, opts, echo, lambda: announce(f"http://{cfg.host}:{cfg.port}"), sock)


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set the event (from the first moment: a Ctrl-C while Ray starts stops it
    in order once it is up, rather than raising inside Ray's start-up)."""
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def install() -> None:
        for sig in signals:
            signal.signal(sig, lambda *_: stop.set())

    install()
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_ray(cfg: ServeConfig, checked: list[Checked], echo: Echo,
             announce: Callable[[str], None]) -> None:
    from .ray_engine import deploy, shutdown

    with _stop_on_signal() as stop:
        try:
            url = deploy(cfg, checked, _info(cfg, checked), echo,
                         lambda cpus: size_threads(cfg, len(checked), cpus))
        except UserError:
            raise
        except BaseException as exc:
            try:
                shutdown(echo, cfg.verbose)
            except Exception:
                pass
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise UserError(f"could not deploy: {first_line(exc)}") from None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())  # ray.init installed its own SIGTERM's
        if not stop.is_set():
            announce(url)
        while not stop.wait(0.5):
            pass
        shutdown(echo, cfg.verbose)


def run(cfg: ServeConfig, echo: Echo) -> None:
    """Check, serve, print where it listens, run until interrupted, then drain and stop."""
    from .engine import bind

    started = time.perf_counter()
    engine = cfg.engine_name()
    if cfg.grpc_port is not None and (engine == "ray" or cfg.replicas > 1):
        raise BadOption("--grpc-port is served by the single-machine engine with --replicas 1")
    if cfg.autoscale is not None and engine != "ray":
        raise BadOption("--autoscale is Ray Serve's (--engine ray); the local engine serves a "
                        "fixed --replicas")
    checked = check_models(cfg)
    sock = bind(cfg.host, cfg.port)  # a taken port: refused now, in one line naming it
    if engine == "ray":
        sock.close()  # Ray's proxy binds it
    for c in checked:
        m = c.manifest
        echo(f"{c.name}: {c.folder} ({m['model']['name']} {m['format']}, {m['precision']} "
             f"contract, batch {m['batch_range']['min']}..{m['batch_range']['max']}; batches of "
             f"up to {c.max_batch} formed within {cfg.batch_wait_ms:g} ms)")
        if m["source"].get("kind") == "seed":
            echo(f"warning: {c.name} was exported from UNTRAINED (seeded) weights; its "
                 "predictions mean nothing")
    grpc = f"; gRPC on {cfg.host}:{cfg.grpc_port}" if cfg.grpc_port else ""
    each = (f"{cfg.autoscale[0]}..{cfg.autoscale[1]} replicas" if cfg.autoscale
            else f"{cfg.replicas} replica(s)")

    def announce(url: str) -> None:
        echo(f"ready in {time.perf_counter() - started:.1f}s: {url}/v2 serving "
             f"{', '.join(c.name for c in checked)} (engine {engine}, {each} each"
             f"{grpc}); Ctrl-C to stop")

    if engine == "ray":
        _run_ray(cfg, checked, echo, announce)
    else:
        _run_local(cfg, checked, echo, announce, sock)
    echo("stopped")


__all__ = ["Checked", "ServeConfig", "check_models", "run", "size_threads"]
