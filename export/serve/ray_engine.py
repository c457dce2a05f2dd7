"""The Ray Serve engine (``--engine ray`` or any ``--address``): bring up Ray and Ray Serve,
deploy one application per model plus the root, wait, and on Ctrl-C or SIGTERM drain and shut
Ray down. The applications serve :mod:`.routes`, like the single-machine engine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .routes import AppInfo

Echo = Callable[[str], None]


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


def _quiet(verbose: bool) -> None:
    """Ray's normal lifecycle lines ("Connecting to existing Serve app", a replica's
    "graceful_shutdown failed") stay out of the terminal unless ``--verbose``."""
    if not verbose:
        for name in ("ray", "ray.serve", "ray._private"):
            logging.getLogger(name).setLevel(logging.ERROR)


def start_ray(cfg: Any, cpus: int) -> int:
    """Start or join Ray; returns the CPUs the replicas may use."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with _signals_held():
        import ray

        kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": True,
                                  "logging_level": logging.INFO if cfg.verbose
                                  else logging.ERROR, "log_to_driver": cfg.verbose}
        if cfg.address:
            ray.init(address=cfg.address, **kwargs)
            nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
            return int(max(nodes or [1]))
        if cfg.metrics_port:
            kwargs["_metrics_export_port"] = cfg.metrics_port
        ray.init(num_cpus=cpus, **kwargs)
        return cpus


def deploy(cfg: Any, checked: list[Any], info: AppInfo, echo: Echo,
           threads_for: Callable[[int], tuple[int, float, str]]) -> str:
    """Bring the applications up; returns the base URL."""
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import LoggingConfig

    from ..convert.triton_repo import RepoOptions, model_config
    from ..core.hardware import usable_cores
    from .deployment import ModelOptions, model_app, root_app
    from .protocol import ModelSignature

    _quiet(cfg.verbose)
    cpus = start_ray(cfg, usable_cores())
    threads, reserve, why = threads_for(cpus)
    echo(f"threads: {why}")
    quiet = LoggingConfig(log_level="INFO" if cfg.verbose else "ERROR",
                          enable_access_log=cfg.verbose)
    serve.start(http_options=HTTPOptions(host=cfg.host, port=cfg.port,
                                         keep_alive_timeout_s=max(1, round(cfg.keep_alive))),
                logging_config=quiet)
    signatures = [ModelSignature.from_manifest(c.name, c.manifest) for c in checked]
    targets = [serve.RunTarget(root_app(signatures, info), name="v2", route_prefix="/v2",
                               logging_config=quiet)]
    for c in checked:
        opts = ModelOptions(str(c.folder), c.name, cfg.runtime, threads, c.max_batch,
                            cfg.batch_wait_ms / 1000.0,
                            model_config(c.manifest, c.name, RepoOptions(kind="cpu")),
                            cfg.max_queue or 0, info)
        app = model_app(opts, cfg.replicas, reserve, cfg.autoscale)
        targets.append(serve.RunTarget(app, name=c.name,
                                       route_prefix=f"/v2/models/{c.name}",
                                       logging_config=quiet))
    serve.run_many(targets)
    return f"http://{cfg.host}:{cfg.port}"


@contextlib.contextmanager
def _stderr_muted(mute: bool) -> Iterator[None]:
    """Ray prints its controller's normal exit ("Task ServeController.graceful_shutdown
    failed ... killed by `ray.kill`") straight to the terminal; keep it out unless verbose."""
    if not mute:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def shutdown(echo: Echo, verbose: bool = False) -> None:
    """Drain (Serve lets each replica finish what it holds) and stop Ray."""
    import ray
    from ray import serve

    echo("draining in-flight requests and shutting down")
    with _stderr_muted(not verbose):
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


__all__ = ["deploy", "shutdown", "start_ray"]
