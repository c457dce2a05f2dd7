"""The shared application and the batcher without a server: routes driven as ASGI calls against
stand-in models (ready or not, overloaded, failing), every hostile JSON body a 4xx in valid JSON,
and batches that are fair to small requests and bounded in images."""

import asyncio
import json
import time
from collections import deque

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")

from serve_fakes import MANIFEST

from export.serve.batcher import Batcher, BatchSettings, _Waiting, fair_batch
from export.serve.protocol import HEADER_LENGTH, ModelSignature, encode_request
from export.serve.routes import AppInfo, build_app
from export.serve.served import Overloaded
from export.serve.stats import Stats
from export.serve.uploads import Limits

SIG = ModelSignature.from_manifest("m", MANIFEST)


class Fake:
    """A ServedModel: logits are the row sums; ``mode`` makes it unready, full or broken."""

    def __init__(self, mode="ok"):
        self.mode = mode
        self.signature = SIG

    def ready(self):
        return self.mode != "down"

    async def infer(self, x):
        if self.mode == "full":
            raise Overloaded("queue full", 2.0)
        if self.mode == "broken":
            raise RuntimeError("runtime exploded\nsecond line")
        if self.mode == "nan":
            return np.full((len(x), 3), np.nan, np.float32)
        return np.repeat(x.reshape(len(x), -1).sum(1, keepdims=True), 3, axis=1)


def call(app, method, path, body=b"", headers=(), query=b""):
    """One request through the ASGI app: (status, headers, body)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query, "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    out = {"body": b""}
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["headers"], out["body"]


def app_for(mode="ok", **limits):
    return build_app({"m": Fake(mode)}, AppInfo("local", "0", Limits(**limits)))


def infer_json(**change):
    doc = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 4, 4],
                       "data": [0.5] * 16}]}
    doc.update(change)
    return json.dumps(doc).encode()


def test_readiness_is_503_while_a_model_has_no_live_runner():
    up, down = app_for(), app_for("down")
    assert call(up, "GET", "/v2/health/ready")[0] == 200
    assert call(down, "GET", "/v2/health/ready")[0] == 503
    assert call(down, "GET", "/v2/models/m/ready")[0] == 503
    assert call(down, "GET", "/v2/health/live")[0] == 200
    _, _, body = call(down, "POST", "/v2/repository/index")
    assert json.loads(body) == [{"name": "m", "version": "1", "state": "UNAVAILABLE"}]
    meta = json.loads(call(up, "GET", "/v2")[2])
    assert meta["engine"] == "local" and "binary_tensor_data" in meta["extensions"]


def test_a_full_queue_is_503_with_retry_after():
    status, headers, body = call(app_for("full"), "POST", "/v2/models/m/infer", infer_json())
    assert status == 503 and headers["retry-after"] == "2"
    assert json.loads(body) == {"error": "queue full"}


def test_a_runtime_failure_is_a_one_line_500_in_json():
    status, _, body = call(app_for("broken"), "POST", "/v2/models/m/infer", infer_json())
    assert status == 500
    assert json.loads(body)["error"] == "inference failed: RuntimeError: runtime exploded"


def test_routes_answer_and_unknown_paths_are_json():
    app = app_for()
    status, headers, body = call(app, "POST", "/v2/models/m/infer", infer_json(id="r1"))
    assert status == 200 and headers["x-batch-size"] == "1"
    doc = json.loads(body)
    assert doc["id"] == "r1" and doc["outputs"][0]["data"] == [8.0, 8.0, 8.0]
    assert call(app, "GET", "/v2/models/m/versions/1")[0] == 200
    for method, path, want in (("GET", "/nowhere", 404), ("GET", "/v2/models/m/infer", 405),
                               ("GET", "/v2/models/other", 404),
                               ("GET", "/v2/models/m/versions/2", 404)):
        status, _, body = call(app, method, path)
        assert status == want and json.loads(body)["error"], (path, body)


BIG = "1" + "0" * 400


@pytest.mark.parametrize("body,fragment", [
    (infer_json().replace(b"0.5", b"NaN", 1), "NaN is not a JSON number"),
    (infer_json().replace(b"0.5", b"Infinity", 1), "Infinity is not a JSON number"),
    (b"[" * 100_000 + b"]" * 100_000, "nesting deeper"),
    (infer_json().replace(b"[0.5, ", b"[" * 15 + b"0.5" + b"]" * 14 + b", ", 1),
     "nesting deeper"),
    (infer_json(parameters=5), "parameters must be a JSON object"),
    (infer_json(parameters={"binary_data_output": "yes"}), "must be true or false"),
    (infer_json(id=5), "\"id\" must be a string"),
    (infer_json(outputs="logits"), "\"outputs\" must be a list"),
    (infer_json(inputs=[5]), "takes one input"),
    (infer_json().replace(b"0.5", BIG.encode(), 1), "out of range"),
    (infer_json().replace(b"0.5", b"1e400", 1), "out of range"),
    (infer_json().replace(b"0.5", b"1e39", 1), "out of range for float32"),
    (infer_json().replace(b"0.5", b"\"0.5\"", 1), "strings"),
    (infer_json().replace(b"0.5", b"true", 1), "booleans"),
    (infer_json().replace(b"0.5", b"null", 1), "nulls"),
])
def test_every_hostile_json_body_is_a_400_in_valid_json(body, fragment):
    status, _, out = call(app_for(), "POST", "/v2/models/m/infer", body)
    assert status == 400, out
    assert fragment in json.loads(out)["error"]


def test_nonfinite_binary_input_is_refused_unless_allowed_and_never_emitted_as_json():
    x = np.full((1, 1, 4, 4), np.nan, np.float32)
    body, headers = encode_request(SIG.input, x, binary_output=False)
    status, _, out = call(app_for(), "POST", "/v2/models/m/infer", body, headers.items())
    assert status == 400 and "NaN or infinite" in json.loads(out)["error"]
    status, _, out = call(app_for("nan", allow_nonfinite=True), "POST", "/v2/models/m/infer",
                          body, headers.items())
    assert status == 500 and "binary output" in json.loads(out)["error"]  # valid JSON, no NaN
    body, headers = encode_request(SIG.input, x, binary_output=True)
    status, got, out = call(app_for("nan", allow_nonfinite=True), "POST", "/v2/models/m/infer",
                            body, headers.items())
    assert status == 200 and np.isnan(np.frombuffer(out[int(got[HEADER_LENGTH]):], "<f4")).all()


@pytest.mark.parametrize("query", [b"top_k=abc", b"top_k=-1", b"top_k=0", b"top_k=1e3"])
def test_classify_top_k_must_be_a_whole_number(query):
    status, _, out = call(app_for(), "POST", "/v2/models/m/classify", b"x", query=query)
    assert status == 400 and "top_k" in json.loads(out)["error"]


def waiting(n, t=0.0):
    return _Waiting(np.zeros((n, 1)), None, t)  # the future is not needed to form batches


def test_batches_give_every_waiting_request_a_share():
    big, small = waiting(256), waiting(1)
    queue = deque([big, waiting(256), waiting(256), waiting(256), small])
    parts = fair_batch(queue, 8)
    assert sum(stop - start for _, start, stop in parts) == 8
    assert any(item is small for item, _, _ in parts)  # the small one rides in this batch
    assert small not in queue and big in queue and big.taken < 8
    queue = deque([waiting(3), waiting(2)])
    parts = fair_batch(queue, 8)
    assert [(stop - start) for _, start, stop in parts] == [3, 2] and not queue


def test_small_requests_are_not_starved_by_large_ones():
    calls = []

    def run(x):
        calls.append(len(x))
        time.sleep(0.002)
        return np.zeros((len(x), 3), np.float32) + x.reshape(len(x), -1)[:, :1]

    async def scenario():
        batcher = Batcher(run, BatchSettings(8, 0.001, 4 * 256), Stats("m"))
        batcher.start()
        bigs = [asyncio.ensure_future(batcher.infer(np.full((256, 1), i, np.float32)))
                for i in range(4)]
        await asyncio.sleep(0.005)
        started = time.perf_counter()
        logits, _ = await batcher.infer(np.full((1, 1), 7.0, np.float32))
        small_s = time.perf_counter() - started
        results = await asyncio.gather(*bigs)
        big_s = time.perf_counter() - started
        await batcher.stop()
        return logits, small_s, big_s, results

    logits, small_s, big_s, results = asyncio.run(scenario())
    assert logits[0, 0] == 7.0
    assert all((r[0][:, 0] == i).all() and len(r[0]) == 256 for i, r in enumerate(results))
    assert max(calls) <= 8  # never more images than --max-batch
    assert small_s < big_s / 5, (small_s, big_s)


def test_a_full_queue_refuses_at_once():
    async def scenario():
        batcher = Batcher(lambda x: (time.sleep(0.05), np.zeros((len(x), 3)))[1],
                          BatchSettings(4, 0.0, 8), Stats("m"))
        batcher.start()
        first = asyncio.ensure_future(batcher.infer(np.zeros((4, 1), np.float32)))
        await asyncio.sleep(0.01)  # the first batch computes; the next two wait
        queued = [asyncio.ensure_future(batcher.infer(np.zeros((4, 1), np.float32)))
                  for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await batcher.infer(np.zeros((4, 1), np.float32))
        await asyncio.gather(first, *queued)
        await batcher.stop()

    asyncio.run(scenario())


def test_a_lone_client_does_not_wait_for_a_batch_that_will_not_come():
    """With a 1 s batch wait, one client at a time is answered at once; two requests that
    arrive together still share a batch."""
    async def scenario():
        batcher = Batcher(lambda x: np.zeros((len(x), 3), np.float32),
                          BatchSettings(8, 1.0, 64), Stats("m"))
        batcher.start()
        started = time.perf_counter()
        for _ in range(3):
            await batcher.infer(np.zeros((1, 1), np.float32))
        lone_s = time.perf_counter() - started
        together = await asyncio.gather(*(batcher.infer(np.zeros((1, 1), np.float32))
                                          for _ in range(2)))
        await batcher.stop()
        return lone_s, [formed for _, formed in together]

    lone_s, formed = asyncio.run(scenario())
    assert lone_s < 0.5, lone_s
    assert formed == [2, 2]
