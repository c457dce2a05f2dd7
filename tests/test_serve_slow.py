"""resnet-serve under load (slow: each test starts its own server): a replica killed mid-run
never yields a wrong answer and is replaced (both engines); the Ray engine answers Triton's
client as the single-machine engine does; the bench compares in-process and served."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed")

from export.predict import Predictor
from export.serve.loadgen import start_server, stop_server
from export.serve.protocol import HEADER_LENGTH, ModelSignature, decode_response, encode_request

pytestmark = pytest.mark.slow
MODEL = "resnet20-onnx"


@pytest.fixture(scope="module")
def artifact(onnx_artifact):
    """The session's trained ONNX artifact (read-only: built once, never rebuilt here)."""
    return onnx_artifact


def replica_pids(url, want, timeout=60.0):
    """The pids of the model's replicas, as their statistics report them."""
    pids, deadline = set(), time.monotonic() + timeout
    while len(pids) < want and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{MODEL}/stats", timeout=5) as resp:
                pids.add(json.loads(resp.read())["replica"]["pid"])
        except OSError:
            time.sleep(0.2)
    return pids


async def load(url, bodies, want, seconds, concurrency, kill_at, kill):
    """Closed-loop load for ``seconds``; every answer checked against ``want``. Returns
    [(time, outcome)] with outcome "ok", "wrong" or an error kind."""
    import aiohttp

    log, start = [], time.monotonic()
    killed = False

    async def worker(k):
        nonlocal killed
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
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
                            log.append((time.monotonic() - start, f"http {resp.status}"))
                        else:
                            _, got = decode_response(data, resp.headers.get(HEADER_LENGTH))
                            ok = np.allclose(got, want[i % len(bodies)], atol=1e-4, rtol=1e-3)
                            log.append((time.monotonic() - start, "ok" if ok else "wrong"))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    log.append((time.monotonic() - start, type(exc).__name__))
                i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return log


def per_s(log, start, end):
    return sum(1 for t, o in log if o == "ok" and start <= t < end) / (end - start)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_killing_one_of_two_replicas_gives_no_wrong_answer_and_recovers(artifact, tmp_path,
                                                                        engine):
    if engine == "ray":
        pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    sig = ModelSignature.from_manifest(MODEL, json.loads((artifact / "manifest.json").read_text()))
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, *sig.input.shape[1:])).astype(np.float32) for _ in range(8)]
    with Predictor.load(artifact) as predictor:
        want = [predictor.logits(x) for x in xs]
    bodies = [encode_request(sig.input, x) for x in xs]
    with open(tmp_path / "server.log", "wb") as fh:
        proc, url = start_server(str(artifact), 2, ["--threads", "1", "--engine", engine],
                                 print, 180, fh)
    try:
        pids = replica_pids(url, 2)
        assert len(pids) == 2
        victim = min(pids)
        log = asyncio.run(load(url, bodies, want, seconds=20, concurrency=8, kill_at=6,
                               kill=lambda: os.kill(victim, signal.SIGKILL)))
        outcomes = [o for _, o in log]
        assert "wrong" not in outcomes
        errors = [t for t, o in log if o not in ("ok", "wrong")]
        assert all(t >= 6 for t in errors)  # none before the kill
        assert len(errors) <= 16, outcomes  # about the requests in flight on the victim
        assert sum(1 for t, o in log if o == "ok" and t > 12) > 20  # answering again
        new = replica_pids(url, 2, timeout=60)
        assert victim not in new and len(new) == 2  # the engine replaced it
        kinds = sorted({o for o in outcomes if o != "ok"})
        print(f"\nkill at 6.0s: {len(log)} requests, {outcomes.count('ok')} right, 0 wrong, "
              f"{len(errors)} errors {kinds} between {min(errors, default=0):.1f}s and "
              f"{max(errors, default=0):.1f}s; answers/s before {per_s(log, 1, 6):.1f}, "
              f"6-9s {per_s(log, 6, 9):.1f}, 9-20s {per_s(log, 9, 20):.1f}")
    finally:
        stop_server(proc)


def test_bench_on_an_artifact_compares_in_process_and_served(artifact, tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, "-m", "export.serve.cli", "bench", str(artifact),
                             "--concurrency", "1,16", "--requests", "600", "--duration", "6",
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads((out / "serve-bench.json").read_text())
    assert doc["engine"] == "local" and doc["rounds"] == 3
    rows = {(r["concurrency"], r["mode"]): r for r in doc["rows"]}
    assert set(rows) == {(c, m) for c in (1, 16) for m in ("in-process", "http")}
    assert all(r["errors"] == 0 and r["ok"] > 0 for r in rows.values())
    assert rows[16, "http"]["mean_batch"] > 1.5  # requests in flight together were batched
    assert 0 < rows[1, "http"]["throughput_ratio"] < 1.5
    assert (out / "serve-bench.png").stat().st_size > 0
    assert "engine: local" in result.stdout and "vs in-process" in result.stdout


def test_ray_engine_answers_triton_client_like_the_local_engine(artifact, tmp_path):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    x = np.random.default_rng(2).standard_normal((3, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    answers = {}
    for engine in ("local", "ray"):
        with open(tmp_path / f"{engine}.log", "wb") as fh:
            proc, url = start_server(str(artifact), 1, ["--engine", engine], print, 240, fh)
        try:
            with urllib.request.urlopen(f"{url}/v2", timeout=10) as resp:
                assert json.loads(resp.read())["engine"] == engine
            client = Path(__file__).with_name("serve_client.py")
            subprocess.run([sys.executable, str(client), url, MODEL, str(tmp_path / "x.npy"),
                            str(tmp_path / f"{engine}.npz")], check=True, timeout=120)
            answers[engine] = np.load(tmp_path / f"{engine}.npz")["binary"]
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(90) == 0
        assert "Traceback" not in (tmp_path / f"{engine}.log").read_text()
        assert "graceful_shutdown failed" not in (tmp_path / f"{engine}.log").read_text()
    np.testing.assert_array_equal(answers["local"], answers["ray"])
