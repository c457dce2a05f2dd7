"""ONNX and FP16 ONNX export: every ImageNet depth and the default small-image model pass the gate.

These are the CI parity gates. Each case runs the real export pipeline (dynamo export, FP16
conversion, staging folder, parity gate on ONNX Runtime CPU, manifest, rename into place) at a
small input size so the whole set stays around two minutes on two cores.
"""

import importlib.util
import json
import os
from collections import defaultdict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.convert.fp16 import FP16_MAX, Fp16ConversionError, convert_to_fp16
from export.convert.onnx_export import (
    BATCH_DIM,
    INPUT_NAME,
    OUTPUT_NAME,
    check_onnx_file,
    io_signature,
    read_metadata,
)
from export.core.artifact import read_manifest
from export.core.shapes import BatchRange
from export.pipeline import ExportRequest, export_artifacts

from cli_helpers import artifact_listing

# (model, input size, classes, input channels): every ImageNet depth small, and the default
# small-image model exactly as the digits use it.
#: the default run gates one model of each block (BasicBlock, Bottleneck, the paper's CIFAR net);
#: the deeper variants repeat the same blocks and take minutes on 2 cores: -m slow runs them
_DEEP = pytest.mark.slow
CASES = [("resnet18", 32, 10, 3), pytest.param("resnet34", 32, 10, 3, marks=_DEEP),
         ("resnet50", 32, 10, 3), pytest.param("resnet101", 32, 10, 3, marks=_DEEP),
         pytest.param("resnet152", 32, 10, 3, marks=_DEEP), ("resnet20", 32, 10, 1)]
FORMATS = ["onnx", "onnx-fp16"]
BATCH = BatchRange(1, 2, 4)

_exported: dict = {}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


def exported(export_dir, name, fmt, size=32, classes=10, chans=3):
    """Both formats of a model from one dynamo export (as ``--fmt onnx --fmt onnx-fp16``), once
    for the whole module."""
    if (name, fmt) not in _exported:
        req = ExportRequest(model=name, input_size=size, num_classes=classes, in_chans=chans,
                            batch=BATCH)
        lines: list[str] = []
        cwd = os.getcwd()
        os.chdir(export_dir)  # default output folders: artifacts/<model>-<fmt>
        try:
            results = export_artifacts(req, FORMATS, echo=lines.append, warn=lines.append)
        finally:
            os.chdir(cwd)
        for f, result in zip(FORMATS, results):
            _exported[(name, f)] = (result, "\n".join(lines))
    return _exported[(name, fmt)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name,size,classes,chans", CASES)
def test_every_depth_exports_and_passes_the_gate(export_dir, name, size, classes, chans, fmt):
    result, printed = exported(export_dir, name, fmt, size, classes, chans)
    manifest = result.manifest
    parity = manifest["parity"]
    assert parity["passed"] is True
    run = parity["runs"][0]
    assert run["candidate"].startswith("onnxruntime[CPU")
    assert run["reference"] == "torch[cpu,fp32]"
    kinds = {c["kind"] for c in run["comparisons"]}
    assert kinds == {"real", "random"}, "the gate must use real images and random inputs"
    assert sorted({c["batch_size"] for c in run["comparisons"]}) == [1, 2, 4]
    assert run["summary"]["all_finite"]
    tol = run["tolerance"]
    assert run["summary"]["max_abs_error"] < tol["atol"]  # well inside, not just at the edge
    assert run["summary"]["min_cosine"] >= tol["min_cosine"]
    assert "verdict: PASS" in printed and "real b=4" in printed
    # the folder holds exactly the artifact and its manifest: one self-contained file
    out = export_dir / result.out
    assert result.out.as_posix() == f"artifacts/{name}-{fmt}"
    assert sorted(p.name for p in out.iterdir()) == artifact_listing(out, manifest["artifact"])
    assert read_manifest(out)["precision"] == ("fp16" if fmt == "onnx-fp16" else "fp32")


@pytest.mark.parametrize("name", ["resnet50", "resnet20"])
def test_onnx_graph_is_named_dynamic_checked_and_described(export_dir, name):
    case = next(c for c in CASES if c[0] == name)
    result, _ = exported(export_dir, name, "onnx", *case[1:])
    path = export_dir / result.out / result.manifest["artifact"]
    check_onnx_file(path)  # full checker, no external data
    proto = onnx.load(str(path))
    assert all(t.data_location != TensorProto.EXTERNAL for t in proto.graph.initializer)
    inputs, outputs = io_signature(proto)
    chans = case[3]
    assert inputs == [{"name": INPUT_NAME, "shape": [BATCH_DIM, chans, 32, 32],
                       "dtype": "float32"}]
    assert outputs == [{"name": OUTPUT_NAME, "shape": [BATCH_DIM, 10], "dtype": "float32"}]
    meta = read_metadata(path)
    assert meta["model"]["name"] == name and meta["model"]["input_size"] == 32
    assert meta["normalization"]["mean"] == list(result.manifest["normalization"]["mean"])
    assert "class_names" in meta and meta["batch_range"] == BATCH.to_dict()
    assert proto.opset_import[0].version == result.manifest["opset"] == 20
    # the dynamic batch really is dynamic: batches the example never had
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3, 7):
        x = np.zeros((n, chans, 32, 32), np.float32)
        assert session.run(None, {INPUT_NAME: x})[0].shape == (n, 10)


def test_fp16_artifact_is_fp16_inside_with_fp32_boundary(export_dir):
    result, _ = exported(export_dir, "resnet50", "onnx-fp16")
    proto = onnx.load(str(export_dir / result.out / result.manifest["artifact"]))
    weights = [t for t in proto.graph.initializer if t.dims and len(t.dims) > 1]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # images -> fp16 on the way in, logits -> fp32 on the way out
    fp16 = result.manifest["fp16"]
    assert fp16["nodes_fp32"] == [] and fp16["casts_inserted"] == 2
    assert read_metadata(proto)["precision"] == "fp16"
    ref = onnx.load(str(export_dir / exported(export_dir, "resnet50", "onnx")[0].out
                        / "resnet50.onnx"))
    assert result.manifest["files"][0]["bytes"] < 0.55 * ref.ByteSize()


# ---------------------------------------------------------------------------------------------
# The FP16 converter on small hand-made graphs: the keep-FP32 policy
# ---------------------------------------------------------------------------------------------


def _graph(nodes, inits, out_shape=(2, 4)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_shape[1]])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(sess.get_inputs()[0].type == "tensor(float16)"
                                         and np.float16 or np.float32)})[0]


def test_constant_beyond_fp16_range_keeps_its_node_in_fp32():
    big = np.full((4,), 1e5, np.float32)  # 1e5 > 65504 would become inf in FP16
    model = _graph([helper.make_node("Mul", ["x", "big"], ["m"], name="scale"),
                    helper.make_node("Mul", ["m", "small"], ["y"], name="unscale")],
                   {"big": big, "small": np.full((4,), 1e-5, np.float32)})
    half, report = convert_to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    assert report.initializers_fp32 == ["big"]
    assert any(entry.startswith("scale (Mul)") and "beyond FP16 range" in entry
               for entry in report.nodes_fp32)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    y = _run(half, x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, x, rtol=2e-3, atol=2e-3)
    assert FP16_MAX == 65504.0


def test_keep_list_op_stays_fp32_and_io_fp16_switches_the_boundary():
    model = _graph([helper.make_node("Softmax", ["x"], ["s"], axis=1, name="softmax"),
                    helper.make_node("Add", ["s", "b"], ["y"], name="add")],
                   {"b": np.ones(4, np.float32)})
    half, report = convert_to_fp16(model, io_fp16=True)
    onnx.checker.check_model(half, full_check=True)
    assert [e.split(":")[0] for e in report.nodes_fp32] == ["softmax (Softmax)"]
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    expected = np.exp(x) / np.exp(x).sum(1, keepdims=True) + 1
    y = _run(half, x)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    counts = float_types_in(half)
    assert counts.get("FLOAT16", 0) > 0


def test_float32_only_inputs_stay_float32_inside_an_fp16_graph():
    """Resize computes in FP16 but the spec only allows float32 scales."""
    model = _graph([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
                   {"scales": np.array([1.0, 2.0], np.float32)}, out_shape=(2, 8))
    half, report = convert_to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    assert report.initializers_fp32 == ["scales"]
    assert report.nodes_fp32 == []
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(half, x), np.repeat(x, 2, axis=1), rtol=1e-3, atol=1e-3)


def test_converter_refuses_control_flow():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    model = _graph([helper.make_node("ReduceMax", ["x"], ["c"], keepdims=0),
                    helper.make_node("Cast", ["c"], ["cb"], to=TensorProto.BOOL),
                    helper.make_node("If", ["cb"], ["y"], then_branch=then, else_branch=then)],
                   {})
    with pytest.raises(Fp16ConversionError, match="subgraph"):
        convert_to_fp16(model)


def _run_plain(model, x):
    """ONNX Runtime with its graph optimisations off: it must not repair a wrong graph (it
    folds Cast pairs away, for one)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    feed = x.astype(np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: feed})[0]


def _value_types(model):
    """Element type of every tensor of a (checked) model, by name."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def test_fp32_chain_stays_fp32_without_a_round_trip_through_fp16():
    """exp(x) -> sum: both on the keep list. The converter would cast exp's output to FP16 and
    back between them (inf beyond 65504) and again before the FP32 output."""
    model = _graph([helper.make_node("Exp", ["x"], ["e"], name="exp"),
                    helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=1, name="sum")],
                   {}, out_shape=(2, 1))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    half, report = convert_to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    assert [n.op_type for n in half.graph.node if n.op_type not in ("Exp", "ReduceSum")] \
        == ["Identity"] and report.casts_inserted == 1  # nothing but the output's name
    x = np.array([[12.0, 11.0, 0.0, -1.0], [1.0, 2.0, 3.0, 4.0]], np.float32)  # e^12 > 65504
    y = _run_plain(half, x)
    np.testing.assert_allclose(y, np.exp(x).sum(1, keepdims=True), rtol=1e-6)


def test_block_list_by_name_keeps_only_the_policy_node_when_names_clash():
    """The converter blocks nodes by name: an unnamed or same-named FP16 node must not follow
    a kept one into FP32."""
    model = _graph([helper.make_node("Softmax", ["x"], ["s"], axis=1, name="n"),
                    helper.make_node("Add", ["s", "b"], ["a"], name="n"),
                    helper.make_node("Mul", ["a", "b"], ["y"])],
                   {"b": np.ones(4, np.float32)})
    half, report = convert_to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    assert [e.split(":")[0] for e in report.nodes_fp32] == ["n (Softmax)"]
    assert report.nodes_fp16 == 2
    types = _value_types(half)
    add, mul = (next(n for n in half.graph.node if n.op_type == op) for op in ("Add", "Mul"))
    assert {types[i] for i in (*add.input, *mul.input)} == {TensorProto.FLOAT16}
    x = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)
    expected = (np.exp(x) / np.exp(x).sum(1, keepdims=True) + 1)
    np.testing.assert_allclose(_run_plain(half, x), expected, rtol=2e-3, atol=2e-3)


def test_resize_with_computed_scales_type_checks_and_runs():
    """Resize's scales must stay float32 even when a Constant node inside the FP16 region
    makes them (the converter casts them back)."""
    scales = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "s")
    model = _graph([helper.make_node("Constant", [], ["scales"], value=scales, name="c"),
                    helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
                   {}, out_shape=(2, 8))
    half, _ = convert_to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    types = _value_types(half)
    resize = next(n for n in half.graph.node if n.op_type == "Resize")
    assert types[resize.input[0]] == TensorProto.FLOAT16
    assert types[resize.input[2]] == TensorProto.FLOAT
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run_plain(half, x), np.repeat(x, 2, axis=1), rtol=1e-3,
                               atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The FP16 converter on real exported ResNets
# ---------------------------------------------------------------------------------------------


def _fp32_resnet(export_dir, name):
    result, _ = exported(export_dir, name, "onnx")
    return onnx.load(str(export_dir / result.out / result.manifest["artifact"]))


def _ort_fp32(model, x):
    return _run_plain(model, x)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("io_fp16", [False, True])
def test_resnet_is_fp16_everywhere_but_the_io_the_option_asks(export_dir, name, io_fp16):
    fp32 = _fp32_resnet(export_dir, name)
    half, report = convert_to_fp16(fp32, io_fp16=io_fp16)
    onnx.checker.check_model(half, full_check=True)
    types = _value_types(half)
    floats = {n for n, t in types.items() if t in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    fp32_left = {n for n in floats if types[n] == TensorProto.FLOAT}
    io = {INPUT_NAME, OUTPUT_NAME}
    assert fp32_left == (set() if io_fp16 else io)
    io_type = TensorProto.FLOAT16 if io_fp16 else TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in (*half.graph.input, *half.graph.output)] \
        == [io_type, io_type]
    casts = [n for n in half.graph.node if n.op_type == "Cast"]
    assert len(casts) == report.casts_inserted == (0 if io_fp16 else 2)
    # every node of the FP32 graph is there, in FP16, and the report says so
    assert report.nodes_fp32 == [] and report.nodes_fp16 == len(fp32.graph.node)
    assert report.initializers_fp32 == []
    assert report.initializers_fp16 == sum(t.data_type == TensorProto.FLOAT
                                           for t in fp32.graph.initializer)
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = _ort_fp32(fp32, x)
    got = _run_plain(half, x).astype(np.float32)
    assert got.dtype == np.float32
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected,
                                                                                     axis=1)
    assert cosine.min() > 0.999 and (got.argmax(1) == expected.argmax(1)).all()


def test_resnet_node_reading_a_constant_beyond_fp16_keeps_fp32_up_to_the_output(export_dir):
    """A logit bias of 1e5: the classifier must stay FP32 and its output reach ``logits``
    without passing through FP16 (where it would be inf)."""
    fp32 = _fp32_resnet(export_dir, "resnet18")
    gemm = next(n for n in fp32.graph.node if n.op_type == "Gemm")
    bias = next(t for t in fp32.graph.initializer if t.name == gemm.input[2])
    b = numpy_helper.to_array(bias).copy()
    b[3] = 1e5
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    half, report = convert_to_fp16(fp32)
    onnx.checker.check_model(half, full_check=True)
    assert report.nodes_fp32 == [f"{gemm.name} (Gemm): reads a constant beyond FP16 range"]
    assert sorted(report.initializers_fp32) == sorted(gemm.input[1:])
    types = _value_types(half)
    kept = next(n for n in half.graph.node if n.name == gemm.name)
    assert all(types[i] == TensorProto.FLOAT for i in (*kept.input, *kept.output))
    # FP32: images, the classifier's inputs and output, logits (nothing else)
    assert sum(t == TensorProto.FLOAT for t in types.values()) == len(kept.input) + 3
    assert [n.op_type for n in half.graph.node][-3:] == ["Cast", "Gemm", "Identity"]
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got, expected = _run_plain(half, x), _ort_fp32(fp32, x)
    assert np.isfinite(got).all() and (got.argmax(1) == 3).all()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=0.05)


def test_fp16_report_in_the_manifest_names_the_converter_and_what_it_did(export_dir):
    import onnxruntime

    result, _ = exported(export_dir, "resnet18", "onnx-fp16")
    fp16 = result.manifest["fp16"]
    assert fp16["converter"] == "onnxruntime.transformers.float16.convert_float_to_float16"
    assert fp16["converter_version"] == onnxruntime.__version__
    assert fp16["io_fp16"] is False and fp16["nodes_fp32"] == []
    assert fp16["casts_inserted"] == 2 and fp16["initializers_fp32"] == []
    assert "Exp" in fp16["keep_fp32_ops"] and "Softmax" in fp16["keep_fp32_ops"]
    assert fp16["values_flushed_to_zero"] == 0
    proto = onnx.load(str(export_dir / result.out / result.manifest["artifact"]))
    assert fp16["nodes_fp16"] == len(proto.graph.node) - 2
    assert fp16["initializers_fp16"] == len(proto.graph.initializer) - sum(
        t.data_type != TensorProto.FLOAT16 for t in proto.graph.initializer)
    runtimes = {run["candidate"].split("[")[0] for run in result.manifest["parity"]["runs"]}
    assert "onnxruntime" in runtimes
    # where OpenVINO is installed the gate ran the FP16 file on it too, and it passed
    assert ("openvino" in runtimes) == (importlib.util.find_spec("openvino") is not None)


def test_metadata_props_are_json(export_dir):
    result, _ = exported(export_dir, "resnet20", "onnx", 32, 10, 1)
    proto = onnx.load(str(export_dir / result.out / "resnet20.onnx"), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["resnet_deploy.model"])["in_chans"] == 1
    assert json.loads(props["resnet_deploy.source"])["kind"] == "seed"
    assert proto.producer_name == "resnet-deploy"


def float_types_in(model: onnx.ModelProto) -> dict[str, int]:
    """Count of float tensors by element type name (initializers and typed values)."""
    counts: dict[str, int] = defaultdict(int)
    for init in model.graph.initializer:
        counts[TensorProto.DataType.Name(init.data_type)] += 1
    for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        counts[TensorProto.DataType.Name(vi.type.tensor_type.elem_type)] += 1
    return dict(counts)


def test_small_stem_model_from_a_plain_state_dict_exports_and_passes(tmp_path):
    """An ImageNet model trained with the small stem (3x3 conv1, no max-pool): its weights file
    says which stem it has, and the artifact's description carries it."""
    import torch

    from export.core.models import ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec.create("resnet18", num_classes=10, in_chans=1, input_size=28, stem="small")
    torch.save(spec.build().state_dict(), tmp_path / "small.pth")
    req = ExportRequest(model="resnet18", checkpoint=tmp_path / "small.pth", input_size=28,
                        batch=BATCH, out=tmp_path / "art")
    lines: list[str] = []
    result = export_artifacts(req, ["onnx"], echo=lines.append, warn=lines.append)[0]
    manifest = result.manifest
    assert manifest["parity"]["passed"] is True
    assert manifest["model"]["stem"] == "small" and manifest["model"]["in_chans"] == 1
    path = result.out / manifest["artifact"]
    assert read_metadata(path)["model"]["stem"] == "small"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {INPUT_NAME: np.zeros((3, 1, 28, 28), np.float32)})[0].shape \
        == (3, 10)
