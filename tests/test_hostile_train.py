"""Hostile inputs to training: crafted files, bad numbers, kills, full disks.

Every case ends in one ``Error: ...`` line and exit status 2 (a bad option) or 1 (anything
else), never a traceback, and never destroys what the user already has. The data is tiny (a
few generated images per class) and the runs are one or two steps, so the suite stays fast.
"""

import dataclasses
import json
import os
import re
import signal
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from export.cli import main as export_cli
from export.core.checkpoint import load_checkpoint, save_checkpoint
from export.core.errors import UserError
from export.core.models import ModelSpec
from export.train.cli import main as train_cli


# --- helpers ----------------------------------------------------------------------------------


def write_pngs(root, classes=("a", "b"), per_class=6, size=12, seed=0):
    """A class-per-folder tree of small random 8-bit grayscale PNGs; returns the root."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(
                root / name / f"{i}.png")
    return root


def invoke(cli, *args):
    """Run a command in-process; an exception that escapes it fails the test."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result, code):
    """The single ``Error: ...`` line a failed command printed, after checking its exit status.

    Progress bars (stderr, redrawn with carriage returns and cleared when an epoch ends) are
    not lines a user is left with, so they are set aside.
    """
    assert result.exit_code == code, result.output
    lines = [line.strip() for line in re.split(r"[\r\n]", result.stderr)
             if line.strip() and not re.match(r"\s*epoch \d+/\d+:", line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


TINY = ("--epochs", "1", "--max-steps", "2", "--input-size", "16", "--batch-size", "4",
        "--threads", "1")


@pytest.fixture
def images(tmp_path):
    return write_pngs(tmp_path / "imgs")


@pytest.fixture
def no_hang():
    """Turn a blocking open() (a FIFO without a writer) into a test failure after 20 s."""
    def expire(_signum, _frame):
        raise TimeoutError("blocked: something opened a FIFO")

    before = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, before)


# --- weights files that are not weights files (item 8) ----------------------------------------


def _not_weights(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "passwd":
        path.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/sh\n")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "not a torch file")
    elif kind == "zip-folder":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/notes.txt", "not a torch file either")
    else:
        path.write_bytes(np.random.default_rng(int(kind.split("-")[1])).bytes(4096))
    return path


NOT_WEIGHTS = ["text", "empty", "passwd", "zip", "zip-folder",
               *(f"random-{seed}" for seed in range(8))]


@pytest.mark.parametrize("kind", NOT_WEIGHTS)
def test_a_file_that_is_not_weights_is_one_clear_error(tmp_path, kind):
    with pytest.raises(UserError, match="not a valid PyTorch weights file"):
        load_checkpoint(_not_weights(tmp_path, kind))


def test_etc_passwd_is_not_weights():
    with pytest.raises(UserError, match="not a valid PyTorch weights file"):
        load_checkpoint("/etc/passwd")


@pytest.mark.parametrize("kind", ["text", "random-1", "zip"])
def test_every_command_refuses_a_non_weights_file_in_one_line(tmp_path, monkeypatch, images,
                                                              kind):
    monkeypatch.chdir(tmp_path)
    bad = _not_weights(tmp_path, kind)
    line = error_line(invoke(export_cli, "--checkpoint", bad, "--fmt", "onnx"), 1)
    assert "not a valid PyTorch weights file" in line
    line = error_line(invoke(train_cli, "--data", images, "--init-weights", bad, *TINY), 1)
    assert "not a valid PyTorch weights file" in line
    line = error_line(invoke(train_cli, "--resume", bad), 1)
    assert "not a valid PyTorch weights file" in line
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(bad.read_bytes())
    line = error_line(invoke(train_cli, "--resume", run), 1)
    assert "not a valid PyTorch weights file" in line


def test_weights_paths_that_are_not_regular_files(tmp_path, no_hang):
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        load_checkpoint(fifo)  # opening it would wait for a writer forever
    with pytest.raises(UserError, match="not a regular file"):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / ("w" * 300 + ".pt"))  # too long a name to exist


# --- checkpoint metadata is checked on load (item 7) ------------------------------------------


def _checkpoint(tmp_path, name="ckpt.pt", **changes):
    """A small valid resnet-train checkpoint with some of its entries replaced."""
    spec = ModelSpec.create("resnet20", num_classes=3, in_chans=1, input_size=16,
                            mean=(0.5,), std=(0.25,))
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "good.pt", spec.build(), spec, ["a", "b", "c"],
                           dataset={"kind": "digits", "path": None, "seed": 0,
                                    "val_fraction": 0.1, "test_fraction": 0.2,
                                    "num_images": 1797},
                           train_config={"model": "resnet20"}, metrics={"val_top1": 0.5},
                           epoch=1)
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            payload[outer] = {**payload[outer], inner: value}
        else:
            payload[key] = value
    torch.save(payload, tmp_path / name)
    return tmp_path / name


def test_a_valid_checkpoint_still_loads(tmp_path):
    ckpt = load_checkpoint(_checkpoint(tmp_path))
    assert ckpt.class_names == ["a", "b", "c"] and ckpt.spec.num_classes == 3
    assert ckpt.meta["dataset"]["kind"] == "digits"


@pytest.mark.parametrize("changes,expected", [
    ({"class_names": ["a", "b"]}, "2 class names but the model has 3 classes"),
    ({"class_names": ["a", "b", "c", "d"]}, "4 class names but the model has 3 classes"),
    ({"class_names": "abc"}, "class_names must be a list of strings"),
    ({"class_names": ["a", 2, "c"]}, "class_names must be a list of strings"),
    ({"class_names": ["a", "a", "c"]}, "repeats the class name 'a'"),
    ({"dataset": "digits"}, "dataset must be a dict"),
    ({"dataset": ["digits"]}, "dataset must be a dict"),
    ({"dataset.kind": 3}, "dataset 'kind' must be"),
    ({"dataset.path": 5}, "dataset 'path' must be"),
    ({"dataset.seed": "0"}, "dataset 'seed' must be"),
    ({"dataset.seed": True}, "dataset 'seed' must be"),
    ({"dataset.val_fraction": "0.1"}, "dataset 'val_fraction' must be"),
    ({"dataset.test_fraction": 1.5}, "dataset 'test_fraction' must be"),
    ({"dataset.num_images": -1}, "dataset 'num_images' must be"),
    ({"dataset": {"kind": "digits"}}, "dataset lacks"),
    ({"model.num_classes": "3"}, "num_classes must be an integer"),
    ({"model.num_classes": 3.0}, "num_classes must be an integer"),
    ({"model.input_size": True}, "input_size must be an integer"),
    ({"model.name": 20}, "name must be a string"),
    ({"model.shortcut": "C"}, "shortcut"),
    ({"model.mean": ["0.5"]}, "mean must be a list of numbers"),
    ({"model.mean": 0.5}, "mean must be a list of numbers"),
    ({"model.mean": [float("nan")]}, "finite"),
    ({"model.std": [0.0]}, "std must be positive"),
    ({"model.std": [float("inf")]}, "finite"),
    ({"model": "resnet20"}, "model description must be a dict"),
    ({"model.num_classes": 5}, "fc.weight"),
    ({"model.in_chans": 3, "model.mean": [0.5] * 3, "model.std": [0.5] * 3}, "conv1.weight"),
    ({"epoch": "1"}, "epoch must be"),
    ({"metrics": [1]}, "metrics must be a dict"),
    ({"train_config": "sgd"}, "train_config must be a dict"),
])
def test_checkpoint_metadata_is_checked_on_load(tmp_path, changes, expected):
    with pytest.raises(UserError, match="bad.pt") as info:
        load_checkpoint(_checkpoint(tmp_path, "bad.pt", **changes))
    assert expected in str(info.value)


@pytest.mark.parametrize("changes", [{"class_names": ["a", "b"]}, {"dataset": "digits"},
                                     {"dataset.seed": "zero"}])
def test_export_refuses_a_checkpoint_with_bad_metadata(tmp_path, monkeypatch, changes):
    monkeypatch.chdir(tmp_path)
    bad = _checkpoint(tmp_path, "bad.pt", **changes)
    line = error_line(invoke(export_cli, "--checkpoint", bad, "--fmt", "onnx"), 1)
    assert "bad.pt" in line
    assert not (tmp_path / "artifacts").exists()


# --- numbers out of range are bad options: exit status 2 (items 10 and 13) ---------------------


@pytest.mark.parametrize("args,expected", [
    (["--seed", "-1"], "--seed"),
    (["--seed", "99999999999999999999"], "32-bit seeds"),
    (["--seed", "4294967296"], "32-bit seeds"),
    (["--warmup-epochs", "inf"], "finite"),
    (["--warmup-epochs", "nan"], "finite"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--lr", "nan"], "finite"),
    (["--lr", "inf"], "finite"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--weight-decay", "nan"], "finite"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--label-smoothing", "nan"], "finite"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "99999999999999999999"], "--epochs"),
    (["--batch-size", "1"], "BatchNorm"),
    (["--batch-size", "100000000000"], "does not fit in memory"),
    (["--input-size", "100000"], "a side over 2048"),
    (["--input-size", "99999999999999999999"], "a side over 2048"),
    (["--input-size", "4"], "--input-size"),
    (["--val-fraction", "0"], "--val-fraction"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--test-fraction", "nan"], "finite"),
    (["--val-fraction", "0.5", "--test-fraction", "0.45"], "sum below 0.9"),
    (["--workers", "-1"], "--workers"),
    (["--threads", "-1"], "--threads"),
    (["--threads", "99999999999999999999"], "--threads"),
    (["--max-steps", "0"], "--max-steps"),
    (["--epochs", "ten"], "--epochs"),
    (["--depth", "99999999999999999999"], "unknown model"),
])
def test_bad_numbers_are_bad_options(tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, *args), 2)
    assert expected in line
    assert not (tmp_path / "artifacts").exists()


def test_a_bad_number_given_with_resume_is_a_bad_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--epochs" in error_line(invoke(train_cli, "--resume", "run", "--epochs", "0"), 2)
    assert "finite" not in error_line(invoke(train_cli, "--resume", "run", "--max-steps", "-3"),
                                      2)


@pytest.mark.parametrize("changes,expected", [
    ({"lr": float("nan")}, "--lr must be a finite number"),
    ({"seed": -1}, "--seed must be in the range"),
    ({"epochs": "3"}, "--epochs must be an integer"),
    ({"batch_size": True}, "--batch-size must be an integer"),
    ({"warmup_epochs": float("inf")}, "--warmup-epochs must be a finite number"),
    ({"input_size": 10**30}, "--input-size must be in the range"),
    ({"data": 3}, "--data must be a path"),
])
def test_train_config_checks_types_and_ranges(changes, expected):
    from export.core.errors import BadOption
    from export.train import TrainConfig

    with pytest.raises(BadOption, match=expected):
        TrainConfig(**changes).resolved()


def test_a_path_in_the_config_is_stored_as_text(tmp_path):
    from export.train import TrainConfig

    config = TrainConfig(data=tmp_path / "x.npz", init_weights=tmp_path / "w.pt").resolved()
    assert config.data == str(tmp_path / "x.npz") and isinstance(config.init_weights, str)


def test_a_bad_saved_configuration_is_the_files_fault(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _checkpoint(run, "last.pt", optimizer={}, train_config={"lr": float("nan")})
    line = error_line(invoke(train_cli, "--resume", run), 1)
    assert "last.pt holds a bad training configuration: --lr must be a finite number" in line


# --- 16-bit images and the files a scan skips (item 6) ----------------------------------------


def test_16_bit_grayscale_keeps_its_high_byte(tmp_path):
    from export.data import read_image

    values = np.arange(256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(values.astype(np.uint8), "L").save(tmp_path / "8.png")
    Image.fromarray(values * 257).save(tmp_path / "16.png")  # the same picture in 16 bits
    with Image.open(tmp_path / "16.png") as img:
        assert img.mode == "I;16"
    eight, sixteen = read_image(tmp_path / "8.png", 16), read_image(tmp_path / "16.png", 16)
    assert sixteen.dtype == np.uint8 and np.array_equal(sixteen, eight)
    Image.fromarray(values * 256 + 255).save(tmp_path / "low.png")  # low byte is dropped
    assert np.array_equal(read_image(tmp_path / "low.png", 16), eight)


def test_training_on_16_bit_pngs_sees_grey_levels(tmp_path):
    from export.data import describe_source, load_training_data

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "d" / name).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 65536, (12, 12)).astype(np.uint16)
            Image.fromarray(pixels).save(tmp_path / "d" / name / f"{i}.png")
    data = load_training_data(describe_source(tmp_path / "d"), 12)
    # Clipping to 0..255 gave (almost) only 255: real grey levels span the range.
    assert len(np.unique(data.images["train"])) > 200


def test_a_32_bit_integer_image_out_of_16_bit_range_is_refused(tmp_path, monkeypatch):
    from export.data import read_image

    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32), "I").save(tmp_path / "i.tif")
    image = Image.open(tmp_path / "i.tif")
    monkeypatch.setattr("PIL.Image.open", lambda *_a, **_k: image)  # as if a PNG said "I"
    with pytest.raises(UserError, match="outside 0..65535"):
        read_image(tmp_path / "i.png", 8)


def test_the_scan_says_how_many_files_it_skipped(tmp_path, monkeypatch, no_hang):
    root = write_pngs(tmp_path / "imgs")
    (root / "README.txt").write_text("about these images")
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / "nested").mkdir()
    (root / "b" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored without a word
    os.mkfifo(root / "b" / "pipe.png")  # not a regular file: never opened
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", root, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    assert "skipped 4 entries that are not PNG/JPEG files" in result.output
    assert "README.txt" in result.output


# --- hostile data: bombs, broken archives, odd arrays, unreadable folders, FIFOs (item 11) -----


def _load(path, size=16):
    from export.data import describe_source, load_training_data

    return load_training_data(describe_source(path), size)


@pytest.mark.parametrize("limit", [100, 60])  # 12x12 = 144 pixels: a warning, then an error
def test_a_decompression_bomb_is_an_error_line(tmp_path, monkeypatch, images, limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, *TINY), 1)
    assert "decompression bomb" in line and "0.png" in line


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _xy(n=12, h=8, w=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), np.arange(n) % 2


def test_a_truncated_npz_is_an_error_line(tmp_path, monkeypatch):
    good = _npz(tmp_path / "good.npz", x=_xy()[0], y=_xy()[1]).read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", tmp_path / "cut.npz", *TINY), 1)
    assert "cannot read" in line and "cut.npz" in line


@pytest.mark.parametrize("damage", ["flip", "compressed-flip"])
def test_a_damaged_npz_member_is_an_error(tmp_path, damage):
    x, y = _xy(200, 16, 16)
    path = tmp_path / "d.npz"
    (np.savez_compressed if damage.startswith("compressed") else np.savez)(path, x=x, y=y)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside x's data
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="cannot read .*d.npz"):
        _load(path)


def test_npz_members_that_are_not_arrays(tmp_path):
    x, y = _xy()
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([x[i] for i in range(12)] + [None], dtype=object)[:12], y=y)
    with pytest.raises(UserError, match="x holds Python objects"):
        _load(objects)
    with zipfile.ZipFile(tmp_path / "raw.npz", "w") as z:  # members without .npy: raw bytes
        z.writestr("x", x.tobytes())
        z.writestr("y", y.tobytes())
    with pytest.raises(UserError, match="x is not a NumPy array"):
        _load(tmp_path / "raw.npz")
    with zipfile.ZipFile(tmp_path / "junk.npz", "w") as z:
        z.writestr("x.npy", b"not an array")
        z.writestr("y.npy", b"nor this")
    with pytest.raises(UserError, match="cannot read .*junk.npz"):
        _load(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", x)  # one array, not an archive
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(UserError, match="not an .npz archive"):
        _load(tmp_path / "single.npz")


@pytest.mark.parametrize("shape", [(12, 0, 8), (12, 8, 0), (12, 0, 0, 3)])
def test_zero_sized_images_are_refused(tmp_path, shape):
    path = _npz(tmp_path / "flat.npz", x=np.zeros(shape, np.uint8), y=np.arange(12) % 2)
    with pytest.raises(UserError, match="at least 1 x 1 pixel"):
        _load(path)


def test_an_unreadable_class_folder_is_an_error_line(tmp_path, monkeypatch, images):
    real = type(images).iterdir

    def iterdir(self):
        if self.name == "b":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(type(images), "iterdir", iterdir)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, *TINY), 1)
    assert "cannot read" in line and "Permission denied" in line and "/b" in line


def test_an_unreadable_image_is_named(tmp_path, monkeypatch, images):
    real = Image.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("3.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(UserError, match="cannot read image .*3.png: .*Permission denied"):
        _load(images)


@pytest.mark.parametrize("name", ["data.npz", "data", "data.png"])
def test_a_fifo_given_as_data_is_refused_without_opening_it(tmp_path, monkeypatch, no_hang,
                                                           name):
    from export.data import scan

    fifo = tmp_path / name
    os.mkfifo(fifo)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", fifo, *TINY), 1)
    assert "not a regular file or a folder" in line
    # A checkpoint's dataset that now points at a FIFO (resume, the parity gate).
    with pytest.raises(UserError, match="not a regular file"):
        scan({"kind": "npz", "path": str(fifo), "seed": 0, "val_fraction": 0.1,
              "test_fraction": 0.2})


def test_a_long_data_folder_name_gets_a_short_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    roots = [write_pngs(tmp_path / (c * 250)) for c in "pq"]  # 250 characters each
    made = []
    for root in roots:
        result = invoke(train_cli, "--data", root, *TINY)
        assert result.exit_code == 0, result.output
        made += [p for p in (tmp_path / "artifacts" / "train").iterdir() if p not in made]
    assert len(made) == 2 and all(len(p.name.encode()) <= 120 for p in made)
    assert made[0].name.startswith("resnet20-ppp") and made[1].name.startswith("resnet20-qqq")
    assert all((p / "summary.json").exists() for p in made)


def test_a_data_path_too_long_to_exist_is_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", tmp_path / ("d" * 300), *TINY), 1)
    assert "not found" in line


def test_an_npz_too_big_for_memory_is_refused_from_its_header(tmp_path):
    """x.npy claims 10^9 images of 1000 x 1000: refused before numpy tries to allocate it."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1000, 1000)})
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
        z.writestr("y.npy", b"")
    with pytest.raises(UserError, match=r"x \(1000000000 x 1000 x 1000 float32\) needs .* of "
                                        r"memory, but only .* is available"):
        _load(tmp_path / "huge.npz")


def test_decoding_more_than_memory_holds_is_refused_first(tmp_path, monkeypatch, images):
    monkeypatch.setattr("export.core.hardware.available_memory", lambda: 4096)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, *TINY), 1)
    assert "decoding 12 images at 1 x 16 x 16 needs 6.0 KiB of memory, but only 4.0 KiB" in line
    assert "lower --input-size" in line
    assert not (tmp_path / "artifacts").exists()


def test_a_batch_whose_activations_cannot_fit_is_refused_before_training(tmp_path, monkeypatch,
                                                                         images):
    from export.core.models import build_model
    from export.train.steps import activation_bytes

    per_image = activation_bytes(build_model("resnet20", 2, 1), 1, 16)
    assert per_image > 16 * 16 * 16 * 4  # at least the first convolution's 16 channels
    monkeypatch.setattr("export.train.loop.available_memory", lambda: 3 * per_image)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, *TINY), 1)
    assert "a batch of 4 images of 1 x 16 x 16 needs at least" in line
    assert "lower --batch-size or --input-size" in line
    monkeypatch.setattr("export.train.loop.available_memory", lambda: 4 * per_image)
    assert invoke(train_cli, "--data", images, *TINY).exit_code == 0


def test_activation_estimate_scales_with_the_input_and_leaves_the_model_alone():
    from export.core.models import build_model
    from export.train.steps import activation_bytes

    model = build_model("resnet18", 10, 3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, large = activation_bytes(model, 3, 32), activation_bytes(model, 3, 224)
    assert model.training and all(torch.equal(v, before[k]) for k, v in
                                  model.state_dict().items())
    assert 40 < large / small < 50  # (224 / 32)^2 = 49, less the classifier
    assert 10 * 2**20 < large < 100 * 2**20  # about 19 MiB per 224 x 224 image for resnet18


# --- the run folder cannot be written: a file in the way, read-only, full (item 12) ------------


def _epoch_lines(output):
    return [line for line in output.splitlines() if "train loss" in line]


def test_out_under_a_file_or_on_a_fifo_is_refused_before_anything(tmp_path, monkeypatch, images,
                                                                  no_hang):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("in the way")
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "file" / "run",
                             *TINY), 1)
    assert "file is a file, not a folder" in line
    os.mkfifo(tmp_path / "pipe")
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "pipe", *TINY), 1)
    assert "exists and is not a folder" in line
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / ("r" * 300),
                             *TINY), 1)
    assert "longer than the 255 bytes" in line
    assert (tmp_path / "file").read_text() == "in the way"


def test_a_read_only_run_folder_fails_before_training(tmp_path, monkeypatch, images):
    import errno
    import tempfile

    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(tmp_path / "run") in str(dir):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", images, "--out", tmp_path / "run", *TINY)
    line = error_line(result, 1)
    assert "run: Read-only file system; nothing was trained" in line
    assert not _epoch_lines(result.output)


def test_a_read_only_parent_is_refused_before_the_data_is_read(tmp_path, monkeypatch, images):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(tmp_path)
                        else real(p, mode, **k))
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "run", *TINY), 1)
    assert f"{tmp_path} is not writable" in line


def test_a_full_disk_mid_run_keeps_the_last_good_checkpoints(tmp_path, monkeypatch, images):
    import errno

    real, calls = torch.save, []

    def fill_up(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 3:  # epoch 1 wrote best.pt and last.pt; the disk is full in epoch 2
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_up)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = invoke(train_cli, "--data", images, "--out", out, "--epochs", "2", "--input-size",
                    "16", "--batch-size", "4", "--threads", "1")
    line = error_line(result, 1)
    assert "No space left on device" in line
    assert "last.pt (epoch 1)" in line and "best.pt" in line
    monkeypatch.setattr(torch, "save", real)
    assert load_checkpoint(out / "best.pt").meta["epoch"] == 1
    assert load_checkpoint(out / "last.pt").meta["epoch"] == 1
    assert not list(out.glob(".*partial"))


@pytest.mark.parametrize("target", ["write_json", "plot_curves"])
def test_a_full_disk_while_finishing_is_one_line(tmp_path, monkeypatch, images, target):
    import errno

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(f"export.train.loop.{target}", full)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "run", *TINY), 1)
    assert "No space left on device" in line and "redoes only the test" in line


# --- a run that fails leaves its folder usable; divergence stops the run (item 15) ------------


def test_a_diverged_run_stops_and_its_folder_can_be_used_again(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    result = invoke(train_cli, "--data", images, "--out", out, "--lr", "1e30", *TINY)
    line = error_line(result, 1)
    assert "training diverged: the loss is not finite" in line and "--lr" in line
    assert not _epoch_lines(result.output)  # nothing was recorded as an epoch
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()

    line = error_line(invoke(train_cli, "--resume", out), 1)
    assert "nothing to resume" in line and f"--out {out}" in line  # offers what works
    again = invoke(train_cli, "--data", images, "--out", out, *TINY)  # no --overwrite needed
    assert again.exit_code == 0, again.output
    assert load_checkpoint(out / "last.pt").meta["epoch"] == 1


def test_a_folder_with_best_but_no_last_says_what_works(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    assert invoke(train_cli, "--data", images, "--out", out, *TINY).exit_code == 0
    (out / "last.pt").unlink()  # killed between the two saves of the first epoch
    line = error_line(invoke(train_cli, "--resume", out), 1)
    assert "no last.pt" in line and "--overwrite" in line
    line = error_line(invoke(train_cli, "--data", images, "--out", out, *TINY), 1)
    assert "already holds a training run" in line and "--overwrite" in line


def test_one_non_finite_loss_stops_the_epoch_at_that_step():
    from export.train.steps import train_one_epoch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    batches = [(torch.randn(2, 1, 2, 2), torch.tensor([0, 1])) for _ in range(6)]
    batches[2] = (torch.full((2, 1, 2, 2), float("nan")), torch.tensor([0, 1]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    stats = train_one_epoch(model, batches, optimizer, scheduler, torch.nn.CrossEntropyLoss(),
                            torch.device("cpu"), torch.amp.GradScaler("cuda", enabled=False))
    assert stats.steps == 3 and not np.isfinite(stats.loss)


def test_a_diverged_validation_saves_nothing(tmp_path, monkeypatch, images):
    """Weights that the last step broke give a finite training loss but a NaN validation."""
    from export.train import loop

    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate",
                        lambda *a, **k: dataclasses.replace(real(*a, **k), loss=float("nan")))
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "r", *TINY), 1)
    assert "validation loss is not finite" in line
    assert not (tmp_path / "r" / "best.pt").exists()


def test_overwrite_removes_the_replaced_runs_results_at_once(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    assert invoke(train_cli, "--data", images, "--out", out, *TINY).exit_code == 0
    assert (out / "summary.json").exists() and (out / "curves.png").exists()
    result = invoke(train_cli, "--data", images, "--out", out, "--overwrite", "--lr", "1e30",
                    *TINY)
    assert "diverged" in error_line(result, 1)
    # The old summary would describe a run that is no longer there.
    assert not (out / "summary.json").exists() and not (out / "curves.png").exists()


def test_a_run_diverging_later_keeps_its_last_good_epoch(tmp_path, monkeypatch, images):
    from export.train import loop

    real, calls = loop.evaluate, []

    def nan_in_epoch_2(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        return result if len(calls) == 1 else dataclasses.replace(result, loss=float("nan"))

    monkeypatch.setattr(loop, "evaluate", nan_in_epoch_2)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    line = error_line(invoke(train_cli, "--data", images, "--out", out, "--epochs", "2",
                             "--input-size", "16", "--batch-size", "4", "--threads", "1"), 1)
    assert "after epoch 2" in line and "last.pt still holds epoch 1" in line
    assert "start again with --overwrite" in line
    assert load_checkpoint(out / "last.pt").meta["epoch"] == 1


# --- a kill while finishing: --resume redoes only the finishing steps (item 16) ---------------


@pytest.mark.parametrize("kill", ["interrupt", "full-disk"])
def test_resume_redoes_only_the_finishing_steps(tmp_path, monkeypatch, images, kill):
    import errno

    from export.core.fileio import sha256_file
    from export.train import loop

    def killed(*_args, **_kwargs):
        if kill == "interrupt":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "write_json", killed)
        result = invoke(train_cli, "--data", images, "--out", out, *TINY)
    assert result.exit_code == (130 if kill == "interrupt" else 1), result.output
    assert not (out / "summary.json").exists()
    last = sha256_file(out / "last.pt")

    again = invoke(train_cli, "--resume", out)
    assert again.exit_code == 0, again.output
    assert "finishing" in again.output and not _epoch_lines(again.output)
    assert sha256_file(out / "last.pt") == last  # no step was trained again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["steps"] == 2
    assert (out / "curves.png").exists()
    assert "test_top1" in load_checkpoint(out / "best.pt").meta["metrics"]

    line = error_line(invoke(train_cli, "--resume", out), 1)
    assert "already finished 1 of 1 epochs" in line


def test_a_summary_of_an_earlier_segment_does_not_count_as_finished(tmp_path, monkeypatch,
                                                                    images):
    from export.train import loop

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    assert invoke(train_cli, "--data", images, "--out", out, *TINY).exit_code == 0
    with monkeypatch.context() as patch:  # the second segment is killed while finishing
        patch.setattr(loop, "write_json", lambda *_a, **_k: (_ for _ in ()).throw(
            KeyboardInterrupt))
        assert invoke(train_cli, "--resume", out, "--epochs", "2").exit_code == 130
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1  # the old one
    again = invoke(train_cli, "--resume", out)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


# --- names with terminal control characters are printed escaped (item 17) --------------------


HOSTILE_NAMES = ["a\x1b[2J\x1b[31mred", "b\nnext line", "c\u202eright-to-left", "d\x07bell"]


def _assert_escaped(output):
    assert not any(c in output for c in "\x1b\x07\u202e")
    assert "\\x1b[2J\\x1b[31mred" in output and "b\\nnext line" in output
    assert "c\\u202eright-to-left" in output and "d\\x07bell" in output


def test_class_names_from_folders_are_escaped_when_printed(tmp_path, monkeypatch):
    root = write_pngs(tmp_path / "imgs", classes=HOSTILE_NAMES, per_class=4)
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", root, "--out", tmp_path / "run", *TINY,
                    "--test-fraction", "0.3")
    assert result.exit_code == 0, result.output
    _assert_escaped(result.stdout)
    matrix = result.stdout[result.stdout.index("true \\ predicted"):].splitlines()
    assert [line.split()[0] for line in matrix[1:5]] == ["a\\x1b[2J\\x1b[31mred", "b\\nnext",
                                                          "c\\u202eright-to-left",
                                                          "d\\x07bell"]
    # The data keeps the real names; only what is printed is escaped.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["class_names"] == sorted(HOSTILE_NAMES)


def test_class_names_from_npz_labels_are_escaped(tmp_path, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8)
    y = np.array(HOSTILE_NAMES * 4)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", tmp_path / "d.npz", "--out", tmp_path / "run", *TINY,
                    "--test-fraction", "0.3")
    assert result.exit_code == 0, result.output
    _assert_escaped(result.stdout)


def test_names_in_error_lines_are_escaped(tmp_path, monkeypatch):
    root = write_pngs(tmp_path / "imgs", classes=["only\x1b[31m\nclass"])
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", root, *TINY), 1)
    assert "single class (only\\x1b[31m\\nclass)" in line


# --- siblings: the rest of what a run reads from files and the environment --------------------


@pytest.mark.parametrize("damage", [
    {"optimizer": {"junk": 1}},
    {"scheduler": {"last_epoch": "three"}},
    {"scheduler": {"base_lrs": [float("nan")]}},
    {"step": "two"},
    {"history": 5},
    {"rng_state": torch.zeros(3)},
])
def test_a_damaged_resume_state_is_one_line(tmp_path, monkeypatch, images, damage):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    assert invoke(train_cli, "--data", images, "--out", out, "--epochs", "2", "--max-steps",
                  "1", "--input-size", "16", "--batch-size", "4", "--threads", "1"
                  ).exit_code == 0
    payload = torch.load(out / "last.pt", weights_only=True)
    for key, value in damage.items():
        payload[key] = ({**payload[key], **value} if isinstance(value, dict)
                        and key == "scheduler" else value)
    torch.save(payload, out / "last.pt")
    rng = torch.get_rng_state()
    line = error_line(invoke(train_cli, "--resume", out), 1)
    torch.set_rng_state(rng)
    assert "last.pt: its resume state is damaged" in line, line


def test_a_saved_configuration_naming_an_unknown_model_is_the_files_fault(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _checkpoint(run, "last.pt", optimizer={}, train_config={"model": "resnet7"})
    line = error_line(invoke(train_cli, "--resume", run), 1)
    assert "bad training configuration" in line and "resnet7" in line


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "two"}, {"RANK": "3", "WORLD_SIZE": "2"},
                                 {"LOCAL_RANK": "-1"}])
def test_a_broken_torchrun_environment_is_one_line(tmp_path, monkeypatch, images, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, *TINY), 1)
    assert "torchrun" in line


def test_momentum_is_checked_too():
    from export.core.errors import BadOption
    from export.train import TrainConfig

    with pytest.raises(BadOption, match="momentum"):
        TrainConfig(momentum=float("nan")).resolved()


def test_files_in_a_folder_that_holds_no_run_are_left_alone(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "curves.png").write_bytes(b"my own plot")
    (out / "notes.txt").write_text("keep me")
    assert invoke(train_cli, "--data", images, "--out", out, "--lr", "1e30", *TINY
                  ).exit_code == 1  # a failed run...
    assert (out / "curves.png").read_bytes() == b"my own plot"  # ...deletes nothing
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text('{"epoch": 1}\n')  # a log with an epoch: a run
    line = error_line(invoke(train_cli, "--data", images, "--out", other, *TINY), 1)
    assert "already holds a training run" in line
    assert (out / "notes.txt").read_text() == "keep me"
