"""The single-machine engine against hostile clients, on loopback, bounded in count and time:
slow-body and idle connections while good clients are answered, oversize chunked and multipart
bodies refused while streaming, a 9000x9000 PNG refused from its header, a taken port refused
in one line, every socket on --host, and SIGTERM exits 0 within its bound."""

import json
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("uvicorn", reason="the serve extra is not installed")

from export.serve.loadgen import start_server
from export.serve.protocol import ModelSignature, encode_request
from export.serve.uploads import LINGER, UPLOAD_LIMIT

MODEL = "resnet20-onnx"
TIMEOUT = 1.0  # the server's --request-timeout here


@pytest.fixture(scope="module")
def server(onnx_artifact, tmp_path_factory):
    log = tmp_path_factory.mktemp("hardening") / "server.log"
    with open(log, "wb") as fh:
        proc, url = start_server(str(onnx_artifact), 1,
                                 ["--request-timeout", str(TIMEOUT), "--keep-alive", "1"],
                                 print, timeout=180, stderr=fh)
    yield proc, url, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def good_request(onnx_artifact):
    sig = ModelSignature.from_manifest(MODEL, json.loads(
        (onnx_artifact / "manifest.json").read_text()))
    x = np.zeros((1, *sig.input.shape[1:]), np.float32)
    return encode_request(sig.input, x)


def port_of(url):
    return int(url.rsplit(":", 1)[1])


def connect(url):
    return socket.create_connection(("127.0.0.1", port_of(url)), timeout=5)


def answer(sock, limit=5.0):
    """What the server sent before closing (b"" if it closed without a word)."""
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def post(url, body, headers):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def test_slow_body_and_idle_clients_cannot_stop_service(server, good_request):
    _, url, _ = server
    body, headers = good_request
    slow, idle = [], [connect(url) for _ in range(50)]
    for _ in range(50):
        s = connect(url)
        s.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
                  "Content-Length: 100000\r\n\r\n".encode())
        slow.append(s)
    stop = threading.Event()

    def trickle():
        while not stop.wait(0.2):
            for s in slow:
                try:
                    s.send(b"{")
                except OSError:
                    pass

    dripper = threading.Thread(target=trickle, daemon=True)
    dripper.start()
    latencies, started = [], time.monotonic()
    while time.monotonic() - started < TIMEOUT * 2.5:
        t0 = time.perf_counter()
        assert post(f"{url}/v2/models/{MODEL}/infer", body, headers) == 200
        latencies.append(time.perf_counter() - t0)
    stop.set()
    dripper.join()
    assert len(latencies) > 10 and np.percentile(latencies, 99) < 1.0
    for s in slow:  # every slow upload got 408 in JSON and was closed
        got = answer(s)
        assert got.startswith(b"HTTP/1.1 408"), got[:80]
        assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]
        s.close()
    for s in idle:  # idle connections are closed too, without a request there is nothing to say
        assert answer(s).startswith((b"", b"HTTP/1.1 408"))
        s.close()


def _refused_while_streaming(url, path, head, total):
    """Send a chunked body of up to ``total`` bytes; (the answer, bytes sent before it)."""
    sock = connect(url)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{head}"
                 "\r\n".encode())
    chunk, sent = b"0" * 65536, 0
    try:
        while sent < total:
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
    except OSError:
        pass
    got = answer(sock)
    sock.close()
    return got, sent


@pytest.mark.parametrize("route", ["infer", "classify multipart"])
def test_oversize_chunked_bodies_are_refused_while_streaming(server, route):
    _, url, _ = server
    if route == "infer":
        path, head, limit = f"/v2/models/{MODEL}/infer", "", 8 * 256 * 24 + (1 << 20)
    else:
        path, limit = f"/v2/models/{MODEL}/classify", UPLOAD_LIMIT
        head = "Content-Type: multipart/form-data; boundary=xyz\r\n"
    got, sent = _refused_while_streaming(url, path, head, limit + LINGER + (64 << 20))
    assert got.startswith(b"HTTP/1.1 413"), got[:80]
    assert "limit" in json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]
    assert sent < limit + LINGER + (16 << 20)  # stopped reading near the limit


def png_header_only(width, height):
    """A PNG whose header says width x height (its pixel data is a token)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_a_9000_by_9000_png_is_refused_from_its_header(server):
    _, url, _ = server
    started = time.perf_counter()
    req = urllib.request.Request(f"{url}/v2/models/{MODEL}/classify",
                                 data=png_header_only(9000, 9000), method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    took = time.perf_counter() - started
    assert info.value.code == 413 and took < 0.5, took
    assert "9000x9000" in json.loads(info.value.read())["error"]


def test_a_taken_port_is_refused_at_once_in_one_line(server, onnx_artifact):
    from export.serve.cli import main

    _, url, _ = server
    started = time.perf_counter()
    result = CliRunner().invoke(main, [str(onnx_artifact), "--port", str(port_of(url))])
    assert time.perf_counter() - started < 2.0
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"port {port_of(url)}" in errors[0] and "in use" in errors[0]
    assert "Traceback" not in result.output


def test_every_listening_socket_is_on_host(server):
    proc, url, _ = server
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    ours = [line.split()[3] for line in out.splitlines() if f"pid={proc.pid}," in line]
    assert ours == [f"127.0.0.1:{port_of(url)}"], ours


def test_sigterm_when_idle_exits_0_within_the_drain_bound(server):
    proc, url, log = server
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert time.monotonic() - started < 10 + 5  # --drain-timeout + the runtime's teardown
    text = log.read_text()
    assert "draining" in text and "Traceback" not in text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/v2/health/live", timeout=5)
