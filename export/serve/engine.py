"""The single-machine engine: uvicorn (httptools, uvloop) serving the shared application, the
runners in the serving process(es), one listening socket.

The socket is bound once, here, before any replica starts (``SO_REUSEADDR`` for a restart after
a crash, never ``SO_REUSEPORT``), so a port another program holds is refused at once in one
line, and two servers can never share a port. One replica serves in this process; more are
spawned processes that accept on the inherited socket (the kernel spreads connections), each
with its own runner, and one that dies is replaced. SIGINT/SIGTERM drain: the socket stops
accepting, every request already received is answered, then the process exits 0 within
``drain_timeout`` (+ about a second); a second Ctrl-C exits at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import UserError
from .guard import Guard, GuardedHttp
from .worker import WorkerApp, WorkerSettings

Echo = Callable[[str], None]


@dataclass(frozen=True)
class EngineOptions:
    """Where and how the engine listens and stops."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    keep_alive: float = 5.0  # seconds an idle keep-alive connection stays open
    drain_timeout: float = 10.0  # seconds given to in-flight requests on shutdown
    guard: Guard = Guard()
    verbose: bool = False


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket, or one line saying why not (a taken port named)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use (another server?); "
                            "stop it or choose another --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, opts: EngineOptions) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app, http=GuardedHttp, lifespan="on", log_config=None, access_log=opts.verbose,
        log_level="info" if opts.verbose else "error", proxy_headers=False, server_header=False,
        timeout_keep_alive=max(1, round(opts.keep_alive)),
        timeout_graceful_shutdown=max(1, round(opts.drain_timeout)), backlog=2048)
    config.guard = opts.guard  # type: ignore[attr-defined]  # read by GuardedHttp
    return config


def _quiet_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="resnet-serve: %(message)s", stream=sys.stderr)
    if not verbose:
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # hostile-client noise


def _exit_quietly(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _replica_main(config: Any, sock: socket.socket, ready: Any, verbose: bool) -> None:
    """A spawned replica: load, serve on the inherited socket, drain on SIGINT/SIGTERM."""
    import uvicorn

    signal.signal(signal.SIGINT, _exit_quietly)  # before serving; uvicorn's own handlers after
    signal.signal(signal.SIGTERM, _exit_quietly)
    _quiet_logging(verbose)
    config.app.on_ready = ready.set
    uvicorn.Server(config).run(sockets=[sock])


def _serve_here(worker: WorkerApp, sock: socket.socket, opts: EngineOptions,
                announce: Callable[[], None], echo: Echo) -> None:
    import uvicorn

    worker.load()
    config = uvicorn_config(worker, opts)
    server = uvicorn.Server(config)
    for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn re-raises the signal it handled
        signal.signal(sig, lambda *_: None)

    async def main() -> None:
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        said = False
        while not task.done():
            if server.started and not said:
                said = True
                announce()
            if server.should_exit:
                echo(f"draining: answering the requests already received (at most "
                     f"{opts.drain_timeout:g}s; Ctrl-C again to stop at once)")
                break
            await asyncio.sleep(0.02)
        await task

    get_factory = getattr(config, "get_loop_factory", None)  # uvloop where installed
    factory = get_factory() if get_factory is not None else None
    loop = factory() if factory is not None else asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        if server.force_exit:  # a second Ctrl-C: what is still running is dropped, now
            echo("stopped at once; requests still in flight were not answered")
            sys.stderr.flush()
            os._exit(130)
    finally:
        loop.close()


class _Replicas:
    """Spawned replica processes on one socket: started, watched, replaced, drained."""

    def __init__(self, worker: WorkerApp, sock: socket.socket, opts: EngineOptions):
        self.ctx = multiprocessing.get_context("spawn")
        self.config = uvicorn_config(worker, opts)
        self.sock, self.opts = sock, opts
        self.procs: list[tuple[Any, Any]] = []

    def spawn(self) -> tuple[Any, Any]:
        ready = self.ctx.Event()
        proc = self.ctx.Process(target=_replica_main, name="resnet-serve-replica",
                                args=(self.config, self.sock, ready, self.opts.verbose))
        proc.start()
        return proc, ready

    def start(self, timeout: float = 300.0) -> None:
        self.procs = [self.spawn() for _ in range(self.opts.replicas)]
        deadline = time.monotonic() + timeout
        for proc, ready in self.procs:
            while not ready.wait(0.1):
                if not proc.is_alive() or time.monotonic() > deadline:
                    self.stop(force=True)
                    raise UserError(f"a replica did not start (exit status {proc.exitcode})")

    def watch(self, signals: list[int], echo: Echo) -> None:
        while not signals:
            time.sleep(0.2)
            for i, (proc, _) in enumerate(self.procs):
                if not proc.is_alive() and not signals:
                    echo(f"replica {proc.pid} exited (status {proc.exitcode}); starting another")
                    self.procs[i] = self.spawn()

    def stop(self, force: bool = False, signals: list[int] | None = None) -> None:
        for proc, _ in self.procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL if force else signal.SIGTERM)
        deadline = time.monotonic() + self.opts.drain_timeout + 5
        while any(p.is_alive() for p, _ in self.procs) and time.monotonic() < deadline:
            if signals is not None and len(signals) > 1:
                break
            time.sleep(0.05)
        for proc, _ in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join()


def serve_local(settings: WorkerSettings, opts: EngineOptions, echo: Echo,
                announce: Callable[[], None], sock: socket.socket | None = None) -> None:
    """Serve on ``sock`` (bound here if None): start the replicas, ``announce()`` once they
    serve, run until a signal, drain."""
    _quiet_logging(opts.verbose)
    sock = sock if sock is not None else bind(opts.host, opts.port)
    worker = WorkerApp(settings)
    try:
        if opts.replicas == 1:
            _serve_here(worker, sock, opts, announce, echo)
            return
        signals: list[int] = []
        replicas = _Replicas(worker, sock, opts)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: signals.append(signum))
        replicas.start()
        announce()
        replicas.watch(signals, echo)
        echo(f"draining: answering the requests already received (at most "
             f"{opts.drain_timeout:g}s; Ctrl-C again to stop at once)")
        replicas.stop(signals=signals)
    finally:
        sock.close()


__all__ = ["EngineOptions", "bind", "serve_local", "uvicorn_config"]
