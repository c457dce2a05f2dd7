"""The protocol's gRPC service, in-process: Triton's own gRPC client (unchanged) against a small
fake model and against the trained ResNet-20's real runner; every refusal is the right gRPC
status and the server keeps serving; a taken port is refused naming it; only the given host is
bound; stopping lets calls already received finish; the gRPC load function counts answers."""

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("grpc", reason="grpcio (tritonclient[grpc]) is not installed")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")

import grpc
import tritonclient.grpc as grpcclient
from serve_fakes import MANIFEST
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from export.core.errors import UserError
from export.predict import Predictor
from export.serve.grpc_load import grpc_step
from export.serve.grpc_service import bound_port, start_grpc, stop_grpc
from export.serve.protocol import ModelSignature
from export.serve.served import Overloaded

from built_artifacts import BATCH


def fake_logits(x):
    return x.reshape(len(x), -1)[:, :3] * 2 + 1


class FakeModel:
    """A ServedModel whose answer is a known function of its input; ``mode`` makes it fail."""

    def __init__(self):
        self.signature = ModelSignature.from_manifest("fake", MANIFEST)
        self.mode = "ok"
        self.calls = 0

    def ready(self):
        return self.mode != "down"

    async def infer(self, batch):
        self.calls += 1
        if self.mode == "overloaded":
            raise Overloaded("queue full", retry_after=2.0)
        if self.mode == "broken":
            raise RuntimeError("runner fell over")
        if self.mode == "slow":
            await asyncio.sleep(0.8)
        return fake_logits(batch)


class PredictorModel:
    """The real runner behind the ServedModel contract: resnet-predict's Predictor, computed in
    a worker thread (one batch at a time)."""

    def __init__(self, predictor, name):
        self.predictor = predictor
        self.signature = ModelSignature.from_manifest(name, predictor.manifest)
        self.lock = threading.Lock()

    def ready(self):
        return True

    def _run(self, x):
        with self.lock:
            return self.predictor.logits(x)

    async def infer(self, batch):
        return await asyncio.to_thread(self._run, batch)


@contextlib.contextmanager
def serving(models, host="127.0.0.1", port=0, **kwargs):
    """start_grpc in an event loop of its own thread (the client under test is synchronous);
    yields (server, loop, "host:port")."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    try:
        server = call(start_grpc(models, host, port, server_name="resnet-serve",
                                 version="9.9", **kwargs))
        try:
            yield server, call, f"{host}:{bound_port(server)}"
        finally:
            call(stop_grpc(server, 1.0))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def fake():
    model = FakeModel()
    with serving({"fake": model}) as (_, _, target):
        yield model, target


@pytest.fixture
def stub(fake):
    fake[0].mode = "ok"
    with grpc.insecure_channel(fake[1]) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def batch(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype(np.float32)


def request(x, name="images", datatype="FP32", shape=None, raw=None, model="fake"):
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype,
                                                   shape=list(shape or x.shape))
    return pb.ModelInferRequest(model_name=model, id="r1", inputs=[tensor],
                                raw_input_contents=[x.tobytes() if raw is None else raw])


def test_triton_grpc_client_gets_the_models_answer(fake):
    model, target = fake
    client = grpcclient.InferenceServerClient(target)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fake")
    with pytest.raises(InferenceServerException, match="no version '2'"):
        client.is_model_ready("fake", "2")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "resnet-serve" and server["version"] == "9.9"
    meta = client.get_model_metadata("fake", as_json=True)
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": ["-1", "1", "4",
                                                                                 "4"]}]
    assert meta["outputs"][0]["name"] == "logits" and meta["platform"] == "onnxruntime_onnx"
    x = batch(3)
    inp = grpcclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("fake", [inp], request_id="req-7",
                          outputs=[grpcclient.InferRequestedOutput("logits")])
    np.testing.assert_array_equal(result.as_numpy("logits"), fake_logits(x))
    assert result.get_response().id == "req-7"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    index = client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "fake", "version": "1", "state": "READY"}]
    model.mode = "down"
    try:
        assert not client.is_server_ready() and not client.is_model_ready("fake")
        assert client.get_model_repository_index(as_json=True)["models"][0]["state"] == \
            "UNAVAILABLE"
    finally:
        model.mode = "ok"
    client.close()


def test_typed_contents_are_read_and_answered_in_raw_output(stub):
    x = batch(2, seed=1)
    tensor = pb.ModelInferRequest.InferInputTensor(name="images", datatype="FP32",
                                                   shape=[2, 1, 4, 4])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    resp = stub.ModelInfer(pb.ModelInferRequest(model_name="fake", inputs=[tensor]))
    got = np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(list(resp.outputs[0].shape))
    np.testing.assert_array_equal(got, fake_logits(x))


@pytest.mark.parametrize("case,code,words", [
    ("wrong shape", "INVALID_ARGUMENT", "does not match the model's"),
    ("wrong datatype", "INVALID_ARGUMENT", "datatype 'FP64'"),
    ("batch above range", "INVALID_ARGUMENT", "outside the model's batch range 1..4"),
    ("short raw bytes", "INVALID_ARGUMENT", "raw_input_contents holds 96 bytes"),
    ("wrong input name", "INVALID_ARGUMENT", "takes one input 'images'"),
    ("unknown output", "INVALID_ARGUMENT", "has no output 'probs'"),
    ("NaN input", "INVALID_ARGUMENT", "NaN or infinite"),
    ("typed count wrong", "INVALID_ARGUMENT", "3 values in contents.fp32_contents"),
    ("oversized", "RESOURCE_EXHAUSTED", "larger than max"),
    ("unknown model", "NOT_FOUND", "unknown model 'nope'"),
    ("unknown version", "NOT_FOUND", "no version '2'"),
    ("overloaded", "UNAVAILABLE", "queue full"),
    ("runtime fails", "INTERNAL", "RuntimeError: runner fell over"),
])
def test_refusals_are_the_right_status_and_the_server_keeps_serving(fake, stub, case, code,
                                                                    words):
    model, _ = fake
    x = batch(2)
    req = request(x)
    if case == "wrong shape":
        req = request(x, shape=[2, 1, 5, 4])
    elif case == "wrong datatype":
        req = request(x, datatype="FP64")
    elif case == "batch above range":
        req = request(batch(5))
    elif case == "short raw bytes":
        req = request(x, raw=x.tobytes()[:96])
    elif case == "wrong input name":
        req = request(x, name="pixels")
    elif case == "unknown output":
        req.outputs.add(name="probs")
    elif case == "NaN input":
        x[1, 0, 2, 2] = np.nan
        req = request(x)
    elif case == "typed count wrong":
        req = request(x, raw=b"")
        del req.raw_input_contents[:]
        req.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    elif case == "oversized":  # the limit is a full batch of raw input plus 1 MiB
        req = request(x, raw=b"\0" * (4 * 16 * 4 + (1 << 20) + 1))
    elif case == "unknown model":
        req = request(x, model="nope")
    elif case == "unknown version":
        req.model_version = "2"
    else:
        model.mode = "overloaded" if case == "overloaded" else "broken"
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=10)
    assert err.value.code().name == code, err.value.details()
    assert words in err.value.details()
    if case == "overloaded":
        assert ("retry-after", "2") in err.value.trailing_metadata()
    model.mode = "ok"
    resp = stub.ModelInfer(request(batch(2)), timeout=10)
    assert list(resp.outputs[0].shape) == [2, 3]


def _listening(port):
    """The local addresses listening on ``port`` (IPv4 and IPv6), from /proc."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.split(":")
                if state == "0A" and int(hexport, 16) == port:
                    raw = bytes.fromhex(addr)  # 32-bit words, each in host (little) order
                    ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1]
                                                       for i in range(0, len(raw), 4)))
                    mapped = getattr(ip, "ipv4_mapped", None)
                    found.append(str(mapped or ip))
    return found


def test_a_taken_port_is_refused_naming_it_and_only_the_host_is_bound(fake):
    _, target = fake
    port = int(target.rsplit(":", 1)[1])
    assert _listening(port) == ["127.0.0.1"]
    started = time.perf_counter()
    with pytest.raises(UserError) as err, serving({"fake": FakeModel()}, port=port):
        pass  # a second server on the first one's port: never shared
    assert time.perf_counter() - started < 5
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "in use" in message and "\n" not in message
    with socket.socket() as other:  # a port held by another program
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{taken} is in use"), \
                serving({"fake": FakeModel()}, port=taken):
            pass


def test_stop_lets_calls_already_received_finish():
    model = FakeModel()
    model.mode = "slow"
    with serving({"fake": model}) as (server, call, target):
        outcome = {}

        def slow_call():
            with grpc.insecure_channel(target) as channel:
                try:
                    resp = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                        request(batch(1)), timeout=10)
                    outcome["shape"] = list(resp.outputs[0].shape)
                except grpc.RpcError as exc:
                    outcome["error"] = exc.code().name

        caller = threading.Thread(target=slow_call)
        caller.start()
        deadline = time.monotonic() + 10
        while model.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.perf_counter()
        call(stop_grpc(server, 5.0))
        caller.join(10)
        assert outcome == {"shape": [1, 3]}  # answered, not cut off
        assert time.perf_counter() - started < 3
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(),
                                                                 timeout=2)
        assert err.value.code().name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_calls_beyond_the_concurrency_bound_are_refused_not_queued():
    model = FakeModel()
    model.mode = "slow"
    with serving({"fake": model}, max_concurrent_rpcs=2) as (_, _, target):
        codes, together = [], threading.Barrier(4)

        def one():
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=10)
                together.wait(10)
                try:
                    pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(batch(1)),
                                                                         timeout=10)
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)

        callers = [threading.Thread(target=one) for _ in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(15)
    assert sorted(codes) == ["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]


def test_grpc_load_counts_every_answer(fake):
    model, target = fake
    model.mode = "ok"
    step = asyncio.run(grpc_step(target, "fake", level=4, count=60, duration=20, batch=2))
    row = step.row(2)
    assert row["ok"] == 60 and row["errors"] == 0 and row["concurrency"] == 4
    assert row["images_per_s"] == pytest.approx(2 * row["requests_per_s"])
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    model.mode = "overloaded"
    try:
        step = asyncio.run(grpc_step(target, "fake", level=2, count=10, duration=20))
    finally:
        model.mode = "ok"
    assert step.errors == {"grpc UNAVAILABLE": 10} and not step.latencies


def test_nonfinite_input_is_served_only_when_the_server_allows_it():
    """One rule with HTTP: NaN/Inf refused by default (above), answered with allow_nonfinite
    (the server's --allow-nonfinite)."""
    x = batch(2)
    x[0, 0, 0, 0] = np.nan
    with serving({"fake": FakeModel()}, allow_nonfinite=True) as (_, _, target), \
            grpc.insecure_channel(target) as channel:
        resp = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(x), timeout=10)
    got = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(2, 3)
    np.testing.assert_array_equal(got, fake_logits(x))


def test_bench_client_calls_return_the_batch_the_answer_was_computed_in(fake):
    """resnet-serve bench ARTIFACT --grpc's caller: one ModelInfer per call; the batch comes
    back in the response's batch_size parameter (the request's own size without a batcher)."""
    from export.serve.grpc_load import bench_client

    async def calls():
        call = bench_client(fake[1], "fake", batch(3))
        try:
            return list(await asyncio.gather(*(call() for _ in range(3))))  # 3 first calls
        finally:
            await call.close()

    fake[0].mode = "ok"
    assert asyncio.run(calls()) == [3, 3, 3]
    fake[0].mode = "broken"
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            asyncio.run(calls())
    finally:
        fake[0].mode = "ok"


def test_triton_grpc_client_gets_resnet_predicts_answer(onnx_artifact):
    from sklearn.datasets import load_digits

    with Predictor.load(onnx_artifact) as predictor:
        images = np.rint(load_digits().images[:BATCH.max] * 255 / 16).astype(np.uint8)
        x = predictor.preprocess(images)
        want = predictor.logits(x)
        served = PredictorModel(predictor, "resnet20-onnx")
        with serving({"resnet20-onnx": served}) as (_, _, target):
            client = grpcclient.InferenceServerClient(target)
            meta = client.get_model_metadata("resnet20-onnx", as_json=True)
            assert meta["inputs"][0]["shape"] == ["-1", *map(str, x.shape[1:])]
            for rows in (x[:1], x[:3], x):  # below, inside and at the batch range's edges
                inp = grpcclient.InferInput("images", list(rows.shape), "FP32")
                inp.set_data_from_numpy(rows)
                got = client.infer("resnet20-onnx", [inp]).as_numpy("logits")
                np.testing.assert_allclose(got, want[:len(rows)], rtol=1e-5, atol=1e-5)
                assert (got.argmax(1) == want[:len(rows)].argmax(1)).all()
            client.close()


def test_resnet_serve_grpc_port_answers_as_http_and_sigint_exits_0(onnx_artifact, tmp_path):
    """``resnet-serve ARTIFACT --grpc-port G`` (the local engine, a subprocess, free ports on
    127.0.0.1): tritonclient.grpc's ModelInfer gets the logits HTTP gets, from the same runner;
    the ready line names the gRPC port; SIGINT stops both and exits 0."""
    import signal
    import urllib.request

    from sklearn.datasets import load_digits

    from export.serve.loadgen import free_port, start_server
    from export.serve.protocol import HEADER_LENGTH, decode_response, encode_request

    with Predictor.load(onnx_artifact) as predictor:
        images = np.rint(load_digits().images[:BATCH.max] * 255 / 16).astype(np.uint8)
        x = predictor.preprocess(images).astype(np.float32)
        sig = ModelSignature.from_manifest("resnet20-onnx", predictor.manifest)
    grpc_port, log = free_port(), tmp_path / "server.log"
    with open(log, "wb") as fh:
        proc, url = start_server(str(onnx_artifact), 1, ["--grpc-port", str(grpc_port)], print,
                                 timeout=180, stderr=fh)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready() and client.is_model_ready("resnet20-onnx")
        for rows in (x[:1], x):
            body, headers = encode_request(sig.input, rows)
            req = urllib.request.Request(f"{url}/v2/models/resnet20-onnx/infer", data=body,
                                         headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=30) as resp:
                _, http = decode_response(resp.read(), resp.headers.get(HEADER_LENGTH))
            inp = grpcclient.InferInput("images", list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows)
            got = client.infer("resnet20-onnx", [inp]).as_numpy("logits")
            assert got.shape == http.shape == (len(rows), sig.output.shape[1])
            np.testing.assert_allclose(got, http, rtol=1e-5, atol=1e-6)
            assert (got.argmax(1) == http.argmax(1)).all()
        client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f"gRPC on 127.0.0.1:{grpc_port}" in text and "Traceback" not in text
    with pytest.raises(grpc.RpcError):
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        stub.ServerLive(pb.ServerLiveRequest(), timeout=2)
