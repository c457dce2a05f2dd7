"""The Ray engine on a cluster: ``--autoscale MIN:MAX`` becomes Ray Serve's autoscaling config
(checked without Ray running), and (slow) a real two-node Ray cluster started with ``ray start``
on this machine by scripts/ray_two_nodes.py: replicas on both nodes, the same answers as
in-process, a node killed under load without a wrong answer, everything stopped at the end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from export.serve.cli import main
from export.serve.server import ServeConfig, size_threads

MODEL = "resnet20-onnx"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ray_two_nodes.py"


@pytest.mark.parametrize("value", ["2:1", "0:3", "3", "a:b", "1:257"])
def test_autoscale_bounds_are_checked_in_one_line(value, tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path), "--autoscale", value])
    assert result.exit_code == 2
    assert "MIN:MAX" in result.output and "Traceback" not in result.output


def test_autoscale_and_replicas_together_are_refused(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path), "--autoscale", "2:4", "--replicas", "3"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --replicas and --autoscale both given: give one (--autoscale MIN:MAX sets the "
        "replica count)"]


def test_autoscale_is_the_ray_engines_and_implies_it(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path), "--engine", "local", "--autoscale", "1:2"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --autoscale is Ray Serve's (--engine ray); the local engine serves a fixed "
        "--replicas"]
    assert ServeConfig([], autoscale=(1, 2)).engine_name() == "ray"
    assert ServeConfig([]).engine_name() == "local"


def test_threads_are_shared_among_the_minimum_replicas():
    cfg = ServeConfig([], autoscale=(2, 6))
    assert size_threads(cfg, models=1, cpus=8)[:2] == (4, 4.0)
    assert size_threads(ServeConfig([], replicas=4), models=1, cpus=8)[:2] == (2, 2.0)


def test_autoscale_becomes_ray_serves_autoscaling_config():
    pytest.importorskip("ray.serve", reason="the serve extra (Ray Serve) is not installed")
    from export.serve.deployment import ModelOptions, model_app

    opts = ModelOptions("/nowhere", "m", "auto", 1, 8, 0.002, {})
    fixed = model_app(opts, 3, 1.0)._bound_deployment
    assert fixed.num_replicas == 3 and fixed._deployment_config.autoscaling_config is None
    scaled = model_app(opts, 1, 1.0, (2, 5))._bound_deployment._deployment_config
    auto = scaled.autoscaling_config
    assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas) == (2, 2, 5)
    assert auto.target_ongoing_requests == 8  # a full batch each before another replica
    assert scaled.max_ongoing_requests == 16


@pytest.mark.slow
def test_two_node_cluster_same_answers_and_a_node_killed_under_load(onnx_artifact, tmp_path):
    pytest.importorskip("ray.serve", reason="the serve extra (Ray Serve) is not installed")
    out = tmp_path / "cluster.json"
    result = subprocess.run([sys.executable, str(SCRIPT), str(onnx_artifact), "--json", str(out),
                             "--seconds", "40", "--kill-at", "12"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(out.read_text())
    print("\n" + json.dumps(doc, indent=1))
    assert sorted(doc["replicas"].values()) == ["head", "worker"]  # spread over both nodes
    same = doc["same_answers"]
    assert same["max_abs_diff"] <= 1e-5 and same["top1_equal"] == same["images"] == 128
    kill = doc["kill"]
    assert kill["wrong"] == 0 and kill["killed_processes"] > 0
    assert kill["errors"] <= 16  # about the requests in flight on the killed node
    assert kill["errors_between_s"][0] >= kill["kill_at_s"] or kill["errors"] == 0
    assert kill["ok_in_last_5s"] > 20  # the head node still answers
    assert set(doc["replicas_after"].values()) == {"head"}  # the lost replica re-placed there
    assert doc["auth"]["with_token_rc"] == 0 and doc["auth"]["without_token_rc"] != 0
    assert doc["left_running"] == 0
    http = [line for line in doc["listening"] if line.endswith(f":{doc['http_port']}")]
    assert http and all(" 127.0.0.1:" in line for line in http)  # the proxies bind --host


async def _load_and_watch(url, body, headers, concurrency, seconds, settle):
    """Closed-loop load on the model while one task reads which replica answers /stats;
    stops ``settle`` seconds after a second replica appears, or after ``seconds``. Returns
    ({pid: first seen at}, outcome counts)."""
    import asyncio
    import time

    import aiohttp

    seen, counts, start = {}, {}, time.monotonic()
    stop_at = [start + seconds]

    async def infer(session):
        while time.monotonic() < stop_at[0]:
            try:
                async with session.post(f"{url}/v2/models/{MODEL}/infer", data=body,
                                        headers=headers) as resp:
                    await resp.read()
                    kind = "ok" if resp.status == 200 else f"http {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                kind = type(exc).__name__
            counts[kind] = counts.get(kind, 0) + 1

    async def watch(session):
        while time.monotonic() < stop_at[0]:
            async with session.get(f"{url}/v2/models/{MODEL}/stats") as resp:
                pid = (await resp.json())["replica"]["pid"]
            if pid not in seen:
                seen[pid] = round(time.monotonic() - start, 1)
                if len(seen) == 2:
                    stop_at[0] = min(stop_at[0], time.monotonic() + settle)
            await asyncio.sleep(0.25)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(watch(session), *(infer(session) for _ in range(concurrency)))
    return seen, counts


@pytest.mark.slow
def test_autoscale_adds_a_replica_under_load(onnx_artifact, tmp_path):
    """--autoscale 1:2 on local Ray: one replica idle, a second one while 48 requests are in
    flight (more than a full batch of 8 per replica), answering without errors."""
    pytest.importorskip("ray.serve", reason="the serve extra (Ray Serve) is not installed")
    import asyncio

    import numpy as np

    from export.serve.loadgen import start_server, stop_server
    from export.serve.protocol import ModelSignature, encode_request

    sig = ModelSignature.from_manifest(MODEL, json.loads((onnx_artifact / "manifest.json")
                                                         .read_text()))
    x = np.zeros((1, *sig.input.shape[1:]), np.float32)
    body, headers = encode_request(sig.input, x)
    with open(tmp_path / "server.log", "wb") as fh:
        proc, url = start_server(str(onnx_artifact), 1, ["--autoscale", "1:2", "--threads", "1"],
                                 print, 240, fh)
    try:
        seen, counts = asyncio.run(_load_and_watch(url, body, headers, 48, 150, 5))
    finally:
        stop_server(proc)
    print(f"\nreplicas first seen at (s): {sorted(seen.values())}; outcomes {counts}")
    assert len(seen) == 2, (seen, (tmp_path / "server.log").read_text()[-2000:])
    assert set(counts) == {"ok"}
