"""``resnet-serve bench``: an asyncio load generator over the Open Inference Protocol (aiohttp,
which Ray Serve already installs).

At each concurrency ``c`` it keeps ``c`` requests in flight (closed loop) until a request count
or a time limit is reached, whichever comes first, after a short warm-up. Every response is
checked (status, output shape, finite values); the server's ``x-batch-size`` header (resnet-serve
adds it) gives the batches formed: their mean is images over batches, the number of batches
being the sum over requests of rows / batch size.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..core.fileio import atomic_path
from .protocol import HEADER_LENGTH, TensorSpec, decode_response, encode_request

Echo = Callable[[str], None]
SCHEMA = "resnet-serve-bench"


@dataclass
class BenchConfig:
    target: str
    model: str | None = None
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    count: int = 2000
    duration: float = 10.0
    batch: int = 1
    binary: bool = True
    out: Path = Path("artifacts/bench/serve")
    replicas: int = 1
    serve_args: list[str] = field(default_factory=list)
    grpc: bool = False  # also measure the served gRPC service (ARTIFACT only)
    rounds: int = 3  # interleaved rounds per concurrency (ARTIFACT only)


@dataclass
class Step:
    """What one concurrency level measured."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: dict[str, int] = field(default_factory=dict)
    batches: float = 0.0  # sum of rows / batch size over requests that reported it
    rows_seen: int = 0
    wall: float = 0.0

    def row(self, batch: int) -> dict[str, Any]:
        ok = len(self.latencies)
        lat = np.asarray(self.latencies or [np.nan]) * 1000
        return {"concurrency": self.concurrency, "requests": ok + sum(self.errors.values()),
                "ok": ok, "errors": sum(self.errors.values()), "error_kinds": self.errors,
                "wall_s": round(self.wall, 3),
                "requests_per_s": ok / self.wall if self.wall else None,
                "images_per_s": ok * batch / self.wall if self.wall else None,
                "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
                "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
                "mean_batch": self.rows_seen / self.batches if self.batches else None}


class Client:
    """One model's endpoint: a fixed request body and the check of every answer."""

    def __init__(self, base: str, model: str, meta: dict[str, Any], batch: int, binary: bool):
        self.url = f"{base}/v2/models/{model}/infer"
        (inp,), (out,) = meta["inputs"], meta["outputs"]
        spec = TensorSpec(inp["name"], inp["datatype"], tuple(inp["shape"]))
        x = np.random.default_rng(0).standard_normal((batch, *spec.shape[1:])).astype(np.float32)
        self.body, self.headers = encode_request(spec, x, binary=binary, binary_output=binary)
        self.out_shape = [batch, *out["shape"][1:]]

    async def one(self, session: Any, step: Step) -> None:
        started = time.perf_counter()
        try:
            async with session.post(self.url, data=self.body, headers=self.headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    kind = f"http {resp.status}"
                    step.errors[kind] = step.errors.get(kind, 0) + 1
                    return
                _, logits = decode_response(body, resp.headers.get(HEADER_LENGTH))
                formed = resp.headers.get("x-batch-size")
        except Exception as exc:  # connection reset, a replica gone: counted, not fatal
            kind = type(exc).__name__
            step.errors[kind] = step.errors.get(kind, 0) + 1
            return
        if list(logits.shape) != self.out_shape or not np.isfinite(logits).all():
            step.errors["wrong answer"] = step.errors.get("wrong answer", 0) + 1
            return
        step.latencies.append(time.perf_counter() - started)
        if formed and formed.isdigit() and int(formed) > 0:
            step.rows_seen += self.out_shape[0]
            step.batches += self.out_shape[0] / int(formed)


async def _step(client: Client, level: int, count: int, duration: float) -> Step:
    import aiohttp

    step = Step(level)
    connector = aiohttp.TCPConnector(limit=level)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await closed_loop(lambda s: client.one(session, s), step, count, duration)
    return step


async def closed_loop(call: Callable[[Step], Awaitable[None]], step: Step, count: int,
                      duration: float) -> None:
    """``step.concurrency`` callers in flight, each sending its next request when its answer comes,
    until ``count`` requests or ``duration`` seconds; a warm-up of untimed calls first (a
    connection per caller), then ``step.wall`` is the timed part's wall time."""
    warm = Step(step.concurrency)
    await asyncio.gather(*(call(warm) for _ in range(max(2, step.concurrency))))
    deadline = time.perf_counter() + duration
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < count and time.perf_counter() < deadline:
            sent += 1
            await call(step)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(step.concurrency)))
    step.wall = time.perf_counter() - started


def _get(url: str, method: str = "GET") -> Any:
    import urllib.request

    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def pick_model(base: str, model: str | None) -> tuple[str, dict[str, Any]]:
    if model is None:
        try:
            index = _get(f"{base}/v2/repository/index", "POST")
        except Exception as exc:
            raise UserError(f"cannot list the models of {base} ({exc}); give --model") from None
        names = [m["name"] for m in index]
        if len(names) != 1:
            raise UserError(f"{base} serves {names}; choose one with --model")
        model = names[0]
    try:
        return model, _get(f"{base}/v2/models/{model}")
    except Exception as exc:
        raise UserError(f"cannot read model {model!r} at {base}: {exc}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(artifact: str, replicas: int, extra: list[str], echo: Echo,
                 timeout: float = 120.0, stderr: Any = None
                 ) -> tuple[subprocess.Popen[bytes], str]:
    """``resnet-serve ARTIFACT`` in a child process on a free local port, once it is ready
    (its messages go to ``stderr``, a file, or this process's stderr)."""
    port = free_port()
    cmd = [sys.executable, "-m", "export.serve.cli", artifact, "--port", str(port),
           "--replicas", str(replicas), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                            stderr=stderr if stderr is not None else sys.stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"resnet-serve {artifact} exited with status {proc.returncode}")
        try:
            import urllib.request

            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return proc, base
        except Exception:
            time.sleep(0.5)
    stop_server(proc)
    raise UserError(f"resnet-serve {artifact} was not ready within {timeout:.0f}s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'conc':>5} {'requests':>9} {'errors':>7} {'req/s':>9} {'img/s':>9} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'server ms':>10} {'batch ms':>9}")
    lines = [head, "-" * len(head)]

    def num(value: Any, digits: int = 1) -> str:
        return f"{value:.{digits}f}" if value is not None else "-"

    for r in rows:
        lines.append(f"{r['concurrency']:>5} {r['requests']:>9} {r['errors']:>7} "
                     f"{r['requests_per_s']:>9.1f} {r['images_per_s']:>9.1f} "
                     f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {num(r['mean_batch']):>6} "
                     f"{num(r.get('server_ms_per_request'), 2):>10} "
                     f"{num(r.get('compute_ms_per_batch'), 2):>9}")
    lines.append("server ms: mean time a request spent in a replica (read, batch wait, compute, "
                 "answer); batch ms: mean compute per batch; the rest of p50 is the HTTP proxy "
                 "and the client")
    return "\n".join(lines)


def write_plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    conc = [r["concurrency"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(conc, [r["images_per_s"] for r in rows], marker="o")
    ax1.set(xscale="log", xlabel="concurrency", ylabel="images / s", title="throughput")
    ax2.plot(conc, [r["p50_ms"] for r in rows], marker="o", label="p50")
    ax2.plot(conc, [r["p99_ms"] for r in rows], marker="s", label="p99")
    ax2.set(xscale="log", xlabel="concurrency", ylabel="ms", title="latency")
    ax2.legend()
    fig.suptitle(f"{doc['model']} at {doc['url']} ({doc['batch']} image(s) a request, "
                 f"{'binary' if doc['binary'] else 'JSON'} tensors)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _server_stats(base: str, model: str) -> dict[str, Any] | None:
    """One replica's statistics (Triton's extension), or None where the server has none."""
    try:
        return _get(f"{base}/v2/models/{model}/stats")["model_stats"][0]
    except Exception:
        return None


def server_time(before: dict[str, Any] | None, after: dict[str, Any] | None
                ) -> dict[str, Any]:
    """Where the time went inside the replica between two statistics snapshots: the mean time
    a request spent in it (reading, waiting for its batch, computing, answering) and the mean
    compute time of a batch. Both from one replica: exact with one, a sample with several."""
    if not before or not after:
        return {}
    ok = after["inference_stats"]["success"]
    ok0 = before["inference_stats"]["success"]
    run = after["inference_stats"]["compute_infer"]
    run0 = before["inference_stats"]["compute_infer"]
    n, batches = ok["count"] - ok0["count"], run["count"] - run0["count"]
    return {"server_ms_per_request": (ok["ns"] - ok0["ns"]) / n / 1e6 if n > 0 else None,
            "compute_ms_per_batch": (run["ns"] - run0["ns"]) / batches / 1e6
            if batches > 0 else None}


def sweep(cfg: BenchConfig, base: str, echo: Echo) -> dict[str, Any]:
    model, meta = pick_model(base, cfg.model)
    client = Client(base, model, meta, cfg.batch, cfg.binary)
    rows = []
    for level in cfg.concurrency:
        before = _server_stats(base, model)
        step = asyncio.run(_step(client, level, cfg.count, cfg.duration))
        rows.append(step.row(cfg.batch) | server_time(before, _server_stats(base, model)))
        echo(f"concurrency {level}: {rows[-1]['requests_per_s']:.1f} req/s, "
             f"{rows[-1]['errors']} error(s)")
    return {"schema": SCHEMA, "schema_version": 1, "url": base, "model": model,
            "engine": server_engine(base),
            "batch": cfg.batch, "binary": cfg.binary, "count": cfg.count,
            "duration_s": cfg.duration, "load_average": list(os.getloadavg()), "rows": rows}


def server_engine(base: str) -> str:
    """The engine a server names in its ``/v2`` metadata ("unknown" for one that names none,
    such as Triton)."""
    try:
        return str(_get(f"{base}/v2").get("engine", "unknown"))
    except Exception:
        return "unknown"


def is_url(target: str) -> bool:
    """A server's URL, else an artifact folder (refused in one line if it is neither)."""
    if target.startswith(("http://", "https://")):
        return True
    if not Path(target, "manifest.json").is_file():
        raise UserError(f"{target} is neither a URL nor an artifact folder")
    return False


def run_bench(cfg: BenchConfig, echo: Echo, out: Echo) -> dict[str, Any]:
    """The sweep against the server at ``cfg.target`` (a URL; an artifact is
    :func:`.compare.compare`'s)."""
    base = cfg.target.rstrip("/")
    if cfg.grpc:
        raise UserError("--grpc measures a server it starts: give an ARTIFACT")
    doc = sweep(cfg, base, echo)
    cfg.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(cfg.out / "serve-bench.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    write_plot(doc, cfg.out / "serve-bench.png")
    out(f"engine: {doc['engine']}")
    out(format_table(doc["rows"]))
    echo(f"wrote {cfg.out / 'serve-bench.json'}, {cfg.out / 'serve-bench.png'}")
    return doc


__all__ = ["BenchConfig", "Client", "format_table", "is_url", "run_bench", "start_server",
           "stop_server",
           "sweep"]
