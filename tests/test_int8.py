"""INT8 post-training quantization (export/convert/int8.py): structure of both flavours, closeness
to FP32, a damaged artifact that a gate can catch, and every bad input as one UserError line.

ResNet-20 at 16x16 on one channel (the digits' shape), calibrated on the digits' training split
and judged on their test split, with fresh weights (seed 0). For the numeric checks the classifier
of the fresh network is replaced by a least-squares read-out fitted on the training split's
features (about a second, ~87% test top-1): a purely fresh network gives every digit nearly the
same logits, so neither cosine nor top-1 could show whether INT8 kept or broke what the network
computes, and real training would cost most of this file's time budget.
"""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from export.convert import int8, qdq
from export.convert.onnx_export import export_onnx, save_onnx
from export.core.errors import UserError
from export.core.models import ModelSpec
from export.core.weights import fresh_source
from export.data import describe_source, load_training_data, normalise, to_channels

SIZE = 16
CALIBRATION = 64


@pytest.fixture(scope="module")
def spec():
    return ModelSpec.create("resnet20", num_classes=10, in_chans=1, input_size=SIZE)


@pytest.fixture(scope="module")
def fp32_path(spec, tmp_path_factory):
    source = fresh_source(spec)
    return save_onnx(export_onnx(source.model, spec), tmp_path_factory.mktemp("int8") / "m.onnx")


@pytest.fixture(scope="module")
def images(spec):
    """Normalised digits: (training split for calibration, test split for judging, all training
    images, their labels, the test labels)."""
    data = load_training_data(describe_source(None), SIZE)

    def prepare(part):
        return normalise(to_channels(data.images[part], spec.in_chans), spec.mean, spec.std)

    train = prepare("train")
    return (train[:CALIBRATION], prepare("test")[:96], train, data.labels["train"],
            data.labels["test"][:96])


@torch.no_grad()
def _fit_readout(model, images, labels, classes=10):
    """Ridge regression of one-hot labels on the pooled features: fc's weight and bias."""
    features = []
    hook = model.fc.register_forward_hook(lambda m, inputs, out: features.append(inputs[0]))
    model(torch.from_numpy(images))
    hook.remove()
    x = torch.cat([features[0].double(), torch.ones(len(images), 1, dtype=torch.float64)], 1)
    y = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), classes).double() * 2 - 1
    ridge = 1e-3 * x.pow(2).sum(0).mean() * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(x.T @ x + ridge, x.T @ y)
    model.fc.weight.copy_(w[:-1].T.float())
    model.fc.bias.copy_(w[-1].float())


@pytest.fixture(scope="module")
def trained(spec, images, tmp_path_factory):
    """Fresh ResNet-20 with a fitted read-out: (FP32 path, {flavour: INT8 path})."""
    folder = tmp_path_factory.mktemp("readout")
    model = fresh_source(spec).model
    _fit_readout(model, images[2], images[3])
    fp32 = save_onnx(export_onnx(model, spec), folder / "m.onnx")
    assert (_run(fp32, images[1]).argmax(1) == images[4]).mean() > 0.7  # logits mean something
    paths = {}
    for flavour in int8.FLAVOURS:
        paths[flavour] = folder / f"m-int8-{flavour}.onnx"
        int8.quantize_qdq(fp32, paths[flavour], images[0], flavour=flavour)
    return fp32, paths


@pytest.fixture(scope="module")
def quantized(fp32_path, images):
    """Both flavours quantized once: {flavour: (path, report)}."""
    out = {}
    for flavour in int8.FLAVOURS:
        path = fp32_path.with_name(f"m-int8-{flavour}.onnx")
        out[flavour] = path, int8.quantize_qdq(fp32_path, path, images[0], flavour=flavour)
    return out


def _run(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _producers(proto):
    return {out: node for node in proto.graph.node for out in node.output}


def _initializers(proto):
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


# ---------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", int8.FLAVOURS)
def test_every_convolution_reads_dequantized_input_and_per_channel_weights(quantized, flavour):
    path, _ = quantized[flavour]
    proto = onnx.load(str(path))
    producers, values = _producers(proto), _initializers(proto)
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == 20  # 19 convolutions and the classifier
    for node in convs:
        activation, weight = (producers.get(name) for name in node.input[:2])
        assert activation is not None and activation.op_type == "DequantizeLinear", node.name
        assert weight is not None and weight.op_type == "DequantizeLinear", node.name
        # the activation's DQ is fed by a QuantizeLinear; the weight's by an int8 initializer
        assert producers[activation.input[0]].op_type == "QuantizeLinear"
        stored = values[weight.input[0]]
        assert stored.dtype == np.int8
        scale = values[weight.input[1]]
        out_channels = stored.shape[0]
        assert scale.shape == (out_channels,), f"{node.name}: weight scale is not per-channel"
        assert next(a.i for a in weight.attribute if a.name == "axis") == 0
    assert qdq.zero_points(proto).size > 0


def test_the_report_says_what_the_file_holds(quantized):
    _, report = quantized["cpu"]
    assert report["quantizer"] == "onnxruntime.quantization"
    assert report["quantizer_version"] == ort.__version__
    assert report["format"] == "QDQ" and report["flavour"] == "cpu"
    assert report["method"] == int8.DEFAULT_METHOD
    assert report["activations"] == {"type": "uint8", "symmetric": False,
                                     "granularity": "per-tensor"}
    assert report["weights"]["type"] == "int8" and report["weights"]["symmetric"]
    assert report["per_channel"] and report["weights"]["reduce_range"] is True  # 7-bit weights
    assert report["calibration"]["count"] == CALIBRATION
    assert report["calibration"]["shape"] == [1, SIZE, SIZE]
    assert len(report["calibration"]["sha256"]) == 64
    assert {"Conv", "Gemm", "Add"} <= set(report["op_types_quantized"])
    assert report["qdq_nodes"]["QuantizeLinear"] > 20
    assert report["qdq_nodes"]["DequantizeLinear"] > report["qdq_nodes"]["QuantizeLinear"]
    assert report["per_channel_weights"] == {"per_channel": 20, "per_tensor": 0}
    import json

    json.dumps(report)  # the manifest must be able to hold it


def test_cpu_flavour_has_uint8_activations_int8_weights_and_int32_biases(quantized):
    path, report = quantized["cpu"]
    summary = qdq.describe_qdq(path)
    assert summary["activation_dtypes"] == ["uint8"]
    assert summary["weight_dtypes"] == ["int32", "int8"]  # biases are quantized for QLinearConv
    assert qdq.zero_points(path).any()  # asymmetric activations
    assert not report["zero_points_all_zero"]


def test_tensorrt_flavour_is_symmetric_int8_with_zero_zero_points(quantized):
    path, report = quantized["tensorrt"]
    zps = qdq.zero_points(path)
    assert zps.size > 40 and not zps.any()
    summary = qdq.describe_qdq(path)
    assert summary["activation_dtypes"] == ["int8"]
    assert summary["weight_dtypes"] == ["int8"]  # no int32 bias: TensorRT refuses those DQs
    assert report["zero_points_all_zero"] and report["bias"].startswith("float32")
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            assert _initializers(proto)[node.input[2]].dtype == np.int8


def test_tensorrt_flavour_places_qdq_as_tensorrt_fuses(quantized):
    """Q/DQ on Conv/Gemm inputs, none on their outputs; residual Add: Q/DQ on the skip input
    only (the convolution's side stays float so TensorRT fuses Conv + Add + ReLU); every DQ of
    an activation has a single consumer."""
    path, report = quantized["tensorrt"]
    proto = onnx.load(str(path))
    producers = _producers(proto)
    consumers = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    for node in convs:  # no Q right behind a weighted op
        assert all(c.op_type != "QuantizeLinear" for c in consumers.get(node.output[0], []))
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 9 and report["residual_adds_left_for_fusion"] == 9
    for add in adds:
        kinds = sorted(producers[name].op_type for name in add.input)
        assert kinds == ["Conv", "DequantizeLinear"], (add.name, kinds)
    shared = [n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] in producers and producers[n.input[0]].op_type == "QuantizeLinear"
              and {c.op_type for c in consumers[n.output[0]]} & {"Conv", "Gemm", "Add"}
              and len(consumers[n.output[0]]) > 1]
    # ResNet-20's option-A shortcut (Slice/Pad, not quantized) shares its block input's DQ with
    # the next convolution; that is the only sharing left
    assert len(shared) <= 2


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", int8.FLAVOURS)
def test_int8_logits_stay_close_to_fp32(trained, images, flavour):
    fp32, paths = trained
    test = images[1]
    ref, got = _run(fp32, test), _run(paths[flavour], test)
    assert np.isfinite(got).all()
    cosine = _cosine(ref, got)
    assert cosine.min() > 0.99, cosine.min()
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.95


def test_a_damaged_activation_scale_is_caught(trained, images, tmp_path):
    """One activation scale x100 (a botched calibration or an edited file) moves the logits far
    beyond INT8 rounding, so a cosine / top-1 gate fails it. The victim: the scale of the
    classifier's input, through which every prediction passes."""
    fp32, paths = trained
    proto = onnx.load(str(paths["cpu"]))
    producers = _producers(proto)
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    victim = producers[gemm.input[0]].input[1]  # the scale of the DQ feeding the classifier
    hits = 0
    for tensor in proto.graph.initializer:
        if tensor.name == victim:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 100,
                                                    tensor.name))
            hits += 1
    assert hits == 1
    damaged = tmp_path / "damaged.onnx"
    onnx.save(proto, str(damaged))
    test = images[1]
    ref, good, bad = _run(fp32, test), _run(paths["cpu"], test), _run(damaged, test)
    assert _cosine(ref, good).min() > 0.99
    assert _cosine(ref, bad).min() < 0.5
    assert (ref.argmax(1) == bad.argmax(1)).mean() < 0.5


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("kwargs, fragment", [
    ({"flavour": "gpu"}, "unknown INT8 flavour 'gpu': choose one of cpu, tensorrt"),
    ({"method": "kl"}, "unknown INT8 calibration method 'kl': choose one of minmax, entropy, "
                       "percentile"),
    ({"batch_size": 0}, "batch size must be at least 1"),
])
def test_unknown_options_are_one_line(fp32_path, images, tmp_path, kwargs, fragment):
    with pytest.raises(UserError) as exc_info:
        int8.quantize_qdq(fp32_path, tmp_path / "x.onnx", images[0], **kwargs)
    assert fragment in _one_line(exc_info)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("make, fragment", [
    (lambda x: x[: int8.MIN_CALIBRATION - 1], f"{int8.MIN_CALIBRATION - 1} calibration image(s) "
                                              f"are too few: at least {int8.MIN_CALIBRATION}"),
    (lambda x: np.repeat(x, 3, axis=1), "calibration has 3 channel(s); the model's input "
                                        "'images' is Nx1x16x16"),
    (lambda x: x[:, :, :8, :8], "calibration images are 8x8; the model's input 'images' is "
                                "Nx1x16x16"),
    (lambda x: x[:, 0], "calibration has shape (64, 16, 16); the model's input 'images' is "
                        "Nx1x16x16"),
    (lambda x: (x * 255).astype(np.uint8), "calibration must be float32 images normalised"),
    (lambda x: x.tolist(), "calibration must be a numpy array"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x),
     "calibration contains NaN or Inf"),
])
def test_bad_calibration_is_one_line(fp32_path, images, tmp_path, make, fragment):
    with pytest.raises(UserError) as exc_info:
        int8.quantize_qdq(fp32_path, tmp_path / "x.onnx", make(images[0]))
    assert fragment in _one_line(exc_info)
    assert not (tmp_path / "x.onnx").exists()


def test_a_missing_model_is_one_line(images, tmp_path):
    with pytest.raises(UserError) as exc_info:
        int8.quantize_qdq(tmp_path / "nope.onnx", tmp_path / "x.onnx", images[0])
    assert "ONNX model not found" in _one_line(exc_info)


def test_float64_calibration_is_accepted_as_float32(fp32_path, images, tmp_path):
    report = int8.quantize_qdq(fp32_path, tmp_path / "x.onnx", images[0].astype(np.float64),
                               flavour="tensorrt", method="minmax")
    assert report["calibration"]["dtype"] == "float32" and (tmp_path / "x.onnx").is_file()


def test_a_recipe_override_is_reported(fp32_path, images, tmp_path):
    recipe = dataclasses.replace(int8.RECIPES["cpu"], reduce_range=False)
    report = int8.quantize_qdq(fp32_path, tmp_path / "x.onnx", images[0], method="minmax",
                               recipe=recipe)
    assert report["weights"]["reduce_range"] is False
    assert report["recipe"]["reduce_range"] is False


def _activation_scales(path):
    proto = onnx.load(str(path))
    values = _initializers(proto)
    return {n.input[1]: float(values[n.input[1]]) for n in proto.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in values}


def test_each_method_gives_its_own_ranges(fp32_path, images, tmp_path, monkeypatch):
    """ORT's entropy defaults (128 bins, 128 quantized bins) would make "entropy" equal "minmax";
    the module's own histogram settings must make the three methods differ. (512 entropy bins
    here: ORT's KL search is a Python loop over the bins, ~1 s per tensor at 2048.)"""
    monkeypatch.setattr(int8, "ENTROPY_BINS", 512)
    scales = {}
    for method in int8.METHODS:
        path = tmp_path / f"{method}.onnx"
        report = int8.quantize_qdq(fp32_path, path, images[0], flavour="tensorrt", method=method)
        assert report["method"] == method
        scales[method] = _activation_scales(path)
    assert scales["minmax"].keys() == scales["entropy"].keys() == scales["percentile"].keys()
    for other in ("entropy", "percentile"):
        differ = [k for k in scales["minmax"] if scales[other][k] != scales["minmax"][k]]
        assert len(differ) > len(scales["minmax"]) // 2, other
        # both clip outliers: their ranges are never wider than the observed min/max
        assert all(scales[other][k] <= scales["minmax"][k] * (1 + 1e-6) for k in differ)


@pytest.mark.parametrize("method", int8.METHODS)
@pytest.mark.parametrize("count", [32, 33, 100, 37])
def test_every_method_takes_every_count(fp32_path, images, tmp_path, monkeypatch, method, count):
    """ORT's histogram calibrators stack each batch's outputs into one array: a last batch
    smaller than the others used to crash percentile and entropy ("inhomogeneous shape")
    whenever the count was not a multiple of the calibration batch."""
    monkeypatch.setattr(int8, "ENTROPY_BINS", 256)
    train = images[2]
    calibration = np.concatenate([train] * 2)[:count] if count > len(train) else train[:count]
    report = int8.quantize_qdq(fp32_path, tmp_path / "x.onnx", calibration, method=method)
    assert report["method"] == method and report["calibration"]["count"] == count
    session = ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: images[1][:4]})[0]
    assert out.shape == (4, 10) and np.isfinite(out).all()
