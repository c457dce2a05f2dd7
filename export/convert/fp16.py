"""FP32 ONNX -> FP16 ONNX: a small, transparent converter written with the onnx API.

TensorRT 11 has no FP16 builder flag: an FP16 engine comes from an FP16-*typed* network, so this
file is what the engine is built from, and what ONNX Runtime runs in the FP16 parity gate.

What it does, in order:

1. Decide, node by node, which nodes stay FP32 (the *keep list*):
   - op types that overflow or lose too much in FP16 (``KEEP_FP32_OPS``: exponentials, sums of
     squares, softmax and friends; none of them is in a ResNet, so a ResNet is FP16 end to end),
   - nodes that read a float constant (initializer or ``Constant``) with a value beyond FP16's
     range (|x| > 65504), which would become inf,
   - nodes the caller names.
2. Give every float tensor a home precision: FP16 if the node that makes it runs in FP16, FP32
   otherwise. Initializers go to FP16 unless only FP32 nodes read them or they do not fit.
3. Insert a ``Cast`` wherever a node reads a tensor of the other precision, and at the graph
   boundary: by default the graph keeps FP32 inputs and outputs (``images`` is cast to FP16 on the
   way in, ``logits`` back to FP32 on the way out), so callers feed the same arrays as for the FP32
   model; ``io_fp16=True`` makes the inputs and outputs FP16 themselves.

Reductions (GlobalAveragePool / ReduceMean) stay FP16: a mean cannot exceed its largest input,
and TensorRT and ONNX Runtime accumulate FP16 reductions in FP32.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.errors import UserError

FP16_MAX = float(np.finfo(np.float16).max)  # 65504

#: Op types kept in FP32 whatever their inputs: each can overflow FP16 (exp, squares, sums of many
#: terms) or needs FP32 to stay accurate. None of them occurs in a ResNet classifier.
KEEP_FP32_OPS = frozenset({
    "Exp", "Pow", "Softmax", "LogSoftmax", "ReduceSum", "ReduceSumSquare", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "CumSum", "LayerNormalization",
    "InstanceNormalization", "GroupNormalization", "RandomNormal", "RandomUniform",
    "RandomNormalLike", "RandomUniformLike",
})

#: Inputs that the ONNX spec types as float32 only, whatever the node computes in (by position).
FLOAT32_ONLY_INPUTS = {"Resize": (2,), "Upsample": (1,)}  # the scales

_FLOAT = TensorProto.FLOAT
_HALF = TensorProto.FLOAT16


class Fp16ConversionError(UserError):
    """The graph has something this converter does not handle (said in the message)."""


def _wants(node: onnx.NodeProto, slot: int, node_is_fp32: bool) -> int:
    """The float type ``node`` reads at input ``slot``."""
    if node_is_fp32 or slot in FLOAT32_ONLY_INPUTS.get(node.op_type, ()):
        return _FLOAT
    return _HALF


@dataclass
class Fp16Report:
    """What the conversion did, for the manifest and the terminal."""

    nodes_fp16: int = 0
    nodes_fp32: list[str] = field(default_factory=list)  # "name (op): reason"
    initializers_fp16: int = 0
    initializers_fp32: list[str] = field(default_factory=list)
    casts_inserted: int = 0
    values_flushed_to_zero: int = 0  # non-zero weights too small for FP16 (became 0)
    io_fp16: bool = False

    def to_dict(self) -> dict:
        return {"nodes_fp16": self.nodes_fp16, "nodes_fp32": self.nodes_fp32,
                "initializers_fp16": self.initializers_fp16,
                "initializers_fp32": self.initializers_fp32,
                "casts_inserted": self.casts_inserted,
                "values_flushed_to_zero": self.values_flushed_to_zero,
                "io_fp16": self.io_fp16, "keep_fp32_ops": sorted(KEEP_FP32_OPS)}


def _fits_fp16(array: np.ndarray) -> bool:
    finite = array[np.isfinite(array)]
    return finite.size == 0 or float(np.abs(finite).max()) <= FP16_MAX


def _to_fp16(array: np.ndarray, report: Fp16Report) -> np.ndarray:
    half = array.astype(np.float16)
    report.values_flushed_to_zero += int(np.count_nonzero((half == 0) & (array != 0)))
    return half


def convert_to_fp16(model: onnx.ModelProto, io_fp16: bool = False,
                    keep_fp32_nodes: set[str] | None = None,
                    keep_fp32_ops: frozenset[str] = KEEP_FP32_OPS,
                    ) -> tuple[onnx.ModelProto, Fp16Report]:
    """An FP16-typed copy of ``model`` (see the module docstring for the policy)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    report = Fp16Report(io_fp16=io_fp16)
    keep_fp32_nodes = keep_fp32_nodes or set()

    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise Fp16ConversionError(f"node {node.name or node.op_type} has a subgraph "
                                      f"({node.op_type}); control flow is not converted")
    if any(d.domain not in ("", "ai.onnx") for d in model.opset_import):
        raise Fp16ConversionError("graph uses custom op domains; only the standard domain is "
                                  "converted")

    # Types of every tensor, so we know which ones are float.
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    elem_type: dict[str, int] = {}
    for vi in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        elem_type[vi.name] = vi.type.tensor_type.elem_type
    initializers = {init.name: init for init in graph.initializer}
    for name, init in initializers.items():
        elem_type[name] = init.data_type

    # 1. Which nodes stay FP32, and why.
    big_constants = {n for n, init in initializers.items()
                     if init.data_type == _FLOAT and not _fits_fp16(numpy_helper.to_array(init))}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == _FLOAT \
                        and not _fits_fp16(numpy_helper.to_array(attr.t)):
                    big_constants.add(node.output[0])
    fp32_nodes: set[int] = set()
    for i, node in enumerate(graph.node):
        label = f"{node.name or node.output[0]} ({node.op_type})"
        if node.op_type in keep_fp32_ops:
            fp32_nodes.add(i)
            report.nodes_fp32.append(f"{label}: op type on the FP32 keep list")
        elif node.name in keep_fp32_nodes:
            fp32_nodes.add(i)
            report.nodes_fp32.append(f"{label}: named by the caller")
        elif any(inp in big_constants for inp in node.input) or (
                node.op_type == "Constant" and node.output[0] in big_constants):
            fp32_nodes.add(i)
            report.nodes_fp32.append(f"{label}: reads a constant beyond FP16 range")

    # 2. Home precision of every float tensor: where it is produced.
    home: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if elem_type.get(out) in (_FLOAT, _HALF):
                home[out] = _FLOAT if i in fp32_nodes else _HALF
    wanted: dict[str, set[int]] = defaultdict(set)  # what each tensor's readers want
    for i, node in enumerate(graph.node):
        for j, inp in enumerate(node.input):
            wanted[inp].add(_wants(node, j, i in fp32_nodes))
    for name, init in initializers.items():
        if init.data_type != _FLOAT:
            continue
        if name in big_constants or wanted.get(name) == {_FLOAT}:
            home[name] = _FLOAT
            report.initializers_fp32.append(name)
        else:
            home[name] = _HALF
            array = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(_to_fp16(array, report), name))
            report.initializers_fp16 += 1

    # Node-local conversions: Constant payloads and Cast targets inside the FP16 region.
    for i, node in enumerate(graph.node):
        if i in fp32_nodes:
            continue
        report.nodes_fp16 += 1
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == _FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(
                    _to_fp16(numpy_helper.to_array(attr.t), report), attr.t.name))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT:
                attr.i = _HALF
            elif node.op_type in ("ConstantOfShape",) and attr.name == "value" \
                    and attr.t.data_type == _FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(
                    _to_fp16(numpy_helper.to_array(attr.t), report), attr.t.name))
            elif attr.name == "dtype" and attr.i == _FLOAT:
                attr.i = _HALF

    # Graph inputs: FP32 at the boundary unless io_fp16; either way the inside reads FP16.
    boundary_in: dict[str, int] = {}
    for vi in graph.input:
        if vi.type.tensor_type.elem_type == _FLOAT and vi.name not in initializers:
            boundary_in[vi.name] = _HALF if io_fp16 else _FLOAT
            if io_fp16:
                vi.type.tensor_type.elem_type = _HALF
    home.update(boundary_in)

    # 3. Casts where a node reads a tensor of the other precision.
    new_nodes: list[onnx.NodeProto] = []
    cast_cache: dict[tuple[str, int], str] = {}

    def cast_to(name: str, target: int) -> str:
        key = (name, target)
        if key not in cast_cache:
            suffix = "fp16" if target == _HALF else "fp32"
            out = f"{name}_as_{suffix}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=target,
                                              name=f"cast_{name}_to_{suffix}"))
            cast_cache[key] = out
            report.casts_inserted += 1
        return cast_cache[key]

    for i, node in enumerate(graph.node):
        for j, inp in enumerate(node.input):
            want = _wants(node, j, i in fp32_nodes)
            have = home.get(inp)
            if have is not None and have != want:
                node.input[j] = cast_to(inp, want)
        new_nodes.append(node)

    # Graph outputs: produced in FP16 inside; FP32 at the boundary unless io_fp16.
    out_target = _HALF if io_fp16 else _FLOAT
    for vi in graph.output:
        have = home.get(vi.name)
        if have is None:
            continue
        if have != out_target:
            inner = f"{vi.name}_{'fp16' if have == _HALF else 'fp32'}"
            for node in new_nodes:
                for j, out in enumerate(node.output):
                    if out == vi.name:
                        node.output[j] = inner
                for j, inp in enumerate(node.input):
                    if inp == vi.name:
                        node.input[j] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [vi.name], to=out_target,
                                              name=f"cast_{vi.name}_to_output"))
            report.casts_inserted += 1
        vi.type.tensor_type.elem_type = out_target

    del graph.node[:]
    graph.node.extend(new_nodes)
    # Intermediate type annotations are now stale: drop them; shape inference rebuilds them.
    del graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        first = (str(exc).strip().splitlines() or ["type error"])[0]
        raise Fp16ConversionError(f"the FP16 graph does not type-check: {first}") from None
    return model, report
