"""Hostile inputs to training: crafted files, bad numbers, kills, full disks, runs at once.

Every case ends in one ``Error: ...`` line and exit status 2 (a bad option) or 1 (anything
else), never a traceback, never a hang, and never destroys what the user already has. The data
is tiny (a few generated images per class), the runs are one or two steps, and every bomb is
bounded (a few hundred KB on disk at most), so the suite stays fast.

The cases are grouped by class, one banner each below (``item N``: the first hostile-input
issue; ``20.N``: issue 20), so that the next variant of a class lands beside its kin. Cases
count parametrised variants one each:

| class | what it covers | cases |
|---|---|---|
| weights files that are not weights (8) | text, empty, random, zips, FIFOs as --init-weights / checkpoints | 18 |
| checkpoint metadata (7) | every field of a checkpoint checked on load, by every command | 35 |
| numbers out of range (10, 13) | NaN, inf, huge and negative options: exit 2 with the reason | 41 |
| 16-bit images, skipped files (6) | high byte kept, 32-bit refused, what a scan skips | 4 |
| hostile data (11) | decompression bombs, broken .npz, odd arrays, FIFO as --data, memory | 20 |
| run folder cannot be written (12) | a file in the way, read-only, full disk (simulated) | 6 |
| failed runs leave folders usable (15) | divergence, best without last, --overwrite | 6 |
| kills while finishing (16) | --resume redoes only the finishing steps | 3 |
| control characters (17) | folder and .npz names escaped in output and errors | 3 |
| siblings | damaged resume state, torchrun environment, foreign files kept | 12 |
| two trainings at once (20.1b) | a run started in another's first epoch, held --out, double --resume, stale lock | 4 |
| pickles that expand (20.4) | billion laughs (labels, meta), shared rows, deep nesting, arrays without bytes, 3 GB asks, 2^60 length fields | 9 |
| class names that are not names (20.4b, 20.13) | repeated names, names decoding alike, int / None / empty label_names, CIFAR binary | 8 |
| FIFOs inside datasets (20.5) | idx plain and .gz, CIFAR python and binary batches and names, an image | 6 |
| a really full disk (20.11) | torch's writer failing under a file size limit, before and after best.pt | 2 |
| degenerate arrays and archives (20.13) | zero height (idx, Keras), 10^12-image headers, zip bomb, not .npy, objects, 1,400-deep folders | 8 |
| forged lines (20.14) | newlines, ESC and bidi marks in class folders, idx folders, CIFAR meta, .npz labels | 4 |
| messages (20.15) | NaN / inf named, one-class calibration data, JPEG EXIF orientation | 4 |
| total | | 193 |
"""

import dataclasses
import json
import os
import signal
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from export.cli import main as export_cli
from export.core.checkpoint import load_checkpoint, save_checkpoint
from export.core.errors import UserError
from export.core.models import ModelSpec
from export.train.cli import main as train_cli

from cli_helpers import invoke as run_cli
from cli_helpers import only_error_line as error_line

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
    return run_cli(cli, args)


TINY = ("--epochs", "1", "--max-steps", "2", "--input-size", "16", "--batch-size", "4",
        "--threads", "1")


@pytest.fixture
def images(tmp_path):
    return write_pngs(tmp_path / "imgs")


class Blocked(BaseException):
    """Raised by :func:`no_hang`; not an OSError, so no reader's error handling can take it
    for a read error and pass the test."""


@pytest.fixture
def no_hang():
    """Turn a blocking open() (a FIFO without a writer) into a test failure after 90 s (a
    tiny training run included, on a busy machine)."""
    def expire(_signum, _frame):
        raise Blocked("blocked: something opened a FIFO or hung")

    before = signal.signal(signal.SIGALRM, expire)
    signal.alarm(90)
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
        read_image(tmp_path / "i.tif", 8)


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
        if str(getattr(path, "name", path)).endswith("3.png"):  # a path or an open file
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


def test_an_npz_too_big_for_memory_is_refused_from_its_header(tmp_path, monkeypatch):
    """x.npy claims 10^9 images of 1000 x 1000: refused from its header (the archive holds 64
    bytes of it); a real x larger than the memory there is: refused before it is read."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1000, 1000)})
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
        z.writestr("y.npy", b"")
    with pytest.raises(UserError, match=r"x declares 1000000000 x 1000 x 1000 float32 "
                                        r"\(4000000000000000 bytes\) but the archive holds 64"):
        _load(tmp_path / "huge.npz")
    np.savez(tmp_path / "big.npz", x=np.zeros((1000, 8, 8), np.float32), y=np.arange(1000) % 2)
    monkeypatch.setattr("export.core.hardware.available_memory", lambda: 400_000)
    with pytest.raises(UserError, match=r"x \(1000 x 8 x 8 float32\) needs 500.0 KiB of "
                                        r"memory, but only 390.6 KiB is available"):
        _load(tmp_path / "big.npz")  # floats count twice: they are scaled into a copy


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
    monkeypatch.setattr("export.train.setup.available_memory", lambda: 3 * per_image)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, *TINY), 1)
    assert "a batch of 4 images of 1 x 16 x 16 needs at least" in line
    assert "lower --batch-size or --input-size" in line
    monkeypatch.setattr("export.train.setup.available_memory", lambda: 4 * per_image)
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


# --- two trainings at once: the run folder is claimed when the run starts (20.1b) -------------


def test_a_run_started_during_anothers_first_epoch_gets_its_own_folder(tmp_path, monkeypatch,
                                                                       images):
    """The second run starts while the first is inside its first epoch (nothing saved yet)."""
    from export.train import loop

    real, second = loop.train_one_epoch, []

    def epoch_with_a_second_run(*args, **kwargs):
        if not second:
            second.append(None)  # the second run's own epochs go straight on
            second[0] = invoke(train_cli, "--data", images, *TINY, "--seed", "1")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", epoch_with_a_second_run)
    monkeypatch.chdir(tmp_path)
    first = invoke(train_cli, "--data", images, *TINY)
    assert first.exit_code == 0 and second[0].exit_code == 0, first.output + second[0].output
    runs = tmp_path / "artifacts" / "train"
    assert sorted(p.name for p in runs.iterdir()) == ["resnet20-imgs", "resnet20-imgs-2"]
    for folder, seed in (("resnet20-imgs", 0), ("resnet20-imgs-2", 1)):
        summary = json.loads((runs / folder / "summary.json").read_text())
        assert summary["train_config"]["seed"] == seed
        assert load_checkpoint(runs / folder / "best.pt").meta["train_config"]["seed"] == seed
        log = (runs / folder / "metrics.jsonl").read_text().splitlines()
        assert len(log) == 1  # one epoch each, not interleaved
        assert not list((runs / folder).glob(".*lock"))  # the claim is let go at the end


def test_an_out_folder_held_by_a_running_training_is_refused(tmp_path, monkeypatch, images):
    from export.train.rundir import RunClaim

    monkeypatch.chdir(tmp_path)
    held = RunClaim.take(tmp_path / "run")  # as a run in its first epoch holds it
    try:
        for extra in ((), ("--overwrite",)):
            line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "run",
                                     *TINY, *extra), 1)
            assert "in use by another training run" in line and f"process {os.getpid()}" in line
    finally:
        held.release()
    assert not (tmp_path / "run").exists()  # the claim made it, and took it back empty
    assert invoke(train_cli, "--data", images, "--out", tmp_path / "run", *TINY).exit_code == 0


def test_a_run_being_resumed_cannot_be_resumed_twice(tmp_path, monkeypatch, images):
    from export.train.rundir import RunClaim

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert invoke(train_cli, "--data", images, "--out", out, "--epochs", "2", "--max-steps",
                  "1", "--input-size", "16", "--batch-size", "4", "--threads", "1"
                  ).exit_code == 0
    held = RunClaim.take(out)
    try:
        line = error_line(invoke(train_cli, "--resume", out), 1)
        assert "being trained by another run" in line
    finally:
        held.release()
    assert (out / "last.pt").exists() and not (out / ".resnet-train.lock").exists()


def test_a_claim_left_by_a_killed_run_does_not_block(tmp_path, monkeypatch, images):
    """kill -9 leaves the lock file; the kernel has let go of its lock, so the folder is free."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".resnet-train.lock").write_text("99999999\n")
    assert invoke(train_cli, "--data", images, "--out", out, *TINY).exit_code == 0


# --- pickles that expand, or build arrays without their bytes (20.4) ---------------------------


def _cifar_tiny(root, n_train=20, n_test=10):
    """cifar-10-batches-py with a few random 32 x 32 images (the layout's own writer)."""
    import layout_writers

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n_train + n_test) % 10
    return layout_writers.write_cifar10_python(
        root, (x[:n_train], y[:n_train], x[n_train:], y[n_train:]), protocol=2)


def _shared_list(levels):
    """A list whose every level holds the level below twice: 2^levels leaves, ``levels`` lists
    in memory, and a pickle of a few bytes per level (the memo shares them)."""
    tree = [0, 1]
    for _ in range(levels):
        tree = [tree, tree]
    return tree


class _Bare:
    """Pickles as ``numpy.ndarray(shape, dtype)``: an array with no bytes of its own."""

    def __init__(self, shape, via_reconstruct=False):
        self.shape, self.via_reconstruct = shape, via_reconstruct

    def __reduce__(self):
        if self.via_reconstruct:
            reconstruct = np.zeros(0).__reduce__()[0]  # numpy's own, wherever it lives
            return (reconstruct, (np.ndarray, self.shape, b"B"))
        return (np.ndarray, (self.shape, "u1"))


def _rewrite(path, **changes):
    import pickle

    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch.update({k.encode(): v for k, v in changes.items()})
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return path


_ROW = list(range(1000))

HOSTILE_PICKLES = {
    # name: (file, changes, expected words)
    "labels-billion-laughs": ("data_batch_2", {"labels": _shared_list(41)}, "nested more than"),
    "meta-billion-laughs": ("batches.meta", {"label_names": _shared_list(41)},
                            "nested more than"),
    "labels-shared-rows": ("data_batch_2", {"labels": [_ROW] * 10_000}, "pickle bomb"),
    "meta-shared-rows": ("batches.meta", {"label_names": [[b"cat"] * 1000] * 10_000},
                         "pickle bomb"),
    "labels-nested-deep": ("data_batch_1", {"labels": [[[[[[[[[[[0]]]]]]]]]]] * 4},
                           "nested more than"),
    "data-without-bytes": ("data_batch_3", {"data": _Bare((40, 3072))}, "no pixel bytes"),
    "data-asks-for-3gb": ("test_batch", {"data": _Bare((10**6, 3072), True)}, "no pixel bytes"),
    "data-reconstructed-bare": ("data_batch_1", {"data": _Bare((4, 3072), True)},
                                "no pixel bytes"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PICKLES))
def test_a_hostile_cifar_pickle_is_one_line_at_once(tmp_path, monkeypatch, no_hang, case):
    file, changes, words = HOSTILE_PICKLES[case]
    folder = _cifar_tiny(tmp_path)
    size = _rewrite(folder / file, **changes).stat().st_size
    assert size < 200_000  # the bombs stay small on disk
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", folder, *TINY), 1)
    assert words in line and file in line


def test_a_pickle_length_field_claiming_exabytes_reads_what_is_there(tmp_path, no_hang):
    import struct

    from export.data.layouts import load_layout

    folder = _cifar_tiny(tmp_path)
    # BINUNICODE8 (protocol 4) with a length of 2^60: a file object would be asked for it.
    (folder / "batches.meta").write_bytes(b"\x80\x04\x8d" + struct.pack("<Q", 2**60) + b"cat.")
    with pytest.raises(UserError, match="batches.meta: not a readable CIFAR batch"):
        load_layout(folder)


# --- class names that are not names: repeated, not text (20.4b, 20.13) -------------------------


@pytest.mark.parametrize("names, words", [
    ([b"cat"] * 10, "'cat' appears 10 times"),
    ([b"\xff", b"\xfe"] + [f"n{i}".encode() for i in range(8)], "'\ufffd' appears 2 times"),
    ([str(i) for i in range(9)] + ["0"], "'0' appears 2 times"),
    (list(range(10)), "must be a list of class names (text), got a list holding int"),
    (None, "must be a list of class names (text), got NoneType"),
    (7, "got int"),
    ([], "got an empty list"),
])
def test_cifar_class_names_must_be_distinct_text(tmp_path, monkeypatch, names, words):
    folder = _cifar_tiny(tmp_path)
    _rewrite(folder / "batches.meta", label_names=names)
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", folder, *TINY)
    line = error_line(result, 1)
    assert words in line and "batches.meta" in line
    assert not _epoch_lines(result.output) and not (tmp_path / "artifacts").exists()


def test_cifar_binary_class_names_must_be_distinct(tmp_path):
    from export.data.layouts import load_layout

    import layout_writers

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    y = np.arange(30) % 10
    folder = layout_writers.write_cifar10_binary(tmp_path, (x[:20], y[:20], x[20:], y[20:]))
    (folder / "batches.meta.txt").write_text("dog\n" * 10)
    with pytest.raises(UserError, match="batches.meta.txt: the class name 'dog' appears 10 "):
        load_layout(folder)


# --- FIFOs and other non-regular files inside datasets (20.5) ----------------------------------


def _mnist_like(root, name="MNIST", n_train=20, n_test=10, size=8, gz=False):
    import layout_writers

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, size, size), dtype=np.uint8)
    y = (np.arange(n_train + n_test) % 2).astype(np.uint8)
    return layout_writers.write_torchvision(
        root, (x[:n_train], y[:n_train], x[n_train:], y[n_train:]), name=name, gz=gz)


def _fifo_in_place_of(path):
    path.unlink()
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("case", ["idx", "idx-gz", "cifar-python", "cifar-binary",
                                  "cifar-binary-names"])
def test_a_fifo_inside_a_dataset_is_refused_unopened(tmp_path, monkeypatch, no_hang, case):
    import layout_writers

    if case.startswith("idx"):
        raw = _mnist_like(tmp_path / "data", gz=case == "idx-gz")
        target = raw / ("t10k-images-idx3-ubyte" + (".gz" if case == "idx-gz" else ""))
    elif case == "cifar-python":
        target = _cifar_tiny(tmp_path / "data") / "data_batch_3"
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8), np.arange(30) % 10
        folder = layout_writers.write_cifar10_binary(tmp_path / "data",
                                                     (x[:20], y[:20], x[20:], y[20:]))
        target = folder / ("batches.meta.txt" if case.endswith("names") else "test_batch.bin")
    _fifo_in_place_of(target)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", tmp_path / "data", *TINY), 1)
    assert target.name in line and ("FIFO" in line or "not a regular file" in line)


def test_an_image_that_is_a_fifo_is_refused_by_the_one_reader(tmp_path, no_hang):
    """read_image is what training, the parity gate and resnet-predict all read images with."""
    from export.data import read_image

    os.mkfifo(tmp_path / "photo.png")
    with pytest.raises(UserError, match="photo.png is a FIFO, not a regular file"):
        read_image(tmp_path / "photo.png")


# --- a really full disk: the checkpoint writer's own error (20.11) -----------------------------


_FSIZE_RUN = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from export.train.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize("limit, kept", [
    (300_000, "no epoch was saved"),  # best.pt (about 1.1 MB) cannot be written
    (1_600_000, "only best.pt (epoch 1) was saved"),  # best.pt fits, last.pt (2.2 MB) not
])
def test_a_file_the_disk_cannot_hold_is_one_line_naming_what_is_intact(tmp_path, images, limit,
                                                                      kept):
    """A real failed write inside torch.save (a file size limit stands in for a full disk:
    torch reports both as a RuntimeError about stream positions)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", _FSIZE_RUN, str(limit), "--data", str(images), "--out", str(out),
         *TINY], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             os.environ.get("PYTHONPATH", "")])})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("Error: cannot write") and "File too large" in lines[0]
    assert kept in lines[0]
    assert not list(out.glob(".*partial"))
    if "best.pt" in kept:
        assert load_checkpoint(out / "best.pt").meta["epoch"] == 1


# --- degenerate arrays and archives: zero height, lying headers, bombs, not .npy (20.13) -------


def _keras_npz(path, **members):
    """A Keras-style mnist.npz of small random arrays; ``members`` replace some of them with
    raw member bytes (or leave them out, for None)."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
              "y_train": (np.arange(20) % 2).astype(np.uint8),
              "x_test": rng.integers(0, 256, (10, 8, 8), dtype=np.uint8),
              "y_test": (np.arange(10) % 2).astype(np.uint8)}
    np.savez(path, **{k: v for k, v in arrays.items() if k not in members})
    with zipfile.ZipFile(path, "a") as z:
        for name, data in members.items():
            if data is not None:
                z.writestr(f"{name}.npy", data)
    return path


def _npy_header(shape, descr="|u1"):
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return header.getvalue()


def test_idx_images_of_zero_height_are_one_line(tmp_path, monkeypatch):
    import layout_writers

    raw = _mnist_like(tmp_path / "data")
    layout_writers.write_idx(raw / "train-images-idx3-ubyte", np.zeros((20, 0, 8), np.uint8))
    layout_writers.write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((10, 0, 8), np.uint8))
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", tmp_path / "data", *TINY), 1)
    assert "0 x 8 pixels; an image needs at least 1 x 1" in line


@pytest.mark.parametrize("case, words", [
    ("zero-height", "0 x 8 pixels; an image needs at least 1 x 1"),
    ("declares-1e12-images", ("declares 1000000000000 x 28 x 28 uint8 (784000000000000 bytes) "
                              "but the archive holds 0 bytes")),
    ("not-npy-random", "cannot read"),
    ("not-npy-pickle", "cannot read"),
    ("object-array", "holds Python objects"),
])
def test_a_hostile_keras_npz_is_one_line(tmp_path, monkeypatch, case, words):
    path = tmp_path / "mnist.npz"
    if case == "zero-height":
        np.savez(path, x_train=np.zeros((20, 0, 8), np.uint8), y_train=np.arange(20) % 2,
                 x_test=np.zeros((10, 0, 8), np.uint8), y_test=np.arange(10) % 2)
    elif case == "declares-1e12-images":
        _keras_npz(path, x_train=_npy_header((10**12, 28, 28)))
    elif case == "not-npy-random":
        _keras_npz(path, x_train=np.random.default_rng(1).bytes(512))
    elif case == "not-npy-pickle":
        import pickle

        _keras_npz(path, x_train=pickle.dumps(np.zeros((20, 8, 8), np.uint8)))
    else:
        _keras_npz(path, x_train=_npy_header((20, 8, 8), "|O") + b"\0" * 64)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", path, *TINY), 1)
    assert words in line and "mnist.npz" in line


def test_a_keras_zip_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    """The 6 GB bomb of the report, scaled down: 32 MB of zeros (32 KB on disk) against a
    limit of 8 MB; the refusal comes from the header, before anything is decompressed."""
    n = 32 * 2**20 // (28 * 28)
    path = _keras_npz(tmp_path / "mnist.npz", x_train=None)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z, \
            z.open("x_train.npy", "w", force_zip64=True) as member:
        member.write(_npy_header((n, 28, 28)))
        zeros = bytes(2**20)
        for _ in range(n * 28 * 28 // len(zeros)):
            member.write(zeros)
        member.write(bytes(n * 28 * 28 % len(zeros)))
    assert path.stat().st_size < 200_000
    monkeypatch.setattr("export.data.layouts.MAX_ARRAY_BYTES", 8 * 2**20)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", path, *TINY), 1)
    assert f"x_train ({n} x 28 x 28 uint8) is {n * 784} bytes, over the 8388608-byte" in line


def test_a_prediction_folder_nested_1400_deep_is_searched(tmp_path):
    """resnet-predict searches folders with the data layer's image_files (no recursion)."""
    from export.predict.predictor import find_images

    deep = tmp_path / "top"
    levels = [str(deep)]
    for _ in range(1400):  # os.makedirs itself recurses
        levels.append(os.path.join(levels[-1], "d"))
    for level in levels:
        os.mkdir(level)
    try:
        Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(os.path.join(levels[-1], "x.png"))
        os.symlink(deep, os.path.join(levels[-1], "loop"))  # a link back to the top ends too
        found = find_images([deep])
        assert len(found) == 1 and found[0][1] is None and found[0][0].name == "x.png"
    finally:  # so does shutil.rmtree, which cleans tmp_path
        os.unlink(os.path.join(levels[-1], "x.png"))
        os.unlink(os.path.join(levels[-1], "loop"))
        for level in reversed(levels):
            os.rmdir(level)


# --- names from the user's data cannot forge lines or drive the terminal (20.14) ---------------


FORGER = "two\nFAKE test top-1 100.00%"


def _forged(output):
    return [line for line in output.splitlines() if line.startswith("FAKE")]


def test_a_class_folder_name_cannot_forge_a_result_line(tmp_path, monkeypatch):
    root = write_pngs(tmp_path / "imgs", classes=["one", FORGER], per_class=6)
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", root, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    assert not _forged(result.output)
    assert "two\\nFAKE test top-1 100.00% " in result.stdout  # in the per-class line, escaped
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["class_names"] == [
        "one", FORGER]


def test_an_idx_dataset_folder_name_is_escaped(tmp_path, monkeypatch):
    raw = _mnist_like(tmp_path / "data", name="my\x1b[2J\u202edata\nFAKE line")
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", raw.parent, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    assert not _forged(result.output) and "\x1b" not in result.output
    assert "\u202e" not in result.output
    assert "my\\x1b[2J\\u202edata\\nFAKE line" in result.stdout


def test_cifar_meta_names_are_escaped_and_kept_exactly_in_json(tmp_path, monkeypatch):
    folder = _cifar_tiny(tmp_path / "data")
    names = [f"c{i}" for i in range(8)] + ["\x1b[31mred", FORGER]
    _rewrite(folder / "batches.meta", label_names=[n.encode() for n in names])
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", folder, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    assert not _forged(result.output) and "\x1b" not in result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["class_names"] == names


def test_npz_label_names_cannot_forge_lines(tmp_path, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array(["one", FORGER] * 8))
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", tmp_path / "d.npz", *TINY, "--test-fraction", "0.3")
    assert result.exit_code == 0, result.output
    assert not _forged(result.output)


# --- messages that say what is wrong; photos read upright (20.15) ------------------------------


@pytest.mark.parametrize("bad, words", [(np.nan, "x holds NaN (first in image 3)"),
                                        (np.inf, "x holds infinite values (first in image 3)")])
def test_a_non_finite_float_image_is_named_as_such(tmp_path, monkeypatch, bad, words):
    x = np.random.default_rng(0).random((12, 8, 8)).astype(np.float32)
    x[3, 2, 2] = bad
    np.savez(tmp_path / "f.npz", x=x, y=np.arange(12) % 2)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", tmp_path / "f.npz", *TINY), 1)
    assert words in line and "0..1 (got" not in line


def test_one_class_calibration_data_is_refused_in_calibration_words(tmp_path):
    from export.convert.calibration import calibration_set

    root = write_pngs(tmp_path / "calib", classes=("only",), per_class=4)
    spec = ModelSpec.create("resnet20", 2, 1, 16)
    with pytest.raises(UserError) as caught:
        calibration_set(spec, None, root, 4, "minmax")
    assert "holds a single class (only): INT8 calibration needs images of every class" in str(
        caught.value)
    assert "training" not in str(caught.value)


def _turned_jpeg(path, orientation=6):
    """A 6 x 10 JPEG whose EXIF says: turn me (6: 90 degrees clockwise) before showing."""
    pixels = np.zeros((6, 10), np.uint8)
    pixels[:, :3] = 255  # a white band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels, "L").save(path, exif=exif, quality=95)
    return path


def test_jpeg_exif_orientation_is_honoured_in_training_and_prediction(tmp_path):
    from export.data import read_image, scan

    photo = _turned_jpeg(tmp_path / "photo.jpg")
    with Image.open(photo) as img:
        stored = np.asarray(img.convert("L"))
    assert stored.shape == (6, 10)
    upright = read_image(photo)  # what resnet-predict reads
    assert upright.shape == (1, 10, 6)
    assert np.array_equal(upright[0], np.rot90(stored, k=-1))  # turned clockwise
    root = tmp_path / "folder"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        _turned_jpeg(root / name / "p.jpg")
    scanned = scan({"kind": "folder", "path": str(root), "seed": 0, "val_fraction": 0.1,
                    "test_fraction": 0.2})
    assert np.array_equal(scanned.decode(np.arange(1), 10)[0],  # what training decodes
                          read_image(root / "a" / "p.jpg", 10))
    assert scanned.decode(np.arange(1), 10)[0, 0, 0, 0] > 200  # the band is at the top now
