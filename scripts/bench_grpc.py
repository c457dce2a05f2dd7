#!/usr/bin/env python3
"""What the gRPC service costs: its latency and throughput against the same runner called
in-process, and against a no-op model (the service alone).

A server process holds two models behind :func:`export.serve.grpc_service.start_grpc`: the
artifact's runner (``Predictor.logits`` in a worker thread, one call at a time: no batcher, so
concurrency only queues) and a no-op that answers zeros. This process loads them with
:func:`export.serve.grpc_load.grpc_step` and times ``Predictor.logits`` on one image directly,
in interleaved rounds so load that comes and goes hits all alike; medians over the rounds.

    PYTHONPATH=. python scripts/bench_grpc.py ARTIFACT [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np


class RunnerModel:
    """The artifact's runner behind the ServedModel contract (one call at a time)."""

    def __init__(self, predictor, name):
        from export.serve.protocol import ModelSignature

        self.predictor, self.lock = predictor, threading.Lock()
        self.signature = ModelSignature.from_manifest(name, predictor.manifest)

    def ready(self):
        return True

    def _run(self, x):
        with self.lock:
            return self.predictor.logits(x)

    async def infer(self, batch):
        return await asyncio.to_thread(self._run, batch)


class NoOp(RunnerModel):
    async def infer(self, batch):
        return np.zeros((len(batch), self.signature.output.shape[1]), np.float32)


async def serve(artifact: str, threads: int) -> None:
    """The server process: print the port, serve until stdin closes."""
    from export.predict import Predictor
    from export.serve.grpc_service import bound_port, start_grpc, stop_grpc

    predictor = Predictor.load(artifact, threads=threads)
    models = {"model": RunnerModel(predictor, "model"), "noop": NoOp(predictor, "noop")}
    server = await start_grpc(models, "127.0.0.1", 0, server_name="bench", version="0")
    print(bound_port(server), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await stop_grpc(server, 1.0)


def direct_ms(predictor, seconds: float) -> float:
    """p50 of Predictor.logits on one image, for ``seconds``."""
    x = np.random.default_rng(0).standard_normal((1, *predictor_shape(predictor)))
    x = x.astype(np.float32)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        predictor.logits(x)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def predictor_shape(predictor) -> tuple[int, int, int]:
    spec = predictor.spec
    return spec.in_chans, spec.input_size, spec.input_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve:
        asyncio.run(serve(opts.artifact, opts.threads))
        return
    from export.predict import Predictor
    from export.serve.grpc_load import grpc_step

    server = subprocess.Popen([sys.executable, __file__, opts.artifact, "--serve", "--threads",
                               str(opts.threads)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        target = f"127.0.0.1:{server.stdout.readline().strip()}"
        predictor = Predictor.load(opts.artifact, threads=opts.threads)
        rows: dict[str, list[dict]] = {}
        load = [os.getloadavg()[0]]
        for _ in range(opts.rounds):
            rows.setdefault("direct", []).append({"p50_ms": direct_ms(predictor, opts.seconds)})
            for model in ("noop", "model"):
                for level in (1, 16):
                    step = asyncio.run(grpc_step(target, model, level, 100_000, opts.seconds))
                    rows.setdefault(f"{model} c{level}", []).append(step.row(1))
            load.append(os.getloadavg()[0])
    finally:
        server.stdin.close()
        server.wait(30)
    summary = {name: {key: round(statistics.median(r[key] for r in runs), 3)
                      for key in ("p50_ms", "p99_ms", "requests_per_s", "errors")
                      if key in runs[0]} for name, runs in rows.items()}
    summary["load_average_1min"] = [round(x, 1) for x in load]
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
