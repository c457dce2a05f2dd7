"""resnet-predict and export.predict: training's preprocessing (not a copy of it), predictions that
are the artifact runner's argmax, batches within the artifact's range, the table and the JSON
schema, and one line for every error."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.core.errors import UserError
from export.core.models import ModelSpec
from export.data import describe_source, load_training_data, reference_images, scan, split_indices
from export.predict import Predictor, runtime_choices
from export.predict.cli import main
from export.runtime import InputContract, Runner, load_artifact
from export.runtime.registry import RUNTIMES
from export.train.datasets import ImageDataset

from built_artifacts import BATCH
from cli_helpers import command

REPO = Path(__file__).resolve().parents[1]


invoke = command(main)


def error_lines(result):
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def artifact(onnx_artifact):
    return onnx_artifact


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits' test split (the parity gate's real images) as 8x8 PNG files, in split order."""
    dataset = describe_source(None)
    scanned = scan(dataset)
    split = split_indices(scanned.labels, dataset["seed"], dataset["val_fraction"],
                          dataset["test_fraction"], scanned.class_names)
    pixels = scanned.decode(split.test, 8)  # uint8 N x 1 x 8 x 8, as bundled
    folder = tmp_path_factory.mktemp("digits-test")
    paths = []
    for i, image in enumerate(pixels):
        paths.append(folder / f"{i:04d}.png")
        Image.fromarray(image[0]).save(paths[-1])
    return folder, paths, pixels


class Recorder(Runner):
    """A runner whose logits of a sample depend on that sample only; it records batch sizes."""

    backend = "recorder"

    def __init__(self, contract):
        super().__init__(contract=contract)
        self.calls = []

    def _infer(self, batch):
        self.calls.append(len(batch))
        flat = batch.reshape(len(batch), -1)
        return np.stack([flat[:, :10].sum(axis=1) * k for k in range(1, 4)], axis=1)


def fake_predictor(spec, batch=(1, 2, 4), class_names=("a", "b", "c"), kind="checkpoint"):
    manifest = {"model": spec.to_dict(), "batch_range": dict(zip(("min", "opt", "max"), batch)),
                "class_names": list(class_names), "source": {"kind": kind}, "format": "onnx",
                "precision": "fp32", "inputs": [{"name": "images"}]}
    return Predictor(Recorder(InputContract.from_manifest(manifest)), manifest)


def write_folder_dataset(root):
    """Three classes of PNG/JPEG files of mixed sizes; some in colour."""
    rng = np.random.default_rng(5)
    for c, name in enumerate(("cat", "dog", "eel")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            h, w = 10 + i, 14 - i
            if (i + c) % 3 == 0:
                Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8), "RGB").save(
                    root / name / f"{i}.png")
            else:
                Image.fromarray(rng.integers(0, 256, (h, w), np.uint8), "L").save(
                    root / name / f"{i}.png")
    return root


# --- one preprocessing for training, the gate and prediction --------------------------------


def test_prediction_preprocessing_is_the_parity_gates_real_images(artifact, digits):
    _, paths, pixels = digits
    with Predictor.load(artifact) as predictor:
        from_files = np.concatenate([predictor.read(path)[0] for path in paths])
        reference = reference_images(None, predictor.spec, limit=10_000)
        assert from_files.dtype == np.float32
        assert from_files.shape == reference.shape == (len(paths), 1, 16, 16)
        assert np.array_equal(from_files, reference)
        assert np.array_equal(predictor.preprocess(pixels), reference)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_files_of_a_training_folder_preprocess_as_training_sees_them(tmp_path, in_chans):
    root = write_folder_dataset(tmp_path / "pets")
    dataset = {**describe_source(root), "num_images": 18}
    spec = ModelSpec.create("resnet20", num_classes=3, in_chans=in_chans, input_size=12,
                            mean=(0.4,) * in_chans, std=(0.2,) * in_chans)
    scanned = scan(dataset)
    split = split_indices(scanned.labels, 0, 0.1, 0.2, scanned.class_names)
    files = [f for c in sorted(root.iterdir()) for f in sorted(c.iterdir())]
    predictor = fake_predictor(spec, class_names=scanned.class_names)

    ours = np.concatenate([predictor.read(files[i])[0] for i in split.test])
    assert np.array_equal(ours, reference_images(dataset, spec, limit=1000))
    if in_chans == 3:  # the training loop's own tensors (no augmentation) are the same numbers
        data = load_training_data(dataset, spec.input_size)
        served = ImageDataset(data.images["test"], data.labels["test"], spec.mean, spec.std)
        assert np.array_equal(ours, np.stack([served[i][0].numpy() for i in range(len(served))]))


def test_colour_to_a_grayscale_model_is_converted_as_training_converts_it(tmp_path):
    spec = ModelSpec.create("resnet20", num_classes=3, in_chans=1, input_size=8)
    predictor = fake_predictor(spec)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), np.uint8)
    Image.fromarray(rgb[0]).save(tmp_path / "rgb.png")
    x, converted = predictor.read(tmp_path / "rgb.png")
    assert converted == "RGB -> grayscale (ITU-R 601 luma)"
    luma = np.rint(rgb[:1].astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
    assert np.array_equal(x[0, 0], ((luma[0] / np.float32(255) - np.float32(0.5))
                                    / np.float32(0.5)).astype(np.float32))


# --- predictions -------------------------------------------------------------------------------


def test_predictions_are_the_runners_argmax_in_any_batch_size(artifact, digits):
    _, paths, _ = digits
    paths = paths[:13]
    runner = load_artifact(artifact)
    with runner, Predictor.load(artifact) as predictor:
        x = np.concatenate([predictor.read(path)[0] for path in paths])
        logits = np.concatenate([runner.infer(x[i:i + 8]) for i in range(0, len(x), 8)])
        for batch_size in (None, 1, 3, 8):
            tops = predictor.predict_files(paths, batch_size=batch_size)
            assert [t[0].index for t in tops] == logits.argmax(axis=1).tolist()
        tops = predictor.predict_files(paths, top=3)
        names = predictor.manifest["class_names"]
        for row, top in zip(logits, tops):
            assert [p.index for p in top] == np.argsort(-row, kind="stable")[:3].tolist()
            assert [p.label for p in top] == [names[p.index] for p in top]
            probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            assert np.allclose([p.probability for p in top], probs[[p.index for p in top]])
            assert np.allclose([p.logit for p in top], row[[p.index for p in top]], atol=1e-6)
        assert len(predictor.predict_files(paths, top=50)[0]) == 10  # at most every class


def test_array_layouts_give_the_same_predictions(artifact, digits):
    _, paths, pixels = digits
    grey = pixels[:6, 0]  # N x H x W
    with Predictor.load(artifact) as predictor:
        want = predictor.predict_files(paths[:6])
        assert predictor.predict_arrays(grey) == want
        assert predictor.predict_arrays(grey[:, None]) == want  # N x 1 x H x W
        assert predictor.predict_arrays(grey[..., None]) == want  # N x H x W x 1
        rgb = np.repeat(grey[..., None], 3, axis=-1)  # grey as RGB: luma gives it back
        assert predictor.predict_arrays(rgb) == want
        with pytest.raises(UserError, match="uint8"):
            predictor.predict_arrays(grey.astype(np.float32))
        with pytest.raises(UserError, match="N x H x W"):
            predictor.predict_arrays(np.zeros((2, 5, 8, 8), np.uint8))


def test_batches_stay_in_the_artifacts_range_and_padding_is_dropped():
    spec = ModelSpec.create("resnet20", num_classes=3, in_chans=1, input_size=8)
    images = np.random.default_rng(1).integers(0, 256, (7, 8, 8), np.uint8)
    one_by_one = fake_predictor(spec, batch=(1, 1, 1))
    want = one_by_one.logits(one_by_one.preprocess(images))
    assert one_by_one.runner.calls == [1] * 7
    static = fake_predictor(spec, batch=(4, 4, 4))
    assert np.array_equal(static.logits(static.preprocess(images)), want)
    assert static.runner.calls == [4, 4]  # 4 + 3 padded to 4
    ranged = fake_predictor(spec, batch=(2, 3, 5))
    assert np.array_equal(ranged.logits(ranged.preprocess(images), batch_size=5), want)
    assert ranged.runner.calls == [5, 2]
    with pytest.raises(UserError, match="outside the artifact's batch range 2..5"):
        ranged.logits(ranged.preprocess(images), batch_size=6)
    assert ranged.predict_arrays(images[:1], top=2)[0][0].label in ("a", "b", "c")


def test_a_truly_incompatible_input_is_one_line_per_file(tmp_path):
    spec = ModelSpec.create("resnet20", num_classes=3, in_chans=2, input_size=8)
    predictor = fake_predictor(spec)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "grey.png")
    (result,) = list(predictor.iter_files([tmp_path / "grey.png"]))
    assert result.top is None
    assert result.error == "cannot turn 1-channel images into 2-channel model input"
    with pytest.raises(UserError, match="2-channel"):
        predictor.predict_arrays(np.zeros((1, 8, 8), np.uint8))


def test_fresh_weights_are_flagged():
    spec = ModelSpec.create("resnet20", num_classes=3, in_chans=1, input_size=8)
    assert fake_predictor(spec).trained and not fake_predictor(spec, kind="seed").trained


# --- the command line --------------------------------------------------------------------------


def test_table(artifact, digits):
    folder, paths, _ = digits
    result = invoke([artifact, paths[0], paths[1], "--top-k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["image", "top-1", "top-2", "top-3"]
    assert set(lines[1]) == {"-"} and len(lines) == 4
    assert lines[2].startswith(str(paths[0])) and lines[2].count("%") == 3
    with Predictor.load(artifact) as predictor:
        best = predictor.predict_files(paths[:1])[0][0]
    assert lines[2].split()[1] == best.label
    assert f"{best.probability:.1%}" in lines[2]
    assert "resnet20 (10 classes, 1x16x16), onnx (fp32) on onnxruntime[CPU,fp32]" in \
        result.stderr


def test_json_schema(artifact, digits):
    folder, paths, _ = digits
    result = invoke([artifact, folder, "--json", "--top-k", "2", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "resnet-predict" and doc["schema_version"] == 1
    assert set(doc) == {"schema", "schema_version", "artifact", "runtime", "preprocessing",
                        "top_k", "results", "errors", "evaluation"}
    assert doc["artifact"] == {"path": str(artifact), "format": "onnx", "precision": "fp32",
                               "model": "resnet20", "num_classes": 10, "trained": True}
    assert doc["runtime"] == "onnxruntime[CPU,fp32]" and doc["top_k"] == 2
    assert set(doc["preprocessing"]) == {"input_size", "in_chans", "mean", "std"}
    assert doc["errors"] == [] and len(doc["results"]) == len(paths)
    assert [r["path"] for r in doc["results"]] == [str(p) for p in paths]  # sorted, as given
    for r in doc["results"]:
        assert set(r) == {"path", "top", "converted"} and r["converted"] is None
        assert [set(p) for p in r["top"]] == [{"index", "label", "probability", "logit"}] * 2
        assert r["top"][0]["probability"] >= r["top"][1]["probability"]


def test_colour_image_note(artifact, tmp_path):
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "rgb.png")
    result = invoke([artifact, tmp_path / "rgb.png", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["converted"] == \
        "RGB -> grayscale (ITU-R 601 luma)"
    assert "note: 1 image(s) converted RGB -> grayscale (ITU-R 601 luma) to fit the model, as " \
           "training converts them" in result.stderr


def test_bad_images_are_one_line_each_and_the_rest_are_classified(artifact, digits, tmp_path):
    _, paths, _ = digits
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    result = invoke([artifact, paths[0], tmp_path / "broken.png", tmp_path / "missing.png",
                     tmp_path / "empty", "--json"])
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"Error: cannot read image {tmp_path / 'broken.png'}: cannot identify image file "
        f"'{tmp_path / 'broken.png'}'",
        f"Error: no such file or folder: {tmp_path / 'missing.png'}",
        f"Error: no PNG/JPG/JPEG images in {tmp_path / 'empty'}"]
    doc = json.loads(result.stdout)
    assert [r["path"] for r in doc["results"]] == [str(paths[0])]
    assert [e["path"] for e in doc["errors"]] == [str(tmp_path / n) for n in
                                                  ("broken.png", "missing.png", "empty")]


@pytest.mark.parametrize("make", ["missing", "empty", "not-json"])
def test_unknown_artifacts_are_one_line(tmp_path, digits, make):
    folder = tmp_path / "art"
    if make != "missing":
        folder.mkdir()
    if make == "not-json":
        (folder / "manifest.json").write_text("{")
    result = invoke([folder, digits[1][0]])
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1 and result.stderr.count("\n") == 1
    assert result.stdout == ""


@pytest.mark.parametrize("args,words", [
    (["--top-k", "0"], "--top-k"), (["--runtime", "nope"], "--runtime"),
    (["--batch-size", "9"], "--batch-size 9 is outside"), (["--bogus"], "--bogus")])
def test_bad_options_exit_2(artifact, digits, args, words):
    result = invoke([artifact, digits[1][0], *args])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert words in line


def test_no_images_is_a_usage_error(artifact):
    result = invoke([artifact])
    assert result.exit_code == 2 and "IMAGE" in result.stderr


def test_runtime_that_does_not_fit_the_artifact(artifact, digits):
    result = invoke([artifact, digits[1][0], "--runtime", "tensorrt"])
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "--runtime tensorrt runs trt artifacts" in line and "onnx artifact" in line


def test_runtimes_this_machine_lacks_are_one_line(artifact, digits):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    result = invoke([artifact, digits[1][0], "--runtime", "onnxruntime-cuda"])
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "CUDAExecutionProvider is not in this onnxruntime build" in line


def test_explicit_onnxruntime_runtime_matches_auto(artifact, digits):
    auto = json.loads(invoke([artifact, *digits[1][:5], "--json"]).stdout)
    ort = json.loads(invoke([artifact, *digits[1][:5], "--json", "--runtime", "onnxruntime",
                             "--threads", "1"]).stdout)
    assert auto["results"] == ort["results"]


def test_openvino_runtime(artifact, digits):
    paths = digits[1][:8]
    if importlib.util.find_spec("openvino") is None:
        result = invoke([artifact, paths[0], "--runtime", "openvino"])
        assert result.exit_code == 1
        (line,) = error_lines(result)
        assert "openvino is not installed" in line
        return
    with Predictor.load(artifact) as ort, \
            Predictor.load(artifact, runtime="openvino", threads=1) as ov:
        assert ov.runner.backend == "openvino" and ov.runner.precision == "fp32"
        x = np.concatenate([ort.read(p)[0] for p in paths])
        want, got = ort.logits(x), ov.logits(x)
        assert np.allclose(got, want, atol=1e-4 * max(1.0, float(want.std())), rtol=1e-3)
        assert [t[0].index for t in ov.predict_files(paths)] == want.argmax(axis=1).tolist()


def test_the_console_script_and_runtime_names():
    assert 'resnet-predict = "export.predict.cli:main"' in \
        (REPO / "pyproject.toml").read_text().splitlines()
    assert list(runtime_choices()) == ["auto", *RUNTIMES]


@pytest.mark.slow
def test_int8_artifact(tmp_path, digits):
    """An INT8 artifact needs a trained model to pass its accuracy gate: the default run."""
    from export.pipeline import ExportRequest, export_artifact
    from export.train import TrainConfig, run_training

    run = run_training(TrainConfig(), out=tmp_path / "run", echo=lambda *_: None)
    out = tmp_path / "resnet20-onnx-int8"
    export_artifact(ExportRequest(fmt="onnx-int8", checkpoint=run.run_dir / "best.pt",
                                  batch=BATCH, out=out), echo=lambda _: None, warn=lambda _: None)
    paths = digits[1][:20]
    runner = load_artifact(out)
    with runner, Predictor.load(out) as predictor:
        assert predictor.manifest["precision"] == "int8"
        x = np.concatenate([predictor.read(p)[0] for p in paths])
        want = np.concatenate([runner.infer(x[i:i + 8]) for i in range(0, len(x), 8)])
        assert [t[0].index for t in predictor.predict_files(paths)] == \
            want.argmax(axis=1).tolist()
    result = invoke([out, *paths, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["artifact"]["precision"] == "int8"


@pytest.mark.tensorrt
@pytest.mark.cuda
def test_engine_artifact_on_tensorrt_and_on_its_source_onnx(tmp_path_factory, digits,
                                                            trained_project):
    from export.pipeline import ExportRequest, export_artifact

    project = trained_project
    out = tmp_path_factory.mktemp("trt") / "resnet20-trt"
    export_artifact(ExportRequest(fmt="trt", checkpoint=project /
                                  "artifacts/train/resnet20-digits/best.pt", batch=BATCH,
                                  out=out), echo=lambda _: None, warn=lambda _: None)
    paths = digits[1][:16]
    with Predictor.load(out) as engine, Predictor.load(out, runtime="onnxruntime") as source:
        assert engine.runner.backend == "tensorrt"
        a = engine.logits(np.concatenate([engine.read(p)[0] for p in paths]))
        b = source.logits(np.concatenate([source.read(p)[0] for p in paths]))
    assert np.allclose(a, b, atol=2e-2 * max(1.0, float(b.std())), rtol=2e-2)


def test_one_image_without_a_batch_axis_is_one_image_and_ambiguity_is_refused():
    """A single 64x64x3 array used to give 64 predictions (read as 64 grey 64x3 images)."""
    spec = ModelSpec.create("resnet20", num_classes=3, in_chans=3, input_size=8)
    predictor = fake_predictor(spec)
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8)
    (one,) = predictor.predict_arrays(rgb)
    assert one == predictor.predict_arrays(rgb[None])[0]
    assert len(predictor.predict_arrays(rgb[..., 0])) == 1  # H x W: one grey image
    assert len(predictor.predict_arrays(np.zeros((5, 8, 8), np.uint8))) == 5  # N x H x W
    for shape in [(3, 64, 64), (2, 3, 8, 3)]:
        with pytest.raises(UserError, match="ambiguous") as exc_info:
            predictor.predict_arrays(np.zeros(shape, np.uint8))
        assert "\n" not in str(exc_info.value)


def test_a_labelled_folder_is_scored(artifact, digits, tmp_path):
    """Images in sub-folders named after the classes: accuracy, per class, confusion, wrong files
    (the user used to count them from the JSON by hand)."""
    _, paths, pixels = digits
    dataset = describe_source(None)
    scanned = scan(dataset)
    split = split_indices(scanned.labels, dataset["seed"], dataset["val_fraction"],
                          dataset["test_fraction"], scanned.class_names)
    labels = scanned.labels[split.test][:40]
    for i, (image, label) in enumerate(zip(pixels[:40], labels)):
        folder = tmp_path / "labelled" / scanned.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i:04d}.png")
    result = invoke([artifact, tmp_path / "labelled", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    evaluation = doc["evaluation"]
    predicted = {r["path"]: r["top"][0]["label"] for r in doc["results"]}
    truth = {r["path"]: Path(r["path"]).parent.name for r in doc["results"]}
    correct = sum(predicted[p] == truth[p] for p in predicted)
    assert evaluation["images"] == 40 and evaluation["correct"] == correct
    assert evaluation["top1"] == pytest.approx(correct / 40)
    matrix = np.array(evaluation["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 40 and np.trace(matrix) == correct
    assert sum(v["images"] for v in evaluation["per_class"].values()) == 40
    assert sorted(w["path"] for w in evaluation["wrong"]) == \
        sorted(p for p in predicted if predicted[p] != truth[p])
    table = invoke([artifact, tmp_path / "labelled"])
    assert f"accuracy against the folder names: {correct / 40:.2%} ({correct}/40)" in table.stdout
    assert "confusion (rows: folder, columns: predicted):" in table.stdout
    # images outside class folders are not scored
    plain = invoke([artifact, paths[0], "--json"])
    assert json.loads(plain.stdout)["evaluation"] is None
