"""The Open Inference Protocol (KServe v2, as Triton speaks it) for one artifact: JSON tensors and
the binary tensor data extension, checked against the manifest before anything runs.

Pure functions on bytes and numpy, no server in sight, so every rule is tested without Ray:
:func:`decode_infer` turns a request body into the model's input (or a :class:`ProtocolError`
with the HTTP status the protocol asks for), :func:`encode_infer` turns logits into a response
body. The rules follow the protocol's REST spec and Triton's binary extension:

- a body with an ``Inference-Header-Content-Length`` header is that many bytes of JSON followed
  by the inputs' raw bytes (little-endian, row-major) in the order the inputs are listed, each
  input saying its length in ``parameters.binary_data_size``;
- outputs come back as raw bytes when the request asks (``parameters.binary_data_output`` for
  all, or ``parameters.binary_data`` per output), else as JSON numbers.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.models import ModelSpec
from ..core.shapes import BatchRange
from .strict import StrictJSONError, loads, numbers

HEADER_LENGTH = "inference-header-content-length"
#: the protocol's datatype names for the numpy dtypes a manifest can hold
DATATYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64",
             "int32": "INT32", "uint8": "UINT8", "int8": "INT8", "bool": "BOOL"}
NUMPY = {v: np.dtype(k) for k, v in DATATYPES.items()}
#: the largest JSON request body read (parsed JSON numbers cost ~10x their text in memory)
JSON_LIMIT = 32 << 20


class ProtocolError(Exception):
    """A request the protocol refuses: ``status`` is the HTTP status, the message the ``error``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": str(self)}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the model: its protocol datatype and shape (-1 for the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSignature:
    """What one served model takes and gives, read from its manifest."""

    name: str
    input: TensorSpec
    output: TensorSpec
    batch: BatchRange
    max_batch: int  # the most rows one request may carry (the artifact's max)
    platform: str
    manifest_format: str
    precision: str
    class_names: list[str] = field(default_factory=list)

    @classmethod
    def from_manifest(cls, name: str, manifest: Mapping[str, Any]) -> ModelSignature:
        spec = ModelSpec.from_dict(manifest["model"])
        batch = BatchRange.from_dict(manifest["batch_range"])
        (inp,), (out,) = manifest["inputs"], manifest["outputs"]
        chw = (spec.in_chans, spec.input_size, spec.input_size)
        names = manifest.get("class_names") or []
        if len(names) != spec.num_classes:
            names = [str(i) for i in range(spec.num_classes)]
        platform = "tensorrt_plan" if manifest["format"] == "trt" else "onnxruntime_onnx"
        return cls(name, TensorSpec(inp["name"], DATATYPES[inp["dtype"]], (-1, *chw)),
                   TensorSpec(out["name"], DATATYPES[out["dtype"]], (-1, spec.num_classes)),
                   batch, batch.max, platform, manifest["format"], manifest["precision"],
                   [str(n) for n in names])

    def metadata(self) -> dict[str, Any]:
        """The protocol's model metadata response."""
        return {"name": self.name, "versions": ["1"], "platform": self.platform,
                "inputs": [self.input.to_dict()], "outputs": [self.output.to_dict()]}

    def row_elements(self) -> int:
        return math.prod(self.input.shape[1:])

    def body_limit(self, binary: bool = False) -> int:
        """The largest request body worth reading; anything longer is refused unread (or as soon
        as streaming passes it). Binary: a full batch of raw tensor bytes plus 1 MiB for the
        JSON header. JSON: a full batch as text (about 24 bytes a number at most), capped at
        :data:`JSON_LIMIT` since parsed JSON costs ~10x its size in memory (send large batches
        as binary tensors)."""
        if binary:
            return self.max_batch * self.row_elements() * NUMPY[self.input.datatype].itemsize \
                + (1 << 20)
        return min(self.max_batch * self.row_elements() * 24 + (1 << 20), JSON_LIMIT)


@dataclass
class InferRequest:
    """A decoded request: its id, the input batch and how to send the output back."""

    id: str | None
    inputs: np.ndarray
    binary_output: bool
    output_name: str


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(400, f"{what} is not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(400, f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (what Triton's clients may send), refusing to
    inflate past ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise ProtocolError(415, f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(400, f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise ProtocolError(413, f"body inflates past the limit of {limit} bytes")
    return out


def _header_length(value: str | None, size: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise ProtocolError(400, f"Inference-Header-Content-Length {value!r} is not a "
                                 "number") from None
    if not 0 < length <= size:
        raise ProtocolError(400, f"Inference-Header-Content-Length {length} does not fit a "
                                 f"body of {size} bytes")
    return length


def _check_shape(sig: ModelSignature, shape: Any) -> tuple[int, ...]:
    want = sig.input.shape[1:]
    if (not isinstance(shape, list) or len(shape) != len(sig.input.shape)
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise ProtocolError(400, f"input {sig.input.name!r}: shape {shape!r} is not "
                                 f"[N, {', '.join(map(str, want))}]")
    if tuple(shape[1:]) != want:
        raise ProtocolError(400, f"input {sig.input.name!r}: shape {shape} does not match the "
                                 f"model's [-1, {', '.join(map(str, want))}]")
    if not 1 <= shape[0] <= sig.max_batch:
        raise ProtocolError(400, f"input {sig.input.name!r}: batch of {shape[0]} is outside "
                                 f"the model's batch range 1..{sig.max_batch}")
    return tuple(shape)


def _input_doc(sig: ModelSignature, doc: dict[str, Any]) -> dict[str, Any]:
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(400, "request has no \"inputs\" list")
    named = [i.get("name") if isinstance(i, dict) else None for i in inputs]
    known = {n if isinstance(n, str) else None for n in named}
    if known != {sig.input.name} or len(inputs) != 1:
        raise ProtocolError(400, f"model {sig.name!r} takes one input {sig.input.name!r}, got "
                                 f"{sorted(map(str, known))}")
    item = inputs[0]
    _check_datatype(sig, item.get("datatype"))
    return item


def _check_datatype(sig: ModelSignature, datatype: Any) -> None:
    if datatype != sig.input.datatype:
        raise ProtocolError(400, f"input {sig.input.name!r}: datatype {datatype!r} is not the "
                                 f"model's {sig.input.datatype}")


def check_input(sig: ModelSignature, name: Any, datatype: Any, shape: Any) -> tuple[int, ...]:
    """One input tensor's name, datatype and shape (the batch within the model's range) against
    the model, before any data is read: the rules every front end (JSON, binary, gRPC) applies."""
    if name != sig.input.name:
        raise ProtocolError(400, f"model {sig.name!r} takes one input {sig.input.name!r}, got "
                                 f"{name!r}")
    _check_datatype(sig, datatype)
    return _check_shape(sig, shape)


def raw_input(sig: ModelSignature, shape: tuple[int, ...], data: bytes | memoryview,
              what: str) -> np.ndarray:
    """Raw little-endian row-major bytes -> the input batch, refusing a byte count that is not
    exactly ``shape`` of the input's datatype (``what`` names where the bytes came from)."""
    dtype = NUMPY[sig.input.datatype]
    expect = math.prod(shape) * dtype.itemsize
    if len(data) != expect:
        raise ProtocolError(400, f"input {sig.input.name!r}: {what} holds {len(data)} bytes, "
                                 f"not the {expect} bytes of {sig.input.datatype} {list(shape)}")
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)


def check_finite(sig: ModelSignature, arr: np.ndarray) -> None:
    """Refuse NaN and infinity in a floating-point input (binary or gRPC; JSON cannot spell
    them): no model answers them meaningfully, unless the server allows them."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ProtocolError(400, f"input {sig.input.name!r} holds NaN or infinite values "
                                 "(refused; the server's --allow-nonfinite accepts them)")


def _json_data(sig: ModelSignature, item: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    data = item.get("data")
    if data is None:
        raise ProtocolError(400, f"input {sig.input.name!r} has neither \"data\" nor "
                                 "parameters.binary_data_size")
    try:
        arr = numbers(data, NUMPY[sig.input.datatype])
    except StrictJSONError as exc:
        raise ProtocolError(400, f"input {sig.input.name!r}: data is not a (nested) list of "
                                 f"numbers: {exc}") from None
    if arr.size != math.prod(shape):
        raise ProtocolError(400, f"input {sig.input.name!r}: {arr.size} values for shape "
                                 f"{list(shape)} ({math.prod(shape)} values)")
    return arr.reshape(shape)


def _binary_size(item: dict[str, Any]) -> int | None:
    size = _params(item, "input").get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ProtocolError(400, f"binary_data_size {size!r} is not a byte count")
    return size


def _params(holder: dict[str, Any], what: str) -> dict[str, Any]:
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(400, f"{what} parameters must be a JSON object, got "
                                 f"{type(params).__name__}")
    return params


def _flag(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(400, f"parameter {key} must be true or false, got {value!r:.40}")
    return value


def _outputs(sig: ModelSignature, doc: dict[str, Any], binary_default: bool) -> bool:
    """Whether the output goes back as raw bytes; refuses an output the model does not have."""
    binary = _flag(_params(doc, "request"), "binary_data_output", binary_default)
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise ProtocolError(400, "\"outputs\" must be a list")
    for out in outputs:
        name = out.get("name") if isinstance(out, dict) else None
        if not isinstance(out, dict) or name != sig.output.name:
            raise ProtocolError(400, f"model {sig.name!r} has no output {name!r:.60} (it has "
                                     f"{sig.output.name!r})")
        oparams = _params(out, "output")
        if oparams.get("classification"):
            raise ProtocolError(400, "the classification extension is not supported; use the "
                                     "classify route for labels")
        binary = _flag(oparams, "binary_data", binary)
    return binary


def _request_id(doc: dict[str, Any]) -> str | None:
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(400, f"\"id\" must be a string, got {type(rid).__name__}")
    return rid


def decode_infer(sig: ModelSignature, body: bytes, header_length: str | None,
                 allow_nonfinite: bool = False) -> InferRequest:
    """A request body (already size-checked and inflated) -> the input batch, or a
    :class:`ProtocolError` saying what is wrong with it (NaN/Inf inputs too, unless
    ``allow_nonfinite``)."""
    length = _header_length(header_length, len(body))
    doc = _json(body if length is None else body[:length], "request body" if length is None
                else "request header")
    item = _input_doc(sig, doc)
    shape = _check_shape(sig, item.get("shape"))
    size = _binary_size(item)
    rid = _request_id(doc)
    if size is None:
        if length is not None and length != len(body):
            raise ProtocolError(400, f"{len(body) - length} binary bytes follow the header but "
                                     "no input declares binary_data_size")
        arr = _json_data(sig, item, shape)
    else:
        if length is None:
            raise ProtocolError(400, "binary_data_size given without an "
                                     "Inference-Header-Content-Length header")
        if len(body) - length != size:
            raise ProtocolError(400, f"body holds {len(body) - length} binary bytes after the "
                                     f"header, the header promises {size}")
        arr = raw_input(sig, shape, memoryview(body)[length:], "binary_data_size")
        if not allow_nonfinite:
            check_finite(sig, arr)
    return InferRequest(rid, arr, _outputs(sig, doc, binary_default=False), sig.output.name)


def encode_infer(sig: ModelSignature, req: InferRequest, logits: np.ndarray
                 ) -> tuple[bytes, dict[str, str]]:
    """Logits -> (response body, extra headers) in the form the request asked for."""
    dtype = NUMPY[sig.output.datatype]
    out = np.ascontiguousarray(logits, dtype=dtype.newbyteorder("<"))
    tensor: dict[str, Any] = {"name": sig.output.name, "datatype": sig.output.datatype,
                              "shape": list(out.shape)}
    doc: dict[str, Any] = {"model_name": sig.name, "model_version": "1", "outputs": [tensor]}
    if req.id is not None:
        doc["id"] = req.id
    if not req.binary_output:
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise ProtocolError(500, "the output holds NaN or infinite values, which JSON "
                                     "cannot carry; ask for binary output")
        tensor["data"] = out.ravel().tolist()
        return json.dumps(doc, allow_nan=False).encode(), {"content-type": "application/json"}
    raw = out.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(doc, allow_nan=False).encode()
    return header + raw, {"content-type": "application/octet-stream",
                          HEADER_LENGTH: str(len(header))}


def encode_request(sig_input: TensorSpec, batch: np.ndarray, binary: bool = True,
                   binary_output: bool = True, request_id: str | None = None
                   ) -> tuple[bytes, dict[str, str]]:
    """A request body for ``batch`` (what the load generator sends; tests use Triton's client)."""
    dtype = NUMPY[sig_input.datatype].newbyteorder("<")
    arr = np.ascontiguousarray(batch, dtype=dtype)
    item: dict[str, Any] = {"name": sig_input.name, "datatype": sig_input.datatype,
                            "shape": list(arr.shape)}
    doc: dict[str, Any] = {"inputs": [item], "parameters": {"binary_data_output": binary_output}}
    if request_id is not None:
        doc["id"] = request_id
    if not binary:
        item["data"] = arr.ravel().tolist()
        return json.dumps(doc).encode(), {"content-type": "application/json"}
    raw = arr.tobytes()
    item["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(doc).encode()
    return header + raw, {"content-type": "application/octet-stream",
                          HEADER_LENGTH: str(len(header))}


def decode_response(body: bytes, header_length: str | None) -> tuple[dict[str, Any], np.ndarray]:
    """A response body -> (its JSON, the first output as an array): the load generator's check."""
    length = int(header_length) if header_length else None
    doc = json.loads(body if length is None else body[:length])
    out = doc["outputs"][0]
    dtype = NUMPY[out["datatype"]].newbyteorder("<")
    if length is None:
        return doc, np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
    return doc, np.frombuffer(body, dtype=dtype, offset=length).reshape(out["shape"])


__all__ = ["HEADER_LENGTH", "NUMPY", "InferRequest", "ModelSignature", "ProtocolError",
           "TensorSpec", "check_finite", "check_input", "decode_infer", "decode_response",
           "decompress", "encode_infer", "encode_request", "raw_input"]
