#!/usr/bin/env python3
"""The serving targets of issue 24, measured on one artifact in one run (loopback only).

    PYTHONPATH=. python3 scripts/bench_serve.py ARTIFACT [--seconds 6] [--rounds 3] [--no-ray]

1. Overhead, interleaved rounds at concurrency 1 and 16, binary tensors, one image a request:
   the artifact in-process (the server's own runner + batcher, called directly), served by the
   single-machine engine, a no-op model on the same engine (same routes, codec, uvicorn and
   guard; the model answers zeros at once), and the Ray Serve engine.
2. 600 slow-body clients (one byte every 2 s) and 500 idle connections against the
   single-machine engine while one good client sends requests: its p50/p99 and count.
3. Memory: the server's RSS before and after 100 requests of the largest image allowed
   (``--max-image-pixels``, a 2000 x 2000 PNG here), and its peak.
4. Ready time (process start to /v2/health/ready 200) and SIGINT under load (16 clients):
   requests answered, refused (after the socket closed) and cut off.

``--defaults`` instead serves the candidate defaults side by side (1 or 2 replicas, 1 or 2
threads, batch wait 0, 2 or 5 ms) and loads them in interleaved rounds at concurrency 1, 16, 64.

``noop`` is the script's own sub-command: the no-op server of step 1.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import click
import numpy as np

from export.serve.compare import _loop, _merge
from export.serve.loadgen import Client, Step, _step, free_port, pick_model

PY = sys.executable


def spawn(args: list[str], port: int, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server; (its process, seconds from start to ready)."""
    started = time.perf_counter()
    if "--noop-port" not in args:
        args = args + ["--port", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))
    while time.perf_counter() - started < 300:
        if proc.poll() is not None:
            raise SystemExit(f"{args} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                        timeout=2) as resp:
                if resp.status == 200:
                    return proc, time.perf_counter() - started
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{args} not ready in 300 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def overhead(artifact: str, urls: dict[str, str], seconds: float, rounds: int
                   ) -> list[dict[str, Any]]:
    from export.serve.batcher import BatchSettings
    from export.serve.worker import ModelEntry, load_model

    name, meta = pick_model(urls["local"], None)
    manifest = json.loads(Path(artifact, "manifest.json").read_text())
    top = manifest["batch_range"]["max"]
    model = load_model(ModelEntry(str(Path(artifact).resolve()), name, "auto",
                                  os.cpu_count() or 1, BatchSettings(top, 0.0, 4 * top)))
    model.batcher.start()
    x = np.zeros((1, *meta["inputs"][0]["shape"][1:]), np.float32)

    async def local() -> int:
        return int((await model.infer_batched(x))[1])

    clients = {mode: Client(url, name, meta, 1, True) for mode, url in urls.items()}
    rows = []
    for level in (1, 16):
        got: dict[str, list[Step]] = {"in-process": [], **{m: [] for m in clients}}
        for _ in range(rounds):
            got["in-process"].append(await _loop(local, level, 10**6, seconds / rounds, 1))
            for mode, client in clients.items():
                got[mode].append(await _step(client, level, 10**6, seconds / rounds))
        for mode, steps in got.items():
            rows.append(_merge(steps).row(1) | {"mode": mode})
            r = rows[-1]
            print(f"  c={level:<3} {mode:>10}: {r['requests_per_s']:8.1f} req/s  p50 "
                  f"{r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}",
                  flush=True)
    await model.batcher.stop()
    return rows


async def attack(port: int, seconds: float, slow: int, idle: int) -> dict[str, int]:
    """``slow`` clients sending a body a byte every 2 s and ``idle`` connections that send
    nothing, each reconnecting when the server closes it, for ``seconds``; how often the server
    closed them."""
    head = b"POST /v2/models/x/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    closed = {"slow": 0, "idle": 0}
    done = asyncio.Event()

    async def attacker(kind: str) -> None:
        while not done.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            if kind == "slow":
                writer.write(head)
            while not done.is_set():
                try:
                    if kind == "slow":
                        writer.write(b"{")
                        await writer.drain()
                    data = await asyncio.wait_for(reader.read(1024), 2.0)
                    if not data or data.startswith(b"HTTP"):
                        closed[kind] += 1
                        break
                except asyncio.TimeoutError:
                    continue
                except OSError:
                    closed[kind] += 1
                    break
            writer.close()

    tasks = [asyncio.ensure_future(attacker("slow")) for _ in range(slow)]
    tasks += [asyncio.ensure_future(attacker("idle")) for _ in range(idle)]
    await asyncio.sleep(seconds)
    done.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return closed


async def slow_clients(url: str, body: bytes, headers: dict[str, str], seconds: float,
                       slow: int = 600, idle: int = 500) -> dict[str, Any]:
    """The attackers in a process of their own; one good client here, timed."""
    import aiohttp

    attackers = subprocess.Popen([PY, __file__, url, "--attack", str(seconds + 4)],
                                 stdout=subprocess.PIPE)
    await asyncio.sleep(3.0)  # let them all connect
    infer = f"{url}/v2/models/{pick_model(url, None)[0]}/infer"
    latencies, errors = [], 0
    async with aiohttp.ClientSession() as session:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                async with session.post(infer, data=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except Exception:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
    out, _ = await asyncio.to_thread(attackers.communicate)
    closed = json.loads(out.decode().strip().splitlines()[-1])
    lat = np.asarray(latencies or [np.nan]) * 1000
    return {"slow_clients": slow, "idle_connections": idle, "good_ok": len(latencies),
            "good_errors": errors, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "attackers_closed_by_server": closed}


def memory(url: str, pid: int, count: int = 100) -> dict[str, Any]:
    from PIL import Image

    name = pick_model(url, None)[0]
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (2000, 2000, 3), dtype=np.uint8)).save(buf, "PNG")
    before = rss_mb(pid)[0]
    first = None
    for i in range(count):
        req = urllib.request.Request(f"{url}/v2/models/{name}/classify?top_k=1",
                                     data=buf.getvalue(), method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200
        if i == 0:
            first = rss_mb(pid)[0]
    after, peak = rss_mb(pid)
    big = io.BytesIO()
    Image.new("RGB", (9000, 9000)).save(big, "PNG")  # a real one: ~240 KB of zeros
    data = big.getvalue()
    started = time.perf_counter()
    try:
        urllib.request.urlopen(urllib.request.Request(f"{url}/v2/models/{name}/classify",
                                                      data=data, method="POST"), timeout=30)
        refused = "answered"
    except urllib.error.HTTPError as exc:
        refused = f"HTTP {exc.code}"
    bomb_s = time.perf_counter() - started
    return {"image": "2000x2000 PNG", "png_bytes": len(buf.getvalue()), "rss_before_mb": before,
            "rss_after_first_mb": first, "rss_after_mb": after, "peak_mb": peak,
            "requests": count, "9000x9000_png": refused, "9000x9000_png_bytes": len(data),
            "9000x9000_s": bomb_s}


async def sigint_under_load(proc: subprocess.Popen[bytes], url: str, body: bytes,
                            headers: dict[str, str]) -> dict[str, Any]:
    import aiohttp

    name = pick_model(url, None)[0]
    outcomes: dict[str, int] = {}

    async def client(session: Any) -> None:
        while True:
            try:
                async with session.post(f"{url}/v2/models/{name}/infer", data=body,
                                        headers=headers) as resp:
                    await resp.read()
                    kind = "answered" if resp.status == 200 else f"http {resp.status}"
            except aiohttp.ClientConnectorError:
                kind = "refused"
            except Exception as exc:
                kind = type(exc).__name__
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if kind != "answered":
                return

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = [asyncio.ensure_future(client(session)) for _ in range(16)]
        await asyncio.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        sent = time.perf_counter()
        await asyncio.gather(*tasks)
    code = await asyncio.to_thread(proc.wait, 60)
    return {"outcomes": outcomes, "exit_status": code, "exit_s": time.perf_counter() - sent}


SETTINGS = {"1 replica x 2 threads, wait 2 ms": ["--batch-wait-ms", "2"],
            "2 replicas x 1 thread, wait 2 ms": ["--batch-wait-ms", "2", "--replicas", "2"],
            "1 replica x 1 thread, wait 2 ms": ["--batch-wait-ms", "2", "--threads", "1"],
            "1 replica x 2 threads, wait 0 ms": ["--batch-wait-ms", "0"],
            "1 replica x 2 threads, wait 5 ms": ["--batch-wait-ms", "5"]}


def defaults(artifact: str, out: Path, seconds: float, rounds: int) -> list[dict[str, Any]]:
    """The candidate defaults served side by side, loaded in interleaved rounds."""
    cli = [PY, "-m", "export.serve.cli", artifact]
    procs, urls = {}, {}
    try:
        for i, (label, extra) in enumerate(SETTINGS.items()):
            port = free_port()
            procs[label], _ = spawn(cli + extra, port, out / f"defaults-{i}.log")
            urls[label] = f"http://127.0.0.1:{port}"
        name, meta = pick_model(next(iter(urls.values())), None)
        clients = {label: Client(url, name, meta, 1, True) for label, url in urls.items()}

        async def run() -> list[dict[str, Any]]:
            rows = []
            for level in (1, 16, 64):
                got: dict[str, list[Step]] = {label: [] for label in clients}
                for _ in range(rounds):
                    for label, client in clients.items():
                        got[label].append(await _step(client, level, 10**6, seconds / rounds))
                for label, steps in got.items():
                    rows.append(_merge(steps).row(1) | {"setting": label})
                    r = rows[-1]
                    print(f"  c={level:<3} {label:>34}: {r['requests_per_s']:8.1f} req/s  p50 "
                          f"{r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms", flush=True)
            return rows

        return asyncio.run(run())
    finally:
        for proc in procs.values():
            stop(proc)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact")
@click.option("--seconds", default=6.0, show_default=True, help="Per mode and concurrency.")
@click.option("--rounds", default=3, show_default=True)
@click.option("--ray/--no-ray", default=True, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("artifacts/bench/serve"))
@click.option("--noop-port", type=int, default=None, hidden=True,
              help="Be the no-op server of step 1 on this port.")
@click.option("--attack", "attack_s", type=float, default=None, hidden=True,
              help="Be the slow and idle clients of step 2 against ARTIFACT (a URL).")
@click.option("--defaults", "sweep", is_flag=True,
              help="Only compare the candidate defaults (replicas, threads, batch wait).")
def main(artifact: str, seconds: float, rounds: int, ray: bool, out: Path,
         noop_port: int | None, attack_s: float | None, sweep: bool) -> None:
    if noop_port is not None:
        noop(artifact, noop_port)
        return
    if attack_s is not None:
        print(json.dumps(asyncio.run(attack(int(artifact.rsplit(":", 1)[1]), attack_s, 600,
                                            500))))
        return
    if sweep:
        out.mkdir(parents=True, exist_ok=True)
        rows = defaults(artifact, out, seconds, rounds)
        (out / "bench-serve-defaults.json").write_text(json.dumps(
            {"artifact": artifact, "load": os.getloadavg(), "rows": rows}, indent=2))
        return
    out.mkdir(parents=True, exist_ok=True)
    cli = [PY, "-m", "export.serve.cli", artifact]
    ports = {m: free_port() for m in ("local", "noop", "ray")}
    procs: dict[str, Any] = {}
    doc: dict[str, Any] = {"artifact": artifact, "load_before": os.getloadavg()}
    procs["local"], doc["ready_s_local"] = spawn(cli, ports["local"], out / "local.log")
    procs["noop"], _ = spawn([PY, __file__, artifact, "--noop-port", str(ports["noop"])],
                             ports["noop"], out / "noop.log")
    if ray:
        procs["ray"], doc["ready_s_ray"] = spawn(cli + ["--engine", "ray"], ports["ray"],
                                                 out / "ray.log")
    urls = {m: f"http://127.0.0.1:{ports[m]}" for m in procs}
    try:
        print("overhead (interleaved rounds):", flush=True)
        doc["overhead"] = asyncio.run(overhead(artifact, urls, seconds, rounds))
    finally:
        for m in ("noop", "ray"):
            if m in procs:
                stop(procs[m])
    client = Client(urls["local"], *pick_model(urls["local"], None), 1, True)
    print("slow clients:", flush=True)
    doc["slow_clients"] = asyncio.run(slow_clients(urls["local"], client.body, client.headers,
                                                   seconds * 2))
    print(json.dumps(doc["slow_clients"]), flush=True)
    doc["sigint_under_load"] = asyncio.run(sigint_under_load(procs["local"], urls["local"],
                                                             client.body, client.headers))
    print(json.dumps(doc["sigint_under_load"]), flush=True)
    port = free_port()
    mem, _ = spawn(cli + ["--max-image-pixels", "4000000"], port, out / "memory.log")
    try:
        doc["memory"] = memory(f"http://127.0.0.1:{port}", mem.pid)
    finally:
        stop(mem)
    print(json.dumps(doc["memory"]), flush=True)
    doc["load_after"] = os.getloadavg()
    (out / "bench-serve.json").write_text(json.dumps(doc, indent=2))


def noop(artifact: str, port: int) -> None:
    """Serve ARTIFACT's signature with a model that answers zeros at once (same engine)."""
    from export.serve.engine import EngineOptions
    from export.serve.protocol import ModelSignature
    from export.serve.routes import AppInfo, build_app

    sig = ModelSignature.from_manifest("resnet20-onnx", json.loads(
        Path(artifact, "manifest.json").read_text()))

    class Noop:
        signature = sig

        def ready(self) -> bool:
            return True

        async def infer(self, x: np.ndarray) -> np.ndarray:
            return np.zeros((len(x), sig.output.shape[1]), np.float32)

    import uvicorn

    from export.serve.engine import bind, uvicorn_config

    app = build_app({sig.name: Noop()}, AppInfo("local-noop", "0"))
    uvicorn.Server(uvicorn_config(app, EngineOptions(port=port))).run(
        sockets=[bind("127.0.0.1", port)])


if __name__ == "__main__":
    main()
