"""resnet-serve end to end on the single-machine engine (the default): one small server (the
trained ResNet-20 of built_artifacts, one replica) answers Triton's own HTTP client (in a
subprocess), JSON and binary, as resnet-predict answers; refuses bad requests with the
protocol's errors and keeps serving; classifies image files; and, interrupted under load,
answers every request it received and exits 0."""

import gzip
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")

from export.predict import Predictor
from export.serve.loadgen import start_server
from export.serve.protocol import HEADER_LENGTH

from built_artifacts import BATCH

CLIENT = Path(__file__).with_name("serve_client.py")
MODEL = "resnet20-onnx"  # named from its manifest: <model>-<format>


@pytest.fixture(scope="module")
def artifact(onnx_artifact):
    """The session's trained ONNX artifact (read-only: built once, never rebuilt here)."""
    return onnx_artifact


@pytest.fixture(scope="module")
def chw(artifact):
    spec = Predictor.load(artifact).spec
    return spec.in_chans, spec.input_size, spec.input_size


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "wb") as fh:
        proc, url = start_server(str(artifact), 1, ["--batch-wait-ms", "5"], print,
                                 timeout=180, stderr=fh)
    yield proc, url, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def post(url, body, headers=None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def json_request(x, dtype="FP32", shape=None):
    return json.dumps({"inputs": [{"name": "images", "datatype": dtype,
                                   "shape": list(shape or x.shape),
                                   "data": x.ravel().tolist()}]}).encode()


def digits_batch(n):
    from sklearn.datasets import load_digits

    images = load_digits().images[:n]  # 0..16 floats, 8x8
    return np.rint(images * 255 / 16).astype(np.uint8)


def test_triton_client_gets_resnet_predicts_answer_json_and_binary(server, artifact, tmp_path):
    _, url, _ = server
    with Predictor.load(artifact) as predictor:
        x = predictor.preprocess(digits_batch(5))
        want = predictor.logits(x)
        manifest = predictor.manifest
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, str(CLIENT), url, MODEL, str(tmp_path / "x.npy"),
                    str(tmp_path / "out.npz")], check=True, timeout=120)
    got = np.load(tmp_path / "out.npz")
    tol = next(r["tolerance"] for r in manifest["parity"]["runs"]
               if r["precision"] == manifest["precision"])
    for kind in ("json", "binary"):
        assert got[kind].shape == want.shape
        np.testing.assert_allclose(got[kind], want, atol=tol["atol"], rtol=tol["rtol"])
        assert (got[kind].argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("case", [
    "wrong shape", "wrong datatype", "batch above range", "not json", "lying binary header",
    "oversized", "unknown model", "not an image", "bad gzip"])
def test_bad_requests_get_a_protocol_error_and_the_replica_keeps_serving(server, chw, case):
    _, url, _ = server
    infer = f"{url}/v2/models/{MODEL}/infer"
    x = np.zeros((1, *chw), dtype=np.float32)
    raw = np.zeros((2, *chw), dtype="<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [2, *chw],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    want = 400
    if case == "wrong shape":
        status, _, body = post(infer, json_request(np.zeros((1, chw[0], 28, 28), np.float32)))
    elif case == "wrong datatype":
        status, _, body = post(infer, json_request(x, dtype="FP64"))
    elif case == "batch above range":
        status, _, body = post(infer, json_request(np.zeros((BATCH.max + 1, *chw), np.float32)))
    elif case == "not json":
        status, _, body = post(infer, b"{this is not json",
                               {"Content-Type": "application/json"})
    elif case == "lying binary header":  # says 2 images, carries 1.5
        status, _, body = post(infer, header + raw[: len(raw) * 3 // 4],
                               {HEADER_LENGTH: str(len(header))})
    elif case == "oversized":
        want = 413
        status, _, body = post(infer, b" " * (BATCH.max * int(np.prod(chw)) * 24 + (1 << 20) + 1))
    elif case == "unknown model":
        want = 404
        status, _, body = post(f"{url}/v2/models/nope/infer", json_request(x))
    elif case == "not an image":
        status, _, body = post(f"{url}/v2/models/{MODEL}/classify", b"GIF89a not really")
    else:
        status, _, body = post(infer, b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"})
    assert status == want, body
    assert json.loads(body)["error"]
    status, headers, body = post(infer, json_request(x), {"Content-Type": "application/json"})
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["shape"] == [1, 10]
    assert int(headers["x-batch-size"]) >= 1


def test_gzip_request_and_binary_answer(server, chw):
    _, url, _ = server
    x = np.random.default_rng(0).standard_normal((3, *chw)).astype(np.float32)
    doc = json.loads(json_request(x))
    doc["parameters"] = {"binary_data_output": True}
    status, headers, body = post(f"{url}/v2/models/{MODEL}/infer",
                                 gzip.compress(json.dumps(doc).encode()),
                                 {"Content-Encoding": "gzip"})
    assert status == 200, body
    length = int(headers[HEADER_LENGTH])
    out = json.loads(body[:length])["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 3 * 10 * 4 == len(body) - length


def test_classify_route_labels_files_as_resnet_predict_does(server, artifact, tmp_path):
    _, url, _ = server
    paths = []
    for i, img in enumerate(digits_batch(3)):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).convert("RGB").save(paths[-1])  # RGB: converted as training does
    with Predictor.load(artifact) as predictor:
        want = predictor.predict_files(paths, top=3)
    boundary = "----resnetserve"
    parts = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{p.name}\""
        f"\r\nContent-Type: image/png\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
        for p in paths) + f"--{boundary}--\r\n".encode()
    status, _, body = post(f"{url}/v2/models/{MODEL}/classify?top_k=3", parts,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, body
    results = json.loads(body)["results"]
    assert [r["file"] for r in results] == [p.name for p in paths]
    for result, top in zip(results, want):
        assert [t["index"] for t in result["top"]] == [t.index for t in top]
        assert result["converted"].startswith("RGB -> grayscale")
    status, _, body = post(f"{url}/v2/models/{MODEL}/classify?top_k=1", paths[0].read_bytes())
    assert status == 200 and json.loads(body)["results"][0]["top"][0]["index"] == want[0][0].index


def test_health_metadata_config_and_statistics(server, chw):
    _, url, _ = server

    def get(path):
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")

    assert get("/v2/health/live")[0] == 200 and get("/v2/health/ready")[0] == 200
    assert "binary_tensor_data" in get("/v2")[1]["extensions"]
    meta = get(f"/v2/models/{MODEL}")[1]
    assert meta["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": [-1, *chw]}
    assert get(f"/v2/models/{MODEL}/versions/1")[1] == meta
    assert get(f"/v2/models/{MODEL}/config")[1]["max_batch_size"] == BATCH.max
    stats = get(f"/v2/models/{MODEL}/stats")[1]["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 1
    assert all(1 <= b["batch_size"] <= BATCH.max for b in stats["batch_stats"])


def test_sigint_under_load_answers_every_request_received_and_exits_0(server, chw):
    """8 clients keep requests in flight; SIGINT at 1 s: every request the server received is
    answered (none cut off: "Server disconnected"), then it stops accepting and exits 0."""
    import asyncio

    import aiohttp

    proc, url, log = server
    x = np.zeros((1, *chw), np.float32)
    body, headers = json_request(x), {"Content-Type": "application/json"}
    outcomes = []

    async def client(session):
        while len(outcomes) < 20_000:
            try:
                async with session.post(f"{url}/v2/models/{MODEL}/infer", data=body,
                                        headers=headers) as resp:
                    await resp.read()
                    outcomes.append(("answered", time.monotonic()) if resp.status == 200
                                    else (f"http {resp.status}", time.monotonic()))
            except aiohttp.ClientConnectorError:  # refused: the server no longer accepts
                outcomes.append(("refused", time.monotonic()))
                return
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                outcomes.append((type(exc).__name__, time.monotonic()))
                return

    async def run():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            tasks = [asyncio.ensure_future(client(session)) for _ in range(8)]
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            return signalled

    signalled = asyncio.run(run())
    kinds = {kind for kind, _ in outcomes}
    assert kinds <= {"answered", "refused"}, kinds  # nothing disconnected without an answer
    assert sum(1 for kind, t in outcomes if kind == "answered" and t < signalled) > 10
    assert proc.wait(20) == 0
    text = log.read_text()
    assert "draining" in text and "Traceback" not in text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/v2/health/live", timeout=5)
