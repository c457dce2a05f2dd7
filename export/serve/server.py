"""Start, run and stop the service: check every artifact, size replicas and threads, bring up
Ray and Ray Serve, deploy, wait; on Ctrl-C or SIGTERM drain and shut Ray down.

The artifacts are checked here first, in the calling process, exactly as the replicas will
check them (:meth:`Predictor.load`, i.e. :func:`export.runtime.load_artifact`: sha256 of every
file, gate passed, the runtime allowed by the contract), so a failed or foreign artifact is one
line before Ray spends five seconds starting.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.artifact import read_manifest
from ..core.errors import BadOption, UserError, first_line
from ..core.hardware import usable_cores
from ..predict.predictor import Predictor

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
    batch_wait_ms: float = 2.0
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    metrics_port: int | None = None
    autoscale: tuple[int, int] | None = None  # (min, max) replicas: Ray Serve's autoscaling


@dataclass(frozen=True)
class Planned:
    """One model as it will be deployed."""

    folder: Path
    name: str
    manifest: Mapping[str, Any]
    max_batch: int


def plan_models(cfg: ServeConfig) -> list[Planned]:
    """Check every artifact (as load_artifact does) and name it; bad options raise BadOption."""
    from ..convert.triton_repo import check_name, model_name

    if cfg.names and len(cfg.names) != len(cfg.artifacts):
        raise BadOption(f"--name given {len(cfg.names)} time(s) for {len(cfg.artifacts)} "
                        "artifact(s): give one per artifact, in order")
    planned = []
    for i, folder in enumerate(cfg.artifacts):
        manifest = read_manifest(folder)
        Predictor.load(folder, cfg.runtime, verify=True)  # the replicas' checks, up front
        name = check_name(cfg.names[i] if cfg.names else model_name(manifest))
        top = int(manifest["batch_range"]["max"])
        if cfg.max_batch is not None and cfg.max_batch > top:
            raise BadOption(f"--max-batch {cfg.max_batch} is above {folder}'s batch range "
                            f"{manifest['batch_range']['min']}..{top}")
        planned.append(Planned(folder.resolve(), name, manifest, cfg.max_batch or top))
    names = [p.name for p in planned]
    if len(set(names)) != len(names):
        raise BadOption(f"two artifacts would both be served as {names!r}; give --name for each")
    return planned


def plan_threads(cfg: ServeConfig, models: int, cpus: int) -> tuple[int, float, str]:
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


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Block SIGINT and SIGTERM while Ray starts its processes: they inherit the mask, so a
    Ctrl-C (sent by the terminal to the whole process group) or a ``kill`` of the group reaches
    only this process, which then drains and stops Ray in order instead of finding it dead."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_ray(cfg: ServeConfig) -> int:
    """Start or join Ray; returns the CPUs the replicas may use."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with _signals_held():
        return _init_ray(cfg)


def _init_ray(cfg: ServeConfig) -> int:
    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": True, "configure_logging": True}
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
        nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        return int(max(nodes or [1]))
    cpus = usable_cores()
    if cfg.metrics_port:
        kwargs["_metrics_export_port"] = cfg.metrics_port
    ray.init(num_cpus=cpus, **kwargs)
    return cpus


def deploy(cfg: ServeConfig, planned: list[Planned], echo: Echo) -> str:
    """Bring the applications up; returns the base URL."""
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import LoggingConfig

    from .. import __version__
    from ..convert.triton_repo import RepoOptions, model_config
    from .deployment import ModelOptions, model_app, root_app

    cpus = _start_ray(cfg)
    threads, reserve, why = plan_threads(cfg, len(planned), cpus)
    echo(f"threads: {why}")
    quiet = LoggingConfig(log_level="WARNING", enable_access_log=False)
    serve.start(http_options=HTTPOptions(host=cfg.host, port=cfg.port), logging_config=quiet)
    targets = [serve.RunTarget(root_app([p.name for p in planned], __version__), name="v2",
                               route_prefix="/v2", logging_config=quiet)]
    for p in planned:
        opts = ModelOptions(str(p.folder), p.name, cfg.runtime, threads, p.max_batch,
                            cfg.batch_wait_ms / 1000.0,
                            model_config(p.manifest, p.name, RepoOptions(kind="cpu")))
        targets.append(serve.RunTarget(model_app(opts, cfg.replicas, reserve, cfg.autoscale),
                                       name=p.name,
                                       route_prefix=f"/v2/models/{p.name}",
                                       logging_config=quiet))
    serve.run_many(targets)
    return f"http://{cfg.host}:{cfg.port}"


def shutdown(echo: Echo) -> None:
    """Drain (Serve lets each replica finish what it holds) and stop Ray."""
    import ray
    from ray import serve

    echo("draining in-flight requests and shutting down")
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def run(cfg: ServeConfig, echo: Echo, wait: Callable[[], None]) -> None:
    """Check, deploy, print where it listens, ``wait()`` until interrupted, then shut down."""
    started = time.perf_counter()
    planned = plan_models(cfg)
    for p in planned:
        m = p.manifest
        echo(f"{p.name}: {p.folder} ({m['model']['name']} {m['format']}, {m['precision']} "
             f"contract, batch {m['batch_range']['min']}..{m['batch_range']['max']}; batches of "
             f"up to {p.max_batch} formed within {cfg.batch_wait_ms:g} ms)")
        if m["source"].get("kind") == "seed":
            echo(f"warning: {p.name} was exported from UNTRAINED (seeded) weights; its "
                 "predictions mean nothing")
    try:
        url = deploy(cfg, planned, echo)
    except KeyboardInterrupt:
        shutdown(echo)
        raise
    except Exception as exc:
        try:
            shutdown(echo)
        except Exception:
            pass
        raise UserError(f"could not deploy: {first_line(exc)}") from None
    each = (f"{cfg.autoscale[0]}..{cfg.autoscale[1]} replicas" if cfg.autoscale
            else f"{cfg.replicas} replica(s)")
    echo(f"ready in {time.perf_counter() - started:.1f}s: {url}/v2 serving "
         f"{', '.join(p.name for p in planned)} ({each} each); Ctrl-C to stop")
    try:
        wait()
    except KeyboardInterrupt:
        pass
    shutdown(echo)


__all__ = ["Planned", "ServeConfig", "deploy", "plan_models", "plan_threads", "run", "shutdown"]
