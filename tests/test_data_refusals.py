"""Data a user hands to training and prediction (export.data: sources, pixels, npz): 16-bit images,
decompression bombs, broken archives, odd arrays, unreadable folders, FIFOs, memory, names that
could drive the terminal or forge lines, and messages that say what is wrong."""

import json
import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from export.core.errors import UserError
from export.core.models import ModelSpec
from export.train.cli import main as train_cli

from cli_helpers import only_error_line as error_line
from train_fixtures import TINY, cifar_tiny, invoke, mnist_like, rewrite_pickle, write_pngs

# --- 16-bit images and the files a scan skips ----------------------------------------------------


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


# --- hostile data: bombs, broken archives, odd arrays, unreadable folders, FIFOs -----------------


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
    assert made[0].name.startswith("resnet8-ppp") and made[1].name.startswith("resnet8-qqq")
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

    # the own-data default model, as the run builds it
    per_image = activation_bytes(build_model("resnet8", 2, 1, downsample="avgpool"), 1, 16)
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


# --- names with terminal control characters are printed escaped ----------------------------------


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


# --- names from the user's data cannot forge lines or drive the terminal -------------------------


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
    raw = mnist_like(tmp_path / "data", name="my\x1b[2J\u202edata\nFAKE line")
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", raw.parent, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 0, result.output
    assert not _forged(result.output) and "\x1b" not in result.output
    assert "\u202e" not in result.output
    assert "my\\x1b[2J\\u202edata\\nFAKE line" in result.stdout


def test_cifar_meta_names_are_escaped_and_kept_exactly_in_json(tmp_path, monkeypatch):
    folder = cifar_tiny(tmp_path / "data")
    names = [f"c{i}" for i in range(8)] + ["\x1b[31mred", FORGER]
    rewrite_pickle(folder / "batches.meta", label_names=[n.encode() for n in names])
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


# --- messages that say what is wrong; photos read upright ----------------------------------------


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
