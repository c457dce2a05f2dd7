"""INT8 through the pipeline: calibrated on training data, judged on the held-out test split, with
its own gate, manifest section, verify, and one-line refusals (exit 2) for what cannot work."""


import numpy as np
import pytest
from click.testing import CliRunner

import export.pipeline as pipeline
from export.cli import main as export_cli
from export.convert.qdq import zero_points
from export.core.artifact import read_manifest
from export.core.models import default_spec
from export.data import split_images

from damage import scaled_int8_scale

FAST = ["--batch-range", "1:8:16"]
FRESH = ["--depth", "20", "--input-size", "16"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real (if short) digits training run: INT8 damage only shows on a model that decides."""
    from export.train import TrainConfig, run_training

    out = tmp_path_factory.mktemp("train") / "run"
    run_training(TrainConfig(epochs=3, threads=1), out=out, echo=lambda _: None)
    return out / "best.pt"


def _export(tmp_path, *args, source=("--depth", "20", "--input-size", "16")):
    return CliRunner().invoke(export_cli, [*source, *FAST, *args, "--out", str(tmp_path / "a")])


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, checkpoint):
    folder = tmp_path_factory.mktemp("int8")
    result = _export(folder, "--fmt", "onnx-int8", source=("--checkpoint", str(checkpoint)))
    assert result.exit_code == 0, result.output
    return folder / "a", result


def test_default_resnet20_exports_to_int8_through_its_gate(int8_artifact):
    folder, result = int8_artifact
    manifest = read_manifest(folder)  # the schema reader accepts the new section
    assert (manifest["format"], manifest["precision"]) == ("onnx-int8", "int8")
    assert manifest["int8"]["flavour"] == "cpu"
    quantizer = manifest["int8"]["quantizer"]
    assert quantizer["quantizer"] == "onnxruntime.quantization" and quantizer["per_channel"]
    assert sum(quantizer["qdq_nodes"].values()) > 0
    runs = manifest["parity"]["runs"]
    assert runs and all(run["passed"] for run in runs)
    for run in runs:  # accuracy on the held-out split, for every runtime
        acc = run["accuracy"]
        assert acc["samples"] > 100 and acc["drop_points"] <= 1.0
        assert acc["reference_top1"] > 80  # a trained model: the accuracy check means something
    assert "accuracy on" in result.output


def test_fresh_weights_calibrate_on_the_digits_with_a_warning(tmp_path):
    result = _export(tmp_path, "--fmt", "onnx-int8")
    assert result.exit_code == 0, result.output
    assert "warning: INT8 calibrated and judged on the embedded digits" in result.output
    calibration = read_manifest(tmp_path / "a")["int8"]["calibration"]
    assert calibration["dataset"]["kind"] == "digits" and calibration["part"] == "train"


def test_calibration_and_judging_images_are_disjoint(int8_artifact):
    folder, _ = int8_artifact
    manifest = read_manifest(folder)
    calibration = manifest["int8"]["calibration"]
    assert calibration["part"] == "train" and calibration["count"] == 256
    spec = default_spec("resnet20", input_size=16)  # the checkpoint's model
    held_out = split_images(calibration["dataset"], spec, "test", 10_000)
    assert not set(calibration["indices"]) & set(held_out.indices.tolist())
    judged = manifest["parity"]["inputs"]["accuracy"]
    assert judged["part"] == "test" and judged["count"] == len(held_out.labels)


def test_verify_reruns_the_accuracy_gate(int8_artifact):
    folder, _ = int8_artifact
    result = CliRunner().invoke(export_cli, ["verify", str(folder)])
    assert result.exit_code == 0, result.output
    assert "accuracy on" in result.output and "PASS" in result.output


def test_tensorrt_flavour_has_only_zero_zero_points(tmp_path):
    result = _export(tmp_path, "--fmt", "onnx-int8", "--int8-flavour", "tensorrt")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "a")
    assert manifest["int8"]["flavour"] == "tensorrt"
    points = zero_points(tmp_path / "a" / manifest["artifact"])
    assert points.size > 0 and not points.any()
    assert "openvino" not in " ".join(run["candidate"] for run in manifest["parity"]["runs"])


def test_a_damaged_int8_artifact_fails_its_gate(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setattr(pipeline, "save_onnx", scaled_int8_scale(pipeline.save_onnx, 5))
    result = _export(tmp_path, "--fmt", "onnx-int8", source=("--checkpoint", str(checkpoint)))
    assert result.exit_code == 1, result.output
    assert "verdict: FAIL" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: parity gate FAILED")
    assert "what may help: more calibration images (--calib-count, 256 now)" in last
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("args,message", [
    (["--fmt", "onnx-int8", "--fp16-io"], "--fp16-io applies to FP16 artifacts"),
    (["--fmt", "onnx-int8", "--calib-count", "10"], "10 is not in the range 32<=x<=100000"),
])
def test_unsupported_int8_options_are_one_line_exit_2(tmp_path, args, message):
    result = _export(tmp_path, *args)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and message in line


def _image_folder(root, n_per_class, channels):
    """Digits (the embedded data) written as a class-per-folder tree of PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in (0, 1):
        (root / str(label)).mkdir(parents=True)
        images = digits.images[digits.target == label][:n_per_class]
        for i, image in enumerate(images):
            pixels = np.rint(image * 255 / 16).astype(np.uint8)
            if channels == 3:
                pixels = np.stack([pixels] * 3, axis=-1)
            Image.fromarray(pixels).save(root / str(label) / f"{i}.png")
    return root


def test_calibration_data_that_cannot_work_is_one_line_exit_2(tmp_path):
    rgb = _image_folder(tmp_path / "rgb", 20, 3)
    result = _export(tmp_path, "--fmt", "onnx-int8", "--calib-data", str(rgb))
    assert result.exit_code == 2, result.output
    assert "its images have 3 channel(s), the model takes 1" in result.output
    few = _image_folder(tmp_path / "few", 10, 1)
    result = _export(tmp_path, "--fmt", "onnx-int8", "--calib-data", str(few))
    assert result.exit_code == 2, result.output
    assert "INT8 calibration needs at least 32" in result.output
    assert not (tmp_path / "a").exists()


def test_user_calibration_data_is_used_and_recorded(tmp_path, checkpoint):
    gray = _image_folder(tmp_path / "gray", 40, 1)
    result = _export(tmp_path, "--fmt", "onnx-int8", "--calib-data", str(gray),
                     "--calib-method", "percentile", "--calib-count", "64",
                     source=("--checkpoint", str(checkpoint)))
    assert result.exit_code == 0, result.output
    calibration = read_manifest(tmp_path / "a")["int8"]["calibration"]
    assert calibration["part"] == "all" and calibration["count"] == 64
    assert calibration["method"] == "percentile"
    assert calibration["dataset"]["kind"] == "folder"


def _digits_logits(checkpoint, count):
    """The trained checkpoint's FP32 logits on ``count`` held-out digits, with their labels."""
    import torch

    from export.core.weights import checkpoint_source

    source = checkpoint_source(checkpoint)
    held_out = split_images(source.dataset, source.spec, "test", count)
    with torch.no_grad():
        logits = source.model(torch.from_numpy(held_out.images)).numpy()
    return logits, held_out.labels


def _flip(logits, labels, n):
    """The logits with the ``n`` closest calls the reference gets right made wrong (the top
    logit lowered just below the second), as a slightly shifted INT8 range would."""
    out = logits.copy()
    top2 = -np.sort(-logits, axis=1)[:, :2]
    margin = np.where(logits.argmax(1) == labels, top2[:, 0] - top2[:, 1], np.inf)
    for i in np.argsort(margin)[:n]:
        first, second = np.argsort(-out[i])[:2]
        out[i, first] = out[i, second] - 1e-3
    return out


def test_one_flip_on_a_small_split_does_not_fail_and_a_real_loss_does(checkpoint):
    """60 images: one flip is 1.67 points, beyond the 1.0-point limit, but no test can tell one
    image from chance (it used to fail); losing 8 of them (13 points) is a loss the data shows."""
    from export.gate.accuracy import judge_accuracy
    from export.gate.table import accuracy_line
    from export.gate.tolerances import TOLERANCES

    logits, labels = _digits_logits(checkpoint, 60)
    tol = TOLERANCES["int8"]
    one = judge_accuracy(logits, _flip(logits, labels, 1), labels, tol)
    assert one.drop_points > tol.max_accuracy_drop and one.passed, one.failures
    assert (one.lost, one.gained) == (1, 0) and one.p_value == 0.5
    assert not one.resolves_limit and "cannot resolve a 1-point drop" in accuracy_line(one)
    eight = judge_accuracy(logits, _flip(logits, labels, 8), labels, tol)
    assert not eight.passed and "8 images lost" in eight.failures[0]
    # the whole digits test split (359): 7 images lost (1.9 points) fail as before
    logits, labels = _digits_logits(checkpoint, 360)
    seven = judge_accuracy(logits, _flip(logits, labels, 7), labels, tol)
    assert not seven.passed and seven.p_value < 0.05


def test_the_accuracy_limit_is_an_option_recorded_in_the_manifest(tmp_path, checkpoint):
    result = _export(tmp_path, "--fmt", "onnx-int8", "--max-accuracy-drop", "2.5",
                     source=("--checkpoint", str(checkpoint)))
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "a")
    assert manifest["int8"]["max_accuracy_drop"] == 2.5
    assert all(run["tolerance"]["max_accuracy_drop"] == 2.5 for run in manifest["parity"]["runs"])
    assert all(run["accuracy"]["limit_points"] == 2.5 for run in manifest["parity"]["runs"])
    refused = _export(tmp_path / "b", "--fmt", "onnx", "--max-accuracy-drop", "2")
    assert refused.exit_code == 2 and "applies to INT8 artifacts" in refused.output
