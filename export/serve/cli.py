"""``resnet-serve``: serve artifacts over the Open Inference Protocol (single-machine engine or
Ray Serve), and
``resnet-serve bench``: load a running server (or one it starts) at several concurrencies."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..core.cli import DefaultCommand, DefaultGroup, LazyChoice, OneLineCommand, one_line_errors
from ..core.errors import BadOption
from ..predict.runtimes import runtime_choices


def _echo(text: str) -> None:
    click.echo(text, err=True)


@click.group(cls=DefaultGroup, default_command="start",
             context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Serve exported artifacts over the Open Inference Protocol (KServe v2, Triton's URLs)."""


def _bounds(_ctx: Any, _param: Any, value: str | None) -> tuple[int, int] | None:
    """``MIN:MAX`` replicas, 1 <= MIN <= MAX <= 256."""
    if value is None:
        return None
    low, sep, high = value.partition(":")
    if not (sep and low.strip().isdigit() and high.strip().isdigit()
            and 1 <= int(low) <= int(high) <= 256):
        raise click.BadParameter(f"wants MIN:MAX replicas with 1 <= MIN <= MAX <= 256, got "
                                 f"{value!r}")
    return int(low), int(high)


@main.command("start", cls=DefaultCommand, hidden=True)
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path),
                metavar="ARTIFACT...")
@click.option("--name", "names", multiple=True,
              help="Model name for each artifact, in order [default: <model>-<format>].")
@click.option("--runtime", type=LazyChoice(runtime_choices), default="auto",
              show_default=True,
              help="What runs each artifact, as resnet-predict --runtime.")
@click.option("--replicas", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Replicas per model (Ray Serve replaces one that dies).")
@click.option("--threads", type=click.IntRange(min=1, max=1024), default=None,
              help="Runtime threads per replica [default: the cores shared equally among all "
                   "replicas].")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Most images one batch may hold [default and limit: each artifact's batch "
                   "range max].")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0, max=10_000), default=0.0,
              show_default=True,
              help="How long a batch may wait to fill after its first request (0: batches "
                   "form from what arrives while the previous one computes).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8000, show_default=True)
@click.option("--address", default=None,
              help="Join this Ray cluster (e.g. auto, or ray://head:10001) instead of starting "
                   "Ray here; artifacts must be readable at the same path on every node.")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535), default=None,
              help="Serve Ray's Prometheus metrics (request counts, latencies, batch sizes) on "
                   "this port (Ray engine, local Ray only).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default=None,
              help="local: uvicorn on this machine, the runners in its process(es); ray: Ray "
                   "Serve [default: ray with --address, else local].")
@click.option("--grpc-port", type=click.IntRange(min=1, max=65535), default=None,
              help="Also serve the protocol's gRPC service on this port (local engine).")
@click.option("--request-timeout", type=click.FloatRange(min=0.1, max=3600), default=5.0,
              show_default=True,
              help="Seconds a request's headers and body may take to arrive (408 past it).")
@click.option("--keep-alive", type=click.FloatRange(min=1, max=3600), default=5.0,
              show_default=True, help="Seconds an idle keep-alive connection stays open.")
@click.option("--max-connections", type=click.IntRange(min=1, max=1_000_000), default=2048,
              show_default=True,
              help="Open connections per replica; past it 503 with Retry-After (local engine).")
@click.option("--max-queue", type=click.IntRange(min=1), default=None,
              help="Images waiting per replica before requests get 503 with Retry-After "
                   "[default: four batches].")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=50_000_000,
              show_default=True,
              help="Largest image (width x height) the image route decodes; read from the "
                   "header before decoding. A request's images may add up to 4x this.")
@click.option("--drain-timeout", type=click.FloatRange(min=0, max=3600), default=10.0,
              show_default=True,
              help="Seconds given to requests already received when stopping.")
@click.option("--allow-nonfinite", is_flag=True,
              help="Accept NaN and infinite values in binary tensors (refused by default).")
@click.option("--autoscale", default=None, metavar="MIN:MAX", callback=_bounds,
              help="Let Ray Serve scale each model between MIN and MAX replicas with its load "
                   "(instead of --replicas; implies --engine ray).")
@click.option("--verbose", is_flag=True, help="Show the server's and Ray's own log lines.")
@one_line_errors
def start(artifacts: tuple[Path, ...], names: tuple[str, ...], runtime: str, replicas: int,
          threads: int | None, max_batch: int | None, batch_wait_ms: float, host: str,
          port: int, address: str | None, metrics_port: int | None, engine: str | None,
          grpc_port: int | None, request_timeout: float, keep_alive: float,
          max_connections: int, max_queue: int | None, max_image_pixels: int,
          drain_timeout: float, allow_nonfinite: bool, verbose: bool,
          autoscale: tuple[int, int] | None) -> None:
    """Serve ARTIFACT... over the Open Inference Protocol.

    Each artifact is checked as resnet-predict checks it (sha256 of its files, gate passed,
    precision contract) and served at /v2/models/<name> with dynamic batching; /v2/health/live
    and /v2/health/ready answer for the service. The single-machine engine (uvicorn, the
    runners in the serving processes) is the default; Ray Serve serves with --engine ray or
    --address. Ctrl-C or SIGTERM drains (answers what was received) and exits 0; a second
    Ctrl-C stops at once.

    \b
    resnet-serve artifacts/resnet20-digits-onnx
    resnet-serve artifacts/resnet50-onnx --replicas 2 --runtime openvino
    resnet-serve artifacts/resnet50-onnx --engine ray --address auto
    resnet-serve artifacts/resnet50-onnx --address auto --autoscale 2:8
    resnet-serve bench artifacts/resnet20-digits-onnx
    """
    from .server import ServeConfig, run

    if autoscale and replicas != 1:
        raise BadOption("--replicas and --autoscale both given: give one (--autoscale MIN:MAX "
                        "sets the replica count)")
    cfg = ServeConfig(list(artifacts), list(names), runtime, replicas, threads, max_batch,
                      batch_wait_ms, host, port, address, metrics_port, engine, grpc_port,
                      request_timeout, keep_alive, max_connections, max_queue, max_image_pixels,
                      drain_timeout, allow_nonfinite, verbose, autoscale)
    if metrics_port is not None and cfg.engine_name() == "local":
        raise click.BadParameter("is served by Ray (--engine ray); the local engine's "
                                 "statistics are at /v2/models/<name>/stats",
                                 param_hint="--metrics-port")
    run(cfg, _echo)


def _concurrencies(_ctx: Any, _param: Any, value: str) -> list[int]:
    try:
        levels = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"wants numbers like 1,4,16,64, got {value!r}") from None
    if not levels or min(levels) < 1 or max(levels) > 1024:
        raise click.BadParameter(f"wants numbers in 1..1024, got {value!r}")
    return levels


@main.command("bench", cls=OneLineCommand)
@click.argument("target", metavar="URL|ARTIFACT")
@click.option("--model", default=None, help="Model to load [default: the only one served].")
@click.option("--concurrency", default="1,4,16,64", show_default=True, callback=_concurrencies,
              help="Requests in flight, one sweep step each.")
@click.option("--requests", "count", type=click.IntRange(min=1, max=1_000_000), default=2000,
              show_default=True, help="Most requests per step.")
@click.option("--duration", type=click.FloatRange(min=0.5, max=3600), default=10.0,
              show_default=True, help="Most seconds per step.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per request.")
@click.option("--json-tensors", is_flag=True, help="Send JSON tensors instead of binary ones.")
@click.option("--out", type=click.Path(path_type=Path),
              default=Path("artifacts/bench/serve"), show_default=True,
              help="Folder for serve-bench.json and serve-bench.png.")
@click.option("--replicas", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Replicas of the server it starts (ARTIFACT only).")
@click.option("--serve-arg", "serve_args", multiple=True,
              help="More options for the server it starts (ARTIFACT only), e.g. "
                   "--serve-arg=--engine=ray.")
@click.option("--grpc", is_flag=True,
              help="Also measure the served gRPC service (ARTIFACT only).")
@click.option("--rounds", type=click.IntRange(min=1, max=100), default=3, show_default=True,
              help="Interleaved rounds per concurrency (ARTIFACT only).")
@one_line_errors
def bench(target: str, model: str | None, concurrency: list[int], count: int, duration: float,
          batch: int, json_tensors: bool, out: Path, replicas: int,
          serve_args: tuple[str, ...], grpc: bool, rounds: int) -> None:
    """Load a server at each concurrency: p50/p99 latency, throughput, errors, batches formed.

    URL: a running server (resnet-serve, Triton or any Open Inference Protocol server).
    ARTIFACT: serve it (127.0.0.1, a free port) and measure it in-process and served (HTTP,
    and gRPC with --grpc) in interleaved rounds: the serving overhead as one ratio.
    """
    from .loadgen import BenchConfig, is_url, run_bench

    cfg = BenchConfig(target, model, concurrency, count, duration, batch, not json_tensors,
                      out, replicas, list(serve_args), grpc, rounds)
    if is_url(target):
        run_bench(cfg, _echo, click.echo)
    else:
        from .compare import compare

        compare(cfg, _echo, click.echo, rounds)


if __name__ == "__main__":
    sys.exit(main())
