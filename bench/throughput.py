"""Throughput the way ``benchmark_app -hint throughput`` measures it: a runtime's own requests
(:meth:`export.runtime.base.Runner.request_queue`) kept in flight, images/s over the window.

The runner runs (it compiles its THROUGHPUT model and hands out a queue of requests); this
module measures: one untimed round of every request, then requests started as others complete
until both ``min_time_s`` and ``min_iters`` are reached; images/s is completed iterations x batch
/ wall time from the first start to the last completion, and each request's latency is kept.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from export.runtime.base import Runner


def measure_throughput(runner: Runner, batch: np.ndarray, min_time_s: float = 10.0,
                       min_iters: int = 0, requests: int | None = None) -> dict[str, Any]:
    """One throughput window of ``batch`` on ``runner``'s requests (JSON-ready)."""
    queue = runner.request_queue(batch, requests)
    latencies: list[float] = []

    def done(_request: Any, started: float) -> None:
        latencies.append(time.perf_counter() - started)

    queue.queue.set_callback(done)
    for _ in range(queue.requests):  # warm-up round, not counted
        queue.queue.start_async(userdata=time.perf_counter())
    queue.queue.wait_all()
    latencies.clear()
    iters = 0
    start = time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < min_time_s:
        queue.queue.start_async(userdata=time.perf_counter())
        iters += 1
    queue.queue.wait_all()
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {
        "images_per_s": iters * batch.shape[0] / elapsed,
        "batch": int(batch.shape[0]),
        "iterations": iters,
        "duration_s": elapsed,
        "requests": queue.requests,
        **queue.facts,
        "latency_ms_median": float(np.median(lat)) if lat.size else None,
        "latencies_ms": lat.tolist(),  # one per completed request, start to completion
        "compile_s": queue.compile_s,
    }


__all__ = ["measure_throughput"]
