"""FP32 ONNX -> FP16 ONNX: onnxruntime's converter does the conversion; the policy is ours.

TensorRT 11 has no FP16 builder flag: an FP16 engine comes from an FP16-*typed* network, so this
file is what the engine is built from, and what ONNX Runtime runs in the FP16 parity gate.

The conversion (initializers, ``Constant`` payloads, value types, ``Cast`` targets, casts at the
borders of FP32 nodes and of the graph) is ``onnxruntime.transformers.float16
.convert_float_to_float16``, shipped in the onnxruntime wheel. What stays here:

- **The policy**, given to the converter as a ``node_block_list`` (its default op block list is
  not used): a node stays FP32 if its op type is on ``KEEP_FP32_OPS`` (exponentials, sums of
  squares, softmax and friends; none is in a ResNet, so a ResNet is FP16 end to end), if it reads
  a float constant beyond FP16's range (|x| > 65504 would become inf; the converter would clamp it)
  or if the caller names it. I/O: FP32 at the boundary by default (``keep_io_types``), FP16 with
  ``io_fp16=True``.
- **Repairs** of what the converter leaves behind: a ``Cast`` to FP16 straight into a ``Cast``
  back to FP32 between two FP32 regions (a lossy round trip that could overflow) is skipped, and
  so is a Cast to the type its input already has (it casts FP32 initializers named in the
  input's ``value_info``, which is therefore dropped first); the casts it appends at the end of
  the node list are put in topological order (the checker requires it); its stale
  ``value_info`` is dropped and strict type inference rebuilds it.
- **The report** for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.float16 import convert_float_to_float16

from ..core.errors import UserError

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_MIN_POSITIVE = 5.96e-08  # the smallest subnormal: smaller non-zero weights are raised to it
CONVERTER = "onnxruntime.transformers.float16.convert_float_to_float16"

#: Op types kept in FP32 whatever their inputs: each can overflow FP16 (exp, squares, sums of many
#: terms) or needs FP32 to stay accurate; Upsample because its scales are float32 only and the
#: converter handles that for Resize alone. None of them occurs in a ResNet classifier.
KEEP_FP32_OPS = frozenset({
    "Exp", "Pow", "Softmax", "LogSoftmax", "ReduceSum", "ReduceSumSquare", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "CumSum", "LayerNormalization",
    "InstanceNormalization", "GroupNormalization", "RandomNormal", "RandomUniform",
    "RandomNormalLike", "RandomUniformLike", "Upsample",
})

_FLOAT = TensorProto.FLOAT
_HALF = TensorProto.FLOAT16


class Fp16ConversionError(UserError):
    """The graph has something this conversion does not handle (said in the message)."""


@dataclass
class Fp16Report:
    """What the conversion did, for the manifest and the terminal."""

    nodes_fp16: int = 0
    nodes_fp32: list[str] = field(default_factory=list)  # "name (op): reason"
    initializers_fp16: int = 0
    initializers_fp32: list[str] = field(default_factory=list)
    casts_inserted: int = 0
    values_flushed_to_zero: int = 0  # non-zero weights that became 0 in FP16
    values_raised_to_min: int = 0  # non-zero weights below FP16_MIN_POSITIVE, raised to it
    io_fp16: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"nodes_fp16": self.nodes_fp16, "nodes_fp32": self.nodes_fp32,
                "initializers_fp16": self.initializers_fp16,
                "initializers_fp32": self.initializers_fp32,
                "casts_inserted": self.casts_inserted,
                "values_flushed_to_zero": self.values_flushed_to_zero,
                "values_raised_to_min": self.values_raised_to_min,
                "io_fp16": self.io_fp16, "keep_fp32_ops": sorted(KEEP_FP32_OPS),
                "converter": CONVERTER, "converter_version": onnxruntime.__version__}


def _fits_fp16(array: np.ndarray) -> bool:
    finite = array[np.isfinite(array)]
    return finite.size == 0 or float(np.abs(finite).max()) <= FP16_MAX


def _constants(model: onnx.ModelProto, data_type: int) -> dict[str, np.ndarray]:
    """Every initializer and ``Constant`` payload of ``data_type``, by the tensor name the graph
    reads."""
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
             if t.data_type == data_type}
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and \
                    attr.t.data_type == data_type:
                found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def _check_supported(model: onnx.ModelProto) -> None:
    """Refuse what the policy does not look into, rather than half-convert it."""
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise Fp16ConversionError(f"node {node.name or node.op_type} has a subgraph "
                                      f"({node.op_type}); control flow is not converted")
    if any(d.domain not in ("", "ai.onnx") for d in model.opset_import):
        raise Fp16ConversionError("graph uses custom op domains; only the standard domain is "
                                  "converted")


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name: the converter blocks nodes by name."""
    taken = {node.name for node in graph.node}
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            base, n = node.name or node.op_type, i
            while f"{base}_{n}" in taken:
                n += 1
            node.name = f"{base}_{n}"
            taken.add(node.name)
        seen.add(node.name)


def keep_fp32(model: onnx.ModelProto, constants: dict[str, np.ndarray],
              named: set[str], ops: frozenset[str]) -> dict[str, str]:
    """The nodes that stay FP32 (node name -> reason): the policy of the module docstring."""
    big = {name for name, array in constants.items() if not _fits_fp16(array)}
    kept: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in ops:
            kept[node.name] = "op type on the FP32 keep list"
        elif node.name in named:
            kept[node.name] = "named by the caller"
        elif any(name in big for name in (*node.input, *node.output)):
            kept[node.name] = "reads a constant beyond FP16 range"
    return kept


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _skip_useless_casts(graph: onnx.GraphProto, types: dict[str, int], ours: set[str]) -> None:
    """Readers of a Cast to the type its input already has, and of ``x (fp32) -Cast-> fp16
    -Cast-> fp32`` (a lossy round trip the converter leaves between FP32 nodes), read ``x``.
    Only the converter's casts (not named in ``ours``) are touched."""
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {v.name for v in graph.output}
    renamed: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Cast" or node.name in ours:
            continue
        source = node.input[0]
        first = producer.get(source)
        if first is not None and first.op_type == "Cast" and first.name not in ours \
                and _cast_to(first) == _HALF:
            source = first.input[0]
        if types.get(source) != _cast_to(node):
            continue
        if node.output[0] in outputs:  # keep the graph output's name
            node.CopyFrom(helper.make_node("Identity", [source], list(node.output),
                                           name=node.name))
        else:
            renamed[node.output[0]] = source
    for node in graph.node:
        for j, name in enumerate(node.input):
            node.input[j] = renamed.get(name, name)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _prune_and_sort(graph: onnx.GraphProto) -> None:
    """Put each node after its producers, moving as little as possible (the converter appends
    its casts at the end; the checker wants a sorted graph), and drop nodes nothing reads."""
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.node]
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    done: set[int] = set()
    order: list[int] = []
    for root in range(len(nodes)):
        stack, visiting = [(root, False)], set()
        while stack:
            i, expanded = stack.pop()
            if i in done:
                continue
            if expanded:
                done.add(i)
                order.append(i)
                continue
            if i in visiting:
                raise Fp16ConversionError("the FP16 graph has a cycle")
            visiting.add(i)
            stack.append((i, True))
            stack += [(producer[n], False) for n in reversed(nodes[i].input)
                      if n in producer and producer[n] not in done]
    needed = {v.name for v in graph.output}
    live: list[onnx.NodeProto] = []
    for i in reversed(order):
        if any(out in needed for out in nodes[i].output):
            live.append(nodes[i])
            needed.update(nodes[i].input)
    del graph.node[:]
    graph.node.extend(reversed(live))


def _report(original: onnx.ModelProto, half: onnx.ModelProto, kept: dict[str, str],
            constants: dict[str, np.ndarray], io_fp16: bool) -> Fp16Report:
    report = Fp16Report(io_fp16=io_fp16)
    for node in original.graph.node:
        if node.name in kept:
            report.nodes_fp32.append(f"{node.name} ({node.op_type}): {kept[node.name]}")
        else:
            report.nodes_fp16 += 1
    names = {node.name for node in original.graph.node}
    report.casts_inserted = sum(node.name not in names for node in half.graph.node)
    for init in half.graph.initializer:
        if init.name in constants and init.data_type == _FLOAT:
            report.initializers_fp32.append(init.name)
        elif init.name in constants and init.data_type == _HALF:
            report.initializers_fp16 += 1
    for name, converted in _constants(half, _HALF).items():
        if name in constants:
            nonzero = constants[name] != 0
            report.values_flushed_to_zero += int(np.count_nonzero(nonzero & (converted == 0)))
            report.values_raised_to_min += int(np.count_nonzero(
                nonzero & (np.abs(constants[name]) < FP16_MIN_POSITIVE)))
    return report


def convert_to_fp16(model: onnx.ModelProto, io_fp16: bool = False,
                    keep_fp32_nodes: set[str] | None = None,
                    keep_fp32_ops: frozenset[str] = KEEP_FP32_OPS,
                    ) -> tuple[onnx.ModelProto, Fp16Report]:
    """An FP16-typed copy of ``model`` and what was done (see the module docstring)."""
    _check_supported(model)
    original = onnx.ModelProto.FromString(model.SerializeToString())
    del original.graph.value_info[:]  # an initializer typed there would get a Cast of its own
    _name_nodes(original.graph)
    constants = _constants(original, _FLOAT)
    kept = keep_fp32(original, constants, set(keep_fp32_nodes or ()), keep_fp32_ops)
    half = convert_float_to_float16(
        onnx.ModelProto.FromString(original.SerializeToString()), keep_io_types=not io_fp16,
        op_block_list=[], node_block_list=sorted(kept), min_positive_val=FP16_MIN_POSITIVE,
        max_finite_val=FP16_MAX, force_fp16_initializers=False)
    del half.graph.value_info[:]  # the converter's are partly stale: inference rebuilds them
    _prune_and_sort(half.graph)
    _skip_useless_casts(half.graph, _elem_types(half), {n.name for n in original.graph.node})
    _prune_and_sort(half.graph)  # the casts the round trips skipped
    try:
        half = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        first = (str(exc).strip().splitlines() or ["type error"])[0]
        raise Fp16ConversionError(f"the FP16 graph does not type-check: {first}") from None
    return half, _report(original, half, kept, constants, io_fp16)
