#!/usr/bin/env python3
"""resnet-serve on a real two-node Ray cluster on this machine, and one node killed under load.

A head and a worker are started with ``ray start`` (each its own ``--num-cpus``, its own
session of processes, loopback node addresses 127.0.0.2 and 127.0.0.3, the dashboard off, token
authentication on with a token file private to the run); ``resnet-serve --address`` deploys the
artifact with ``--autoscale 2:2`` over them. The script then checks, in order:

1. placement: the node each replica runs on (the Ray session its process belongs to);
2. the same answers: the digits through the cluster against ``Predictor.logits`` in-process;
3. a node killed under load: closed-loop load over HTTP on 127.0.0.1, every answer checked,
   and at ``--kill-at`` seconds every process of the worker node SIGKILLed;
4. what Ray listens on (address and port per process), read from /proc.

Everything it started is stopped at the end, by process session, never with ``ray stop`` (which
would stop every Ray on the machine). A JSON summary goes to stdout (and ``--json``).

    PYTHONPATH=. python scripts/ray_two_nodes.py ARTIFACT [--seconds 40] [--kill-at 12]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"  # loopback; Ray refuses 127.0.0.1 as a node IP
RAY = str(Path(sys.executable).with_name("ray"))
MODEL = "resnet20-onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_pids(sid: int) -> list[int]:
    """Every process whose session is ``sid`` (a node started with start_new_session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid:
                    pids.append(int(entry.name))
    return pids


def session_of(pid: int) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    return None


def start_node(args: list[str], log: Path, env: dict[str, str],
               nodes: list[subprocess.Popen[bytes]]) -> None:
    """``ray start ... --block`` in a session of its own (added to ``nodes`` at once, so it is
    stopped whatever happens next); returns once it says it runs."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen([RAY, "start", "--block", *args], stdout=fh, stderr=fh,
                                env=env, start_new_session=True)
    nodes.append(proc)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if b"Ray runtime started" in log.read_bytes():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}: {log.read_text()[-800:]}")
        time.sleep(0.5)
    raise RuntimeError(f"ray start not up within 180 s: {log}")


def stop_session(proc: subprocess.Popen[bytes], grace: float = 20.0) -> int:
    """SIGTERM the node's ``ray start`` (it stops its processes), then SIGKILL what is left of
    its session; returns how many had to be killed."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    left = session_pids(proc.pid)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    return len(left)


def get(url: str, timeout: float = 5) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def replica_pids(url: str, want: int, timeout: float = 60) -> set[int]:
    """Replica pids, as each replica's statistics report them (the call reaches any one)."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < want and time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, ValueError):
            pids.add(get(f"{url}/v2/models/{MODEL}/stats")["replica"]["pid"])  # type: ignore
        time.sleep(0.05)
    return pids


def listening(pids: dict[int, str]) -> list[str]:
    """``label name address:port`` for every listening TCP socket the processes hold (``pids``
    maps each process to its label: the node, or the server)."""
    inodes: dict[str, str] = {}
    for pid, label in pids.items():
        with contextlib.suppress(OSError):
            name = label + " " + Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes[target[8:-1]] = name
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                addr, port = cols[1].split(":")
                raw = bytes.fromhex(addr)
                ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1]
                                                   for i in range(0, len(raw), 4)))
                shown = getattr(ip, "ipv4_mapped", None) or ip
                found.add(f"{inodes[cols[9]]} {shown}:{int(port, 16)}")
    return sorted(found)


def same_answers(url: str, artifact: str) -> dict[str, object]:
    """The digits through the cluster (requests of 1 to 8 images) vs Predictor.logits."""
    from sklearn.datasets import load_digits

    from export.predict import Predictor
    from export.serve.protocol import HEADER_LENGTH, TensorSpec, decode_response, encode_request

    with Predictor.load(artifact) as predictor:
        x = predictor.preprocess(np.rint(load_digits().images[:128] * 255 / 16).astype("uint8"))
        want = predictor.logits(x)
    spec = TensorSpec("images", "FP32", (-1, *x.shape[1:]))
    got, start, size = [], 0, 1
    while start < len(x):
        body, headers = encode_request(spec, x[start:start + size])
        req = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", body, headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            got.append(decode_response(resp.read(), resp.headers.get(HEADER_LENGTH))[1])
        start, size = start + size, size % 8 + 1
    logits = np.concatenate(got)
    return {"images": len(x), "max_abs_diff": float(np.abs(logits - want).max()),
            "top1_equal": int((logits.argmax(1) == want.argmax(1)).sum())}


async def load(url: str, bodies: list, want: list, seconds: float, concurrency: int,
               kill_at: float, kill: Callable[[], Any]) -> list[tuple[float, str]]:
    """Closed-loop load; every answer checked. Returns [(time, "ok" | "wrong" | error)]."""
    import aiohttp

    from export.serve.protocol import HEADER_LENGTH, decode_response

    log: list[tuple[float, str]] = []
    start, killed = time.monotonic(), False

    async def worker(k: int) -> None:
        nonlocal killed
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            i = k
            while time.monotonic() - start < seconds:
                if not killed and time.monotonic() - start > kill_at:
                    killed = True
                    kill()
                body, headers = bodies[i % len(bodies)]
                try:
                    async with session.post(f"{url}/v2/models/{MODEL}/infer", data=body,
                                            headers=headers) as resp:
                        data = await resp.read()
                        if resp.status != 200:
                            outcome = f"http {resp.status}"
                        else:
                            got = decode_response(data, resp.headers.get(HEADER_LENGTH))[1]
                            ok = np.allclose(got, want[i % len(bodies)], atol=1e-4, rtol=1e-3)
                            outcome = "ok" if ok else "wrong"
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    outcome = type(exc).__name__
                log.append((time.monotonic() - start, outcome))
                i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return log


def kill_test(url: str, artifact: str, worker_sid: int, opts: argparse.Namespace
              ) -> dict[str, object]:
    from export.predict import Predictor
    from export.serve.protocol import TensorSpec, encode_request

    rng = np.random.default_rng(1)
    with Predictor.load(artifact) as predictor:
        spec = TensorSpec("images", "FP32", (-1, *predictor.preprocess(
            np.zeros((1, 8, 8), "uint8")).shape[1:]))
        xs = [rng.standard_normal((1, *spec.shape[1:])).astype(np.float32) for _ in range(8)]
        want = [predictor.logits(x) for x in xs]
    bodies = [encode_request(spec, x) for x in xs]
    killed: list[int] = []

    def kill() -> None:
        for pid in session_pids(worker_sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    log = asyncio.run(load(url, bodies, want, opts.seconds, opts.concurrency, opts.kill_at, kill))
    outcomes = [o for _, o in log]
    errors = [(t, o) for t, o in log if o not in ("ok", "wrong")]

    def per_s(a: float, b: float) -> float:
        return round(sum(1 for t, o in log if o == "ok" and a <= t < b) / (b - a), 1)

    return {"requests": len(log), "ok": outcomes.count("ok"), "wrong": outcomes.count("wrong"),
            "errors": len(errors), "error_kinds": sorted({o for _, o in errors}),
            "errors_between_s": [round(min((t for t, _ in errors), default=0), 1),
                                 round(max((t for t, _ in errors), default=0), 1)],
            "killed_processes": len(killed), "kill_at_s": opts.kill_at,
            "ok_per_s_before": per_s(1, opts.kill_at),
            "ok_per_s_first_5s_after": per_s(opts.kill_at, opts.kill_at + 5),
            "ok_per_s_rest": per_s(opts.kill_at + 5, opts.seconds),
            "ok_in_last_5s": sum(1 for t, o in log if o == "ok" and t >= opts.seconds - 5)}


def start_cluster(tmp: Path, env: dict[str, str], cpus: int,
                  nodes: list[subprocess.Popen[bytes]]) -> int:
    """Head, then worker (appended to ``nodes`` as they start); returns the GCS port."""
    gcs = free_port()
    common = ["--num-cpus", str(cpus), "--disable-usage-stats", "--temp-dir", str(tmp / "ray")]
    head = ["--head", "--include-dashboard", "false", "--node-ip-address", HEAD_IP,
            "--port", str(gcs),
            "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), *common]
    start_node(head, tmp / "head.log", env, nodes)
    worker = ["--address", f"{HEAD_IP}:{gcs}", "--node-ip-address", WORKER_IP,
              "--dashboard-agent-listen-port", str(free_port()), *common]
    start_node(worker, tmp / "worker.log", env, nodes)
    return gcs


def serve(artifact: str, gcs: int, tmp: Path, env: dict[str, str]
          ) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    started = time.monotonic()
    with open(tmp / "serve.log", "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "export.serve.cli", artifact, "--address",
             f"{HEAD_IP}:{gcs}", "--autoscale", "2:2", "--threads", "1", "--port", str(port)],
            stdout=fh, stderr=fh, env=env)
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() - started < 300:
        if proc.poll() is not None:
            raise RuntimeError(f"resnet-serve exited: {(tmp / 'serve.log').read_text()[-800:]}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2)
            return proc, url, time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError("resnet-serve not ready within 300 s")


def auth_check(gcs: int, env: dict[str, str]) -> dict[str, object]:
    """``ray status`` against the head with the token and without it (token mode, no token
    given): the second must be refused."""
    def status(environ: dict[str, str]) -> tuple[int, str, str]:
        out = subprocess.run([RAY, "status", "--address", f"{HEAD_IP}:{gcs}"], env=environ,
                             capture_output=True, text=True, timeout=120)
        lines = (out.stdout + out.stderr).strip().splitlines()
        return out.returncode, (lines or [""])[-1][:200], out.stdout

    rc, _, text = status(env)
    nodes = text.count("node_")
    bare = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    bare_rc, bare_line, _ = status(bare)
    return {"with_token_rc": rc, "nodes_listed": nodes, "without_token_rc": bare_rc,
            "without_token_says": bare_line}


def run(opts: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    nodes: list[subprocess.Popen[bytes]] = []
    server = None
    doc: dict[str, object] = {"artifact": opts.artifact, "cpus_per_node": opts.cpus,
                              "load_before": [round(x, 1) for x in os.getloadavg()]}
    try:
        gcs = start_cluster(tmp, env, opts.cpus, nodes)
        head, worker = nodes
        server, url, ready_s = serve(opts.artifact, gcs, tmp, env)
        doc["ready_s"] = round(ready_s, 1)
        doc["http_port"] = int(url.rsplit(":", 1)[1])
        where = {head.pid: "head", worker.pid: "worker"}
        pids = replica_pids(url, 2)
        doc["replicas"] = {str(p): where.get(session_of(p) or 0, "?") for p in pids}
        doc["listening"] = listening({server.pid: "resnet-serve"}
                                     | {p: "head" for p in session_pids(head.pid)}
                                     | {p: "worker" for p in session_pids(worker.pid)})
        doc["auth"] = auth_check(gcs, env)
        doc["same_answers"] = same_answers(url, opts.artifact)
        doc["kill"] = kill_test(url, opts.artifact, worker.pid, opts)
        after = replica_pids(url, 2, timeout=30)
        doc["replicas_after"] = {str(p): where.get(session_of(p) or 0, "dead") for p in after}
        doc["load_after"] = [round(x, 1) for x in os.getloadavg()]
    finally:
        if server is not None:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(90)
            if server.poll() is None:
                server.kill()
        doc["killed_at_cleanup"] = sum(stop_session(p) for p in reversed(nodes))
        doc["left_running"] = sum(len(session_pids(p.pid)) for p in nodes)
        shutil.rmtree(tmp, ignore_errors=True)
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--cpus", type=int, default=2, help="--num-cpus of each node")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--kill-at", type=float, default=12.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args()
    doc = run(opts)
    text = json.dumps(doc, indent=2)
    if opts.json:
        opts.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
