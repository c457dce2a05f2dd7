"""INT8 on a CPU without VNNI, emulated: QEMU user mode playing an AVX2-only Haswell makes ONNX
Runtime pick its AVX2 u8 x s8 kernels (``vpmaddubsw``, 16-bit sums of two products), which
saturate with full-range int8 weights; the cpu flavour's 7-bit weights keep every sum in range.
Only numbers are compared here: emulated speed means nothing."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.convert import int8
from export.core import cpu_features

QEMU = shutil.which("qemu-x86_64")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 is not installed (apt-get install "
                                            "qemu-user): it emulates the AVX2-only CPU"),
]

#: run inside the emulated CPU: ONNX Runtime only (torch under emulation takes minutes)
RUN = """
import json, sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out[path] = s.run(None, {"x": x})[0].tolist()
print(json.dumps(out))
"""


def _conv(path, rng):
    """One 3x3 convolution, 16 -> 32 channels, weights near each channel's largest magnitude
    with random signs: pairs of large same-sign products are common, as in trained networks."""
    weight = (rng.choice([-1, 1], (32, 16, 3, 3)) * rng.uniform(0.7, 1.0, (32, 16, 3, 3)) / 12)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32, 8, 8])],
        [numpy_helper.from_array(weight.astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(32, np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_seven_bit_weights_do_not_saturate_without_vnni(tmp_path):
    rng = np.random.default_rng(0)
    fp32 = tmp_path / "conv.onnx"
    _conv(fp32, rng)
    calibration = rng.standard_normal((64, 16, 8, 8), dtype=np.float32)
    files = {}
    for name, reduce_range in (("full-range", False), ("cpu flavour", True)):
        recipe = dataclasses.replace(int8.RECIPES["cpu"], reduce_range=reduce_range)
        files[name] = tmp_path / f"{name.replace(' ', '-')}.onnx"
        int8.quantize_qdq(fp32, files[name], calibration, recipe=recipe)
    assert int8.RECIPES["cpu"].reduce_range  # what the export uses
    x = rng.standard_normal((8, 16, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    native = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0] for name, path in files.items()}
    done = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", RUN,
                           str(tmp_path / "x.npy"), *map(str, files.values())],
                          capture_output=True, text=True, timeout=900, check=True)
    emulated = {name: np.asarray(json.loads(done.stdout)[str(path)], np.float32)
                for name, path in files.items()}
    here = {name: _cosine(reference, out) for name, out in native.items()}
    haswell = {name: _cosine(reference, out) for name, out in emulated.items()}
    print(f"min cosine to FP32 here {here}, on the emulated Haswell {haswell}")
    if cpu_features.isa_class() in ("amx", "avx512-bf16", "avx512-vnni", "avx-vnni"):
        assert min(here.values()) > 0.999  # VNNI: no 16-bit intermediate sums to saturate
    assert here["cpu flavour"] > 0.999
    assert haswell["full-range"] < 0.99  # saturated: the failure the reporter's EPYC showed
    assert haswell["cpu flavour"] > 0.999
    np.testing.assert_allclose(emulated["cpu flavour"], native["cpu flavour"], rtol=0,
                               atol=1e-4 * float(np.abs(reference).max()))


def test_the_emulated_check_passes_an_exported_int8_file_and_fails_a_damaged_one(
        trained_project, tmp_path):
    """scripts/check_int8_emulated.py: the quick-start model's INT8 export, re-checked on its
    own gate images by ONNX Runtime and OpenVINO inside the emulated Haswell, passes; the same
    file with its classifier's weight scales negated fails, on both runtimes."""
    from pathlib import Path

    from test_int8_travel import _copy, _damage_scales

    from export.pipeline import ExportRequest, export_artifact

    folder = tmp_path / "int8"
    export_artifact(ExportRequest(fmt="onnx-int8", calib_count=64,
                                  checkpoint=trained_project / "artifacts/train/resnet20-digits"
                                  / "best.pt", out=folder), echo=lambda _: None,
                    warn=lambda _: None)
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_int8_emulated.py"

    def check(path):
        return subprocess.run([sys.executable, script, str(path)], capture_output=True,
                              text=True, timeout=1800, check=False)

    passed = check(folder)
    assert passed.returncode == 0, passed.stderr
    lines = passed.stdout.splitlines()
    assert [line.split(" on an emulated Haswell")[0] for line in lines] == [
        "onnxruntime", "openvino"]
    assert all(line.endswith(": PASS") for line in lines)
    assert "BF16" not in lines[1] and "INT8" in lines[1]  # OpenVINO sees the Haswell's features
    failed = check(_copy(folder, tmp_path, _damage_scales))
    assert failed.returncode == 1
    assert [": FAIL: cosine similarity" in line for line in failed.stdout.splitlines()] == [
        True, True]
