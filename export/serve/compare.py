"""``resnet-serve bench ARTIFACT``: the same artifact in-process and served, side by side.

The artifact is loaded here (the runner and the batcher the server uses, same threads and batch
settings) and served by ``resnet-serve`` in a child process; at each concurrency the modes run
in interleaved rounds (in-process, HTTP[, gRPC], in-process, HTTP, ...) so load that comes and
goes hits them alike, and the serving overhead is one ratio: served requests/s over in-process
requests/s, and the p50 difference in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..core.fileio import atomic_path
from ..core.hardware import usable_cores
from .loadgen import (
    SCHEMA,
    BenchConfig,
    Client,
    Step,
    _step,
    free_port,
    pick_model,
    server_engine,
    start_server,
    stop_server,
    write_plot,
)

Echo = Callable[[str], None]
Call = Callable[[], Awaitable[int]]  # one request; returns the batch it was computed in


def grpc_caller(target: str, model: str, x: np.ndarray) -> Any:
    """The gRPC client of the served model (None where grpcio/tritonclient[grpc] are not
    installed)."""
    try:
        from .grpc_load import bench_client
    except ImportError:
        return None
    return bench_client(target, model, x)


async def _loop(call: Call, level: int, count: int, duration: float, rows: int) -> Step:
    """``level`` callers in a closed loop until ``count`` calls or ``duration`` seconds."""
    step, sent = Step(level), 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal sent
        while sent < count and time.perf_counter() < deadline:
            sent += 1
            started = time.perf_counter()
            try:
                formed = await call()
            except Exception as exc:
                step.errors[type(exc).__name__] = step.errors.get(type(exc).__name__, 0) + 1
                continue
            step.latencies.append(time.perf_counter() - started)
            if formed > 0:
                step.rows_seen += rows
                step.batches += rows / formed

    try:
        await asyncio.gather(*(call() for _ in range(max(2, level))))  # warm-up, not counted
    except Exception as exc:
        detail = getattr(exc, "details", lambda: None)() or str(exc)
        raise UserError(f"the warm-up call failed: {type(exc).__name__}: "
                        f"{detail.splitlines()[0] if detail else ''}") from None
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(level)))
    step.wall = time.perf_counter() - started
    return step


def _merge(steps: list[Step]) -> Step:
    out = Step(steps[0].concurrency)
    for s in steps:
        out.latencies += s.latencies
        out.batches += s.batches
        out.rows_seen += s.rows_seen
        out.wall += s.wall
        for k, v in s.errors.items():
            out.errors[k] = out.errors.get(k, 0) + v
    return out


def _in_process(artifact: str, cfg: BenchConfig, threads: int) -> Any:
    from .batcher import BatchSettings
    from .server import ServeConfig, check_models
    from .worker import ModelEntry, load_model

    (checked,) = check_models(ServeConfig([Path(artifact)]))
    wait = next((float(a.split("=", 1)[1]) for a in cfg.serve_args
                 if a.startswith("--batch-wait-ms=")), ServeConfig([]).batch_wait_ms)
    return load_model(ModelEntry(str(checked.folder), checked.name, "auto", threads,
                                 BatchSettings(checked.max_batch, wait / 1000.0,
                                               4 * checked.max_batch)))


async def _rounds(cfg: BenchConfig, base: str, model: Any, echo: Echo, rounds: int,
                  grpc_target: str | None) -> tuple[str, list[dict[str, Any]]]:
    name, meta = pick_model(base, cfg.model)
    client = Client(base, name, meta, cfg.batch, cfg.binary)
    x = np.random.default_rng(0).standard_normal(
        (cfg.batch, *meta["inputs"][0]["shape"][1:])).astype(np.float32)

    async def local() -> int:
        return int((await model.infer_batched(x))[1])

    grpc = grpc_caller(grpc_target, name, x) if grpc_target else None
    if grpc_target and grpc is None:
        raise UserError("--grpc needs the gRPC client: pip install 'tritonclient[grpc]'")
    rows = []
    for level in cfg.concurrency:
        got: dict[str, list[Step]] = {"in-process": [], "http": []}
        if grpc is not None:
            got["grpc"] = []
        part = cfg.duration / rounds
        for _ in range(rounds):
            got["in-process"].append(await _loop(local, level, cfg.count // rounds, part,
                                                 cfg.batch))
            got["http"].append(await _step(client, level, cfg.count // rounds, part))
            if grpc is not None:
                got["grpc"].append(await _loop(grpc, level, cfg.count // rounds, part,
                                               cfg.batch))
        base_row = _merge(got["in-process"]).row(cfg.batch)
        for mode, steps in got.items():
            row = _merge(steps).row(cfg.batch) | {"mode": mode}
            if mode != "in-process" and base_row["requests_per_s"]:
                row["throughput_ratio"] = row["requests_per_s"] / base_row["requests_per_s"]
                row["p50_overhead_ms"] = row["p50_ms"] - base_row["p50_ms"]
            rows.append(row)
        echo(f"concurrency {level}: " + ", ".join(
            f"{r['mode']} {r['requests_per_s']:.0f} req/s" for r in rows[-len(got):]))
    if grpc is not None:
        await grpc.close()
    return name, rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = (f"{'conc':>5} {'mode':>10} {'ok':>7} {'errors':>6} {'req/s':>9} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'batch':>6} {'vs in-process':>14} {'p50 +ms':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['throughput_ratio']:.2f}x" if "throughput_ratio" in r else "-"
        extra = f"{r['p50_overhead_ms']:+.2f}" if "p50_overhead_ms" in r else "-"
        batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] else "-"
        lines.append(f"{r['concurrency']:>5} {r['mode']:>10} {r['ok']:>7} {r['errors']:>6} "
                     f"{r['requests_per_s']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                     f"{batch:>6} {ratio:>14} {extra:>8}")
    lines.append("vs in-process: served requests/s over in-process requests/s (same runner, "
                 "batcher and threads, interleaved rounds); p50 +ms: the latency serving adds")
    return "\n".join(lines)


def compare(cfg: BenchConfig, echo: Echo, out: Echo, rounds: int = 3) -> dict[str, Any]:
    """Serve ``cfg.target``, then measure in-process and served side by side."""
    threads = max(1, usable_cores() // cfg.replicas)
    extra, grpc_target = list(cfg.serve_args), None
    if cfg.grpc:
        port = free_port()
        extra += ["--grpc-port", str(port)]
        grpc_target = f"127.0.0.1:{port}"
    proc, base = start_server(cfg.target, cfg.replicas, extra, echo)
    try:
        model = _in_process(cfg.target, cfg, threads)
        engine = server_engine(base)

        async def both() -> tuple[str, list[dict[str, Any]]]:
            model.batcher.start()
            try:
                return await _rounds(cfg, base, model, echo, rounds, grpc_target)
            finally:
                await model.batcher.stop()

        name, rows = asyncio.run(both())
    finally:
        stop_server(proc)
    doc = {"schema": SCHEMA, "schema_version": 2, "engine": engine, "url": base,
           "model": name, "batch": cfg.batch, "binary": cfg.binary, "rounds": rounds,
           "count": cfg.count,
           "duration_s": cfg.duration, "load_average": list(os.getloadavg()),
           "served": {"artifact": cfg.target, "replicas": cfg.replicas,
                      "args": cfg.serve_args}, "rows": rows}
    cfg.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(cfg.out / "serve-bench.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    write_plot(dict(doc, rows=[r for r in rows if r["mode"] == "http"]),
               cfg.out / "serve-bench.png")
    out(f"engine: {engine}")
    out(format_rows(rows))
    echo(f"wrote {cfg.out / 'serve-bench.json'}, {cfg.out / 'serve-bench.png'}")
    return doc


__all__ = ["compare", "format_rows", "grpc_caller"]
