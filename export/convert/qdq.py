"""Reading and editing a QDQ ONNX graph: what it holds (counted from the graph, never assumed
from the quantizer's settings), its zero points, and the one graph edit the TensorRT flavour
needs (no Q/DQ on the fused side of a residual ``Add``). No quantization arithmetic: scales and
zero points are only read or moved, never computed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..core.errors import UserError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def load_onnx(onnx_path_or_proto: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(onnx_path_or_proto, onnx.ModelProto):
        return onnx_path_or_proto
    path = Path(onnx_path_or_proto)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise UserError(f"{path.name} is not a readable ONNX model: {exc}") from None



def unquantize_residual_branch(proto: onnx.ModelProto) -> int:
    """Remove the Q/DQ pair on the convolution-side input of every residual ``Add``; how many.

    TensorRT fuses a residual ``Add`` (and the ReLU after it) into the convolution that computes
    one of its inputs, reading the other input, the skip connection, as INT8. For that the
    convolution's own output must stay unquantized, while the skip input keeps its Q/DQ. ONNX
    Runtime's quantizer puts Q/DQ on both inputs of an ``Add``; NVIDIA's TensorRT Model
    Optimizer (``modelopt.onnx.quantization``) runs the same quantizer and then removes the pair
    on the non-residual input, which is what this does. When both inputs come from convolutions
    (a projection shortcut), the one produced later in the graph is the one fused, as it is the
    only one that can read the other.

    Graph surgery only (re-wiring one input and deleting its dedicated Q and DQ nodes); no scale
    or zero point is computed or changed. Needs dedicated Q/DQ pairs (one consumer each).
    """
    nodes = list(proto.graph.node)
    position = {out: i for i, node in enumerate(nodes) for out in node.output}
    producer = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in proto.graph.output}
    doomed: list[onnx.NodeProto] = []
    fused = 0
    for add in nodes:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        candidates = []  # (position of the weighted op, input index, q, dq, weighted output)
        for index, name in enumerate(add.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            source = q.input[0]
            weighted = producer.get(source)
            if weighted is None or weighted.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            if (len(consumers.get(name, [])) != 1 or len(consumers.get(q.output[0], [])) != 1
                    or len(consumers.get(source, [])) != 1 or source in graph_outputs):
                continue  # shared pairs or a conv output used elsewhere: leave it alone
            candidates.append((position[source], index, q, dq, source))
        initializers = {t.name for t in proto.graph.initializer}
        if not candidates or any(name in initializers for name in add.input):
            continue  # not a residual Add (an Add with a constant is a bias)
        _, index, q, dq, source = max(candidates, key=lambda c: c[0])
        add.input[index] = source
        doomed.extend([q, dq])
        fused += 1
    for node in doomed:
        proto.graph.node.remove(node)
    used = {name for node in proto.graph.node for name in node.input}
    unused = [t for t in proto.graph.initializer if t.name not in used]
    for tensor in unused:
        proto.graph.initializer.remove(tensor)
    return fused


# ---------------------------------------------------------------------------------------------
# Reading a QDQ model back
# ---------------------------------------------------------------------------------------------


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values by name (where Q/DQ scales and zero points live)."""
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def zero_points(onnx_path_or_proto: str | os.PathLike | onnx.ModelProto) -> np.ndarray:
    """Every QuantizeLinear/DequantizeLinear zero point in the graph, flattened (int64).

    A Q/DQ node without a zero-point input counts as one zero (the ONNX default). For the
    ``tensorrt`` flavour all of them must be 0.
    """
    proto = load_onnx(onnx_path_or_proto)
    values = _constants(proto)
    found: list[np.ndarray] = []
    for node in proto.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        if len(node.input) > 2 and node.input[2]:
            found.append(np.asarray(values[node.input[2]]).astype(np.int64).ravel())
        else:
            found.append(np.zeros(1, dtype=np.int64))
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def describe_qdq(onnx_path_or_proto: str | os.PathLike | onnx.ModelProto) -> dict[str, Any]:
    """What a QDQ graph holds, counted from the graph itself.

    - ``qdq_nodes``: number of QuantizeLinear and DequantizeLinear nodes;
    - ``op_types_quantized``: op types with at least one input coming from a DequantizeLinear;
    - ``activation_dtypes`` / ``weight_dtypes``: quantized types of the DQ nodes fed by a
      QuantizeLinear (activations) and by an initializer (weights; int32 = biases);
    - ``per_channel_weights``: DQ nodes of weights whose scale is a vector (per-channel);
    - ``zero_points_all_zero``.
    """
    proto = load_onnx(onnx_path_or_proto)
    values = _constants(proto)
    producers = {out: node for node in proto.graph.node for out in node.output}
    dq_outputs = {node.output[0] for node in proto.graph.node if node.op_type == "DequantizeLinear"}
    counts = {op: sum(node.op_type == op for node in proto.graph.node) for op in QDQ_OPS}
    quantized_ops = sorted({node.op_type for node in proto.graph.node
                            if node.op_type not in QDQ_OPS
                            and any(i in dq_outputs for i in node.input)})
    activation_types: set[str] = set()
    weight_types: set[str] = set()
    per_channel = per_tensor = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in values:
            array = values[source]
            weight_types.add(str(array.dtype))
            if array.dtype == np.int32:
                continue  # a bias
            scale = np.asarray(values.get(node.input[1], np.zeros(1)))
            if scale.size > 1:
                per_channel += 1
            else:
                per_tensor += 1
        elif source in producers and producers[source].op_type == "QuantizeLinear":
            q = producers[source]
            if len(q.input) > 2 and q.input[2] in values:
                activation_types.add(str(values[q.input[2]].dtype))
            else:
                activation_types.add("uint8")  # the ONNX default without a zero point
    zps = zero_points(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"qdq_nodes": counts, "op_types_quantized": quantized_ops,
            "activation_dtypes": sorted(activation_types), "weight_dtypes": sorted(weight_types),
            "per_channel_weights": {"per_channel": per_channel, "per_tensor": per_tensor},
            "zero_points_all_zero": bool(zps.size and not zps.any()), "opset": opset}
