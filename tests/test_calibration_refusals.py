"""INT8 calibration (export.convert.calibration, export.gate.inputs): calibration images never
leak into the judged split however they are named; memory is estimated before it starts;
temporary work stays inside the staging folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.core.errors import UserError
from export.core.models import ModelSpec

from artifact_fixtures import run, trained_checkpoint

pytestmark = pytest.mark.usefixtures("one_dynamo_export_per_weights")


# ---------------------------------------------------------------------------------------------
# Calibration never leaks into the judged split, however the data is named
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    from layout_writers import gray28, write_torchvision

    root = tmp_path_factory.mktemp("data")
    raw = write_torchvision(root, gray28())
    return root, raw


def _calibrated_on(mnist_root, calib):
    from export.convert.calibration import calibration_set
    from export.core.models import default_spec
    from export.data import describe_source
    from export.gate.inputs import accuracy_set

    spec = default_spec("resnet20", num_classes=10, in_chans=1, input_size=16)
    dataset = describe_source(mnist_root)  # the checkpoint was trained from the root
    calibration = calibration_set(spec, dataset, calib, 2000, "minmax")
    return lambda: accuracy_set(spec, dataset, 2, calibration.description)


@pytest.mark.parametrize("name", ["raw", "t10k file", "dataset folder", "link to root",
                                  "root again"])
def test_calibration_on_the_judged_images_is_refused_however_named(tmp_path, mnist, name):
    root, raw = mnist
    link = tmp_path / "elsewhere"
    link.symlink_to(root)
    calib = {"raw": raw, "t10k file": raw / "t10k-images-idx3-ubyte",
             "dataset folder": root / "MNIST", "link to root": link, "root again": root}[name]
    judge = _calibrated_on(root, calib)
    with pytest.raises(UserError, match="calibration images are also in the test split"):
        judge()


def test_calibration_on_the_training_split_is_judged(mnist):
    root, _ = mnist
    _, described = _calibrated_on(root, None)()  # the checkpoint's own training split
    assert described["count"] > 0


def test_calibration_on_other_data_is_judged(tmp_path, mnist):
    from layout_writers import gray28, write_torchvision

    root, _ = mnist
    other = write_torchvision(tmp_path / "copy", gray28())  # same pixels, other files
    labelled, described = _calibrated_on(root, other)()  # files are the identity: a copy is
    assert described["dataset"]["path"] == str(root)     # other data, and the root is judged
    assert described["count"] == len(labelled.labels) > 0


# ---------------------------------------------------------------------------------------------
# INT8 calibration: memory estimated before it starts; temporary work inside the staging
# ---------------------------------------------------------------------------------------------


def test_a_calibration_that_cannot_fit_in_memory_is_refused_before_it_starts(mnist,
                                                                           monkeypatch):
    import export.convert.calibration as calibration_mod
    import export.core.hardware as hardware

    root, raw = mnist
    monkeypatch.setattr(hardware, "available_memory", lambda: 64 << 20)
    monkeypatch.setattr(calibration_mod, "split_images",
                        lambda *a, **k: pytest.fail("decoded the images anyway"))
    spec = ModelSpec.create("resnet20", num_classes=10, in_chans=1, input_size=1024)
    with pytest.raises(UserError) as info:
        calibration_mod.calibration_set(spec, None, raw, 1258, "entropy")
    text = str(info.value)
    assert text.startswith("INT8 calibration of 1258 images at 1024x1024 (entropy) needs")
    assert "lower --calib-count or --input-size" in text and "\n" not in text


def test_int8_temporary_work_stays_inside_the_staging_folder(cwd, monkeypatch):
    import tempfile

    system_tmp = cwd / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen = []
    real = tempfile.TemporaryDirectory

    class Recorded(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(Path(self.name))

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Recorded)
    trained_checkpoint(cwd / "ck.pt")
    result = run("--checkpoint", cwd / "ck.pt", "--input-size", "16", "--batch-range",
                 "1:1:2", "--fmt", "onnx-int8", "--calib-count", "32", "--out", cwd / "out")
    assert seen, "no temporary folder was made"
    assert not [p for p in seen if system_tmp in p.parents], seen
    assert all(".partial" in str(p) for p in seen), seen
    assert list(system_tmp.iterdir()) == []
    assert result.exception is None or isinstance(result.exception, SystemExit)
