"""Dataset layouts as torchvision and Keras leave them (export.data.layouts, export.data.pickles):
pickles that expand, class names that are not names, FIFOs inside datasets, and degenerate
arrays and archives."""

import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from export.core.errors import UserError
from export.train.cli import main as train_cli

from cli_helpers import only_error_line as error_line
from train_fixtures import TINY, cifar_tiny, epoch_lines, invoke, mnist_like, rewrite_pickle

# --- pickles that expand, or build arrays without their bytes ------------------------------------


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
    folder = cifar_tiny(tmp_path)
    size = rewrite_pickle(folder / file, **changes).stat().st_size
    assert size < 200_000  # the bombs stay small on disk
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", folder, *TINY), 1)
    assert words in line and file in line


def test_a_pickle_length_field_claiming_exabytes_reads_what_is_there(tmp_path, no_hang):
    import struct

    from export.data.layouts import load_layout

    folder = cifar_tiny(tmp_path)
    # BINUNICODE8 (protocol 4) with a length of 2^60: a file object would be asked for it.
    (folder / "batches.meta").write_bytes(b"\x80\x04\x8d" + struct.pack("<Q", 2**60) + b"cat.")
    with pytest.raises(UserError, match="batches.meta: not a readable CIFAR batch"):
        load_layout(folder)


# --- class names that are not names: repeated, not text ------------------------------------------


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
    folder = cifar_tiny(tmp_path)
    rewrite_pickle(folder / "batches.meta", label_names=names)
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", folder, *TINY)
    line = error_line(result, 1)
    assert words in line and "batches.meta" in line
    assert not epoch_lines(result.output) and not (tmp_path / "artifacts").exists()


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


# --- FIFOs and other non-regular files inside datasets -------------------------------------------


def _fifo_in_place_of(path):
    path.unlink()
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("case", ["idx", "idx-gz", "cifar-python", "cifar-binary",
                                  "cifar-binary-names"])
def test_a_fifo_inside_a_dataset_is_refused_unopened(tmp_path, monkeypatch, no_hang, case):
    import layout_writers

    if case.startswith("idx"):
        raw = mnist_like(tmp_path / "data", gz=case == "idx-gz")
        target = raw / ("t10k-images-idx3-ubyte" + (".gz" if case == "idx-gz" else ""))
    elif case == "cifar-python":
        target = cifar_tiny(tmp_path / "data") / "data_batch_3"
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


# --- degenerate arrays and archives: zero height, lying headers, bombs, not .npy -----------------


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

    raw = mnist_like(tmp_path / "data")
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
