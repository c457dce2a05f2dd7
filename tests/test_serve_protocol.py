"""The Open Inference Protocol codec and the server's plan, without starting a server: every rule of
a request body, the binary extension's lengths, and the checks resnet-serve makes before serving."""

import gzip
import json
import shutil
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from serve_fakes import MANIFEST

from export.core.errors import BadOption
from export.core.manifest import write_manifest
from export.serve.protocol import (
    HEADER_LENGTH,
    ModelSignature,
    ProtocolError,
    decode_infer,
    decode_response,
    decompress,
    encode_infer,
    encode_request,
)
from export.serve.server import ServeConfig, check_models, size_threads

SIG = ModelSignature.from_manifest("m", MANIFEST)


def batch(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype(np.float32)


def decode(body, headers):
    return decode_infer(SIG, body, headers.get(HEADER_LENGTH))


@pytest.mark.parametrize("binary", [False, True])
def test_requests_round_trip_exactly(binary):
    x = batch(3)
    body, headers = encode_request(SIG.input, x, binary=binary, binary_output=binary,
                                   request_id="r1")
    req = decode(body, headers)
    np.testing.assert_array_equal(req.inputs, x)
    assert req.id == "r1" and req.binary_output == binary
    logits = x.reshape(3, -1)[:, :3] * 7
    out, out_headers = encode_infer(SIG, req, logits)
    doc, got = decode_response(out, out_headers.get(HEADER_LENGTH))
    np.testing.assert_array_equal(got, logits)
    assert doc["id"] == "r1" and doc["outputs"][0]["shape"] == [3, 3]
    assert (HEADER_LENGTH in out_headers) == binary


def test_nested_json_data_and_per_output_binary_flag():
    x = batch(1)
    doc = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 4, 4],
                       "data": x.tolist()}], "outputs": [{"name": "logits",
                                                          "parameters": {"binary_data": True}}]}
    req = decode(json.dumps(doc).encode(), {})
    np.testing.assert_array_equal(req.inputs, x)
    assert req.binary_output


def _json(**item):
    base = {"name": "images", "datatype": "FP32", "shape": [1, 1, 4, 4], "data": [0.0] * 16}
    base.update(item)
    return json.dumps({"inputs": [base]}).encode()


@pytest.mark.parametrize("body,headers,fragment", [
    (b"{oops", {}, "not JSON"),
    (b"[1, 2]", {}, "JSON object"),
    (json.dumps({"inputs": []}).encode(), {}, "no \"inputs\""),
    (_json(name="pixels"), {}, "takes one input 'images'"),
    (_json(datatype="FP64"), {}, "datatype 'FP64'"),
    (_json(shape=[1, 1, 5, 4]), {}, "does not match"),
    (_json(shape=[1, 16]), {}, "is not [N, 1, 4, 4]"),
    (_json(shape=[5, 1, 4, 4], data=[0.0] * 80), {}, "batch of 5 is outside"),
    (_json(shape=[0, 1, 4, 4], data=[]), {}, "batch of 0 is outside"),
    (_json(data=[0.0] * 15), {}, "15 values"),
    (_json(data=["x"] * 16), {}, "not a (nested) list of numbers"),
    (_json(data=None), {}, "neither"),
    (_json(), {HEADER_LENGTH: "abc"}, "not a number"),
    (_json(), {HEADER_LENGTH: "999999"}, "does not fit"),
    (json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 4, 4]}],
                 "outputs": [{"name": "probs"}]}).encode(), {}, "neither"),
])
def test_bad_requests_are_400_with_the_reason(body, headers, fragment):
    with pytest.raises(ProtocolError, match=None) as info:
        decode(body, headers)
    assert info.value.status == 400 and fragment in str(info.value)


def test_binary_lengths_that_lie_are_refused():
    x = batch(2)
    body, headers = encode_request(SIG.input, x)
    length = int(headers[HEADER_LENGTH])
    for cut in (body[:-4], body + b"\0\0\0\0"):
        with pytest.raises(ProtocolError, match="binary bytes after the header"):
            decode(cut, headers)
    doc = json.loads(body[:length])
    doc["inputs"][0]["parameters"]["binary_data_size"] = 64
    header = json.dumps(doc).encode()
    with pytest.raises(ProtocolError, match="the header promises 64"):
        decode(header + body[length:], {HEADER_LENGTH: str(len(header))})
    with pytest.raises(ProtocolError, match="without an Inference-Header-Content-Length"):
        decode(header, {})
    plain = _json()
    with pytest.raises(ProtocolError, match="no input declares binary_data_size"):
        decode(plain + b"\0" * 8, {HEADER_LENGTH: str(len(plain))})


def test_unknown_output_and_classification_are_refused():
    doc = json.loads(_json())
    doc["outputs"] = [{"name": "probs"}]
    with pytest.raises(ProtocolError, match="has no output 'probs'"):
        decode(json.dumps(doc).encode(), {})
    doc["outputs"] = [{"name": "logits", "parameters": {"classification": 2}}]
    with pytest.raises(ProtocolError, match="classification"):
        decode(json.dumps(doc).encode(), {})


def test_compressed_bodies_inflate_within_the_limit():
    raw = _json()
    assert decompress(gzip.compress(raw), "gzip", 1 << 20) == raw
    assert decompress(zlib.compress(raw), "deflate", 1 << 20) == raw
    with pytest.raises(ProtocolError) as info:
        decompress(gzip.compress(b"\0" * 100_000), "gzip", 1000)  # a small zip bomb
    assert info.value.status == 413
    with pytest.raises(ProtocolError) as info:
        decompress(raw, "br", 1 << 20)
    assert info.value.status == 415


def test_metadata_says_what_the_manifest_says():
    meta = SIG.metadata()
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 4, 4]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]


@pytest.mark.parametrize("cpus,models,replicas,threads,want_threads,oversubscribed", [
    (2, 1, 1, None, 2, False), (2, 1, 2, None, 1, False), (16, 2, 2, None, 4, False),
    (2, 1, 3, None, 1, True), (2, 1, 2, 2, 2, True), (8, 1, 2, 4, 4, False)])
def test_threads_never_oversubscribe_by_default(cpus, models, replicas, threads, want_threads,
                                                oversubscribed):
    cfg = ServeConfig([], replicas=replicas, threads=threads)
    got, reserve, why = size_threads(cfg, models, cpus)
    assert got == want_threads
    assert ("OVERSUBSCRIBED" in why) == oversubscribed
    assert reserve * models * replicas <= cpus + 1e-6


@pytest.fixture(scope="module")
def artifact(onnx_artifact):
    """The session's trained ONNX artifact (read-only: built once, never rebuilt here)."""
    return onnx_artifact


def test_artifacts_are_checked_before_any_engine_starts(artifact, tmp_path):
    (planned,) = check_models(ServeConfig([artifact]))
    assert planned.name == "resnet20-onnx" and planned.max_batch == 8
    with pytest.raises(BadOption, match="above"):
        check_models(ServeConfig([artifact], max_batch=9))
    with pytest.raises(BadOption, match="--name for each"):
        check_models(ServeConfig([artifact, artifact]))
    assert [p.name for p in check_models(ServeConfig([artifact, artifact], ["a", "b"]))] == [
        "a", "b"]


def test_a_failed_or_tampered_artifact_refuses_to_serve_in_one_line(artifact, tmp_path):
    from export.serve.cli import main

    failed = tmp_path / "failed"
    shutil.copytree(artifact, failed)
    manifest = json.loads((failed / "manifest.json").read_text())
    manifest["parity"]["passed"] = False  # failed on every runtime it was judged on
    for run in manifest["parity"]["runs"]:
        run["passed"] = False
    write_manifest(failed, manifest)  # sealed: the failure, not the edit, is the point
    tampered = tmp_path / "tampered"
    shutil.copytree(artifact, tampered)
    onnx = next(tampered.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"kind": "something else"}')
    for folder, fragment in ((failed, "parity gate failed"), (tampered, "sha256 mismatch"),
                             (foreign, "")):
        result = CliRunner().invoke(main, [str(folder), "--port", "1"], catch_exceptions=False)
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.output
    result = CliRunner().invoke(main, [str(artifact), "--max-batch", "9"])
    assert result.exit_code == 2 and "above" in result.output
