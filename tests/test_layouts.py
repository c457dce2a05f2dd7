"""Datasets in torchvision's and Keras's on-disk layouts: detection, exact round trips, refusals.

Every fixture is written, in each format, from the embedded sklearn digits, by the small writers
in ``layout_writers.py`` that follow the formats' specifications (idx headers, CIFAR's pickled
dicts with bytes keys and its binary records, Keras's four-array .npz).
"""

import gzip
import json
import os
import struct
import time

import numpy as np
import pytest

from export.core.errors import UserError
from export.data.layouts import (
    EMNIST_CLASSES,
    FASHION_MNIST_CLASSES,
    KMNIST_CLASSES,
    LayoutDataset,
    detect_layout,
    load_layout,
)

import layout_writers
from layout_writers import (
    CIFAR10_NAMES,
    binary_records,
    cifar_records,
    dump,
    fine,
    write_cifar10_binary,
    write_cifar10_python,
    write_cifar100_binary,
    write_cifar100_python,
    write_emnist,
    write_idx,
    write_keras_npz,
    write_torchvision,
)

# ---------------------------------------------------------------------------------------------
# Fixture data
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return layout_writers.digits()


@pytest.fixture(scope="module")
def gray28(digits):
    return layout_writers.gray28(digits)


@pytest.fixture(scope="module")
def colour32(digits):
    return layout_writers.colour32(digits)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def assert_round_trip(ds, data, labels=lambda y: y):
    x_train, y_train, x_test, y_test = data
    assert isinstance(ds, LayoutDataset)
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.x_train.shape == x_train.shape and ds.x_test.shape == x_test.shape
    np.testing.assert_array_equal(ds.x_train, x_train)
    np.testing.assert_array_equal(ds.x_test, x_test)
    np.testing.assert_array_equal(ds.y_train, labels(y_train))
    np.testing.assert_array_equal(ds.y_test, labels(y_test))
    assert all(f.is_file() for f in ds.files)
    described = json.loads(json.dumps(ds.describe()))
    assert described["train_images"] == len(x_train) and described["test_images"] == len(x_test)
    assert described["image_shape"] == list(x_train.shape[1:])
    assert described["num_classes"] == len(ds.class_names)


def one_line_error(call, *args):
    with pytest.raises(UserError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# torchvision idx
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["root", "dataset", "raw", "file"])
def test_mnist_detected_and_loaded_from_any_level(tmp_path, gray28, given):
    raw = write_torchvision(tmp_path, gray28)
    path = {"root": tmp_path, "dataset": raw.parent, "raw": raw,
            "file": raw / "train-images-idx3-ubyte"}[given]
    assert detect_layout(path) == "torchvision-idx"
    ds = load_layout(path)
    assert_round_trip(ds, gray28)
    assert (ds.name, ds.layout, ds.root) == ("MNIST", "torchvision-idx", raw.resolve())
    assert ds.class_names == [str(i) for i in range(10)]
    assert sorted(f.name for f in ds.files) == sorted(p.name for p in raw.iterdir())


@pytest.mark.parametrize("name, classes", [("FashionMNIST", FASHION_MNIST_CLASSES),
                                           ("KMNIST", KMNIST_CLASSES)])
def test_known_class_names_come_from_the_folder_name(tmp_path, gray28, name, classes):
    write_torchvision(tmp_path, gray28, name=name)
    ds = load_layout(tmp_path)
    assert ds.name == name and ds.class_names == classes
    assert classes[0] in ("T-shirt/top", "o") and len(classes) == 10


def test_gzipped_idx_files(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28, gz=True)
    assert detect_layout(raw.parent) == "torchvision-idx"
    ds = load_layout(raw.parent)
    assert_round_trip(ds, gray28)
    assert all(f.suffix == ".gz" for f in ds.files)


def test_extracted_files_are_read_when_the_gz_download_is_kept_too(tmp_path, gray28):
    write_torchvision(tmp_path, gray28, gz=True)
    write_torchvision(tmp_path, gray28, gz=False)
    ds = load_layout(tmp_path)
    assert len(ds.files) == 4 and not any(f.suffix == ".gz" for f in ds.files)


def test_emnist_split_is_named_and_images_are_transposed_back(tmp_path, gray28):
    raw = write_emnist(tmp_path, gray28, "balanced")
    assert detect_layout(tmp_path) == "torchvision-idx"
    ds = load_layout(tmp_path)
    assert_round_trip(ds, gray28)  # upright again
    assert ds.name == "EMNIST-balanced" and ds.class_names == EMNIST_CLASSES["balanced"]
    assert len(ds.class_names) == 47 and ds.root == raw.resolve()


def test_several_emnist_splits_ask_for_one_and_a_file_picks_it(tmp_path, gray28):
    raw = write_emnist(tmp_path, gray28, "balanced")
    write_emnist(tmp_path, gray28, "digits")
    message = one_line_error(load_layout, tmp_path)
    assert "EMNIST balanced" in message and "EMNIST digits" in message
    assert "point at" in message and str(raw) in message
    ds = load_layout(raw / "emnist-digits-test-labels-idx1-ubyte")
    assert ds.name == "EMNIST-digits" and ds.class_names == [str(i) for i in range(10)]
    assert all("emnist-digits-" in f.name for f in ds.files)


def test_truncated_idx_file_is_refused(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    message = one_line_error(load_layout, tmp_path)
    assert str(images) in message and "truncated" in message and "1500 x 28 x 28" in message


def test_truncated_gz_idx_file_is_refused(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28, gz=True)
    images = raw / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(images.read_bytes())
    # a whole, valid gzip stream of too few bytes
    images.write_bytes(gzip.compress(data[:-28], compresslevel=1))
    message = one_line_error(load_layout, tmp_path)
    assert str(images) in message and "truncated" in message
    images.write_bytes(gzip.compress(data, compresslevel=1)[:-50])  # a cut gzip stream
    assert str(images) in one_line_error(load_layout, tmp_path)


def test_idx_file_with_extra_bytes_is_refused(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28)
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes() + b"\0")
    assert str(labels) in one_line_error(load_layout, tmp_path)


def test_wrong_magic_number_is_refused(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes((raw / "train-labels-idx1-ubyte").read_bytes())  # a labels file (0x801)
    message = one_line_error(load_layout, tmp_path)
    assert str(images) in message and "0x00000801" in message and "0x00000803" in message
    images.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    assert "not an idx file" in one_line_error(load_layout, tmp_path)


def test_non_byte_idx_data_type_is_refused(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28)
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">HBBI", 0, 0x0D, 1, 2) + np.zeros(2, ">f4").tobytes())
    message = one_line_error(load_layout, tmp_path)
    assert str(labels) in message and "0x0D" in message


def test_mismatched_image_and_label_counts_are_refused(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28)
    write_idx(raw / "train-labels-idx1-ubyte", gray28[1][:-1])
    message = one_line_error(load_layout, tmp_path)
    assert "1499 labels" in message and "1500 images" in message


def test_absurd_idx_header_is_refused_before_allocating(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28, gz=True)
    images = raw / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(struct.pack(">HBB3I", 0, 8, 3, 100_000, 1000, 1000)))
    message = one_line_error(load_layout, tmp_path)
    assert str(images) in message and "limit" in message


def test_missing_idx_file_is_named(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    assert "t10k-labels-idx1-ubyte" in one_line_error(load_layout, tmp_path)


def test_labels_out_of_range_for_the_known_classes_are_refused(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(len(gray28[3]), 10))
    message = one_line_error(load_layout, tmp_path)
    assert "label 10" in message and "t10k-labels" in message


def test_train_and_test_image_shapes_must_agree(tmp_path, gray28):
    raw = write_torchvision(tmp_path, gray28)
    write_idx(raw / "t10k-images-idx3-ubyte", gray28[2][:, :27, :27])
    assert "28 x 28" in one_line_error(load_layout, tmp_path)


def test_sixty_thousand_images_load_fast(tmp_path, gray28):
    x = np.resize(gray28[0], (60_000, 28, 28))
    y = np.resize(gray28[1], 60_000)
    write_torchvision(tmp_path, (x, y, gray28[2], gray28[3]))
    start = time.perf_counter()
    ds = load_layout(tmp_path)
    elapsed = time.perf_counter() - start
    assert ds.x_train.shape == (60_000, 28, 28) and elapsed < 2.0


# ---------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_cifar10_python(tmp_path, colour32, protocol):
    folder = write_cifar10_python(tmp_path, colour32, protocol)
    assert detect_layout(tmp_path) == detect_layout(folder) == "cifar-python"
    ds = load_layout(tmp_path)
    assert_round_trip(ds, colour32)
    assert (ds.name, ds.root, ds.class_names) == ("CIFAR10", folder.resolve(), CIFAR10_NAMES)
    assert len(ds.files) == 7 and ds.x_train.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("resaved", [False, True])
def test_cifar100_python_fine_labels(tmp_path, colour32, resaved):
    folder = write_cifar100_python(tmp_path, colour32, resaved)
    assert detect_layout(folder) == "cifar-python"
    ds = load_layout(folder)
    assert_round_trip(ds, colour32, labels=fine)
    assert ds.name == "CIFAR100" and ds.class_names[99] == "class99" and ds.y_train.max() == 99


class _RunsCommand:
    """Pickles as a call to os.system, as a hostile file would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_naming_another_global_is_refused_unexecuted(tmp_path, colour32):
    folder = write_cifar10_python(tmp_path, colour32)
    marker = tmp_path / "executed"
    batch = folder / "data_batch_3"
    dump(batch, {b"data": cifar_records(colour32[0][:10]), b"labels": [0] * 10,
                 b"batch_label": _RunsCommand(marker)}, 2)
    message = one_line_error(load_layout, folder)
    assert message.startswith(f"{batch}: refusing to unpickle global ")
    assert f"{os.system.__module__}.system" in message and "arrays, lists and numbers" in message
    assert not marker.exists()


def test_corrupt_cifar_pickle_is_one_line(tmp_path, colour32):
    folder = write_cifar10_python(tmp_path, colour32)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:1000])
    assert str(folder / "test_batch") in one_line_error(load_layout, folder)


def test_cifar_python_batch_with_wrong_label_count_is_refused(tmp_path, colour32):
    folder = write_cifar10_python(tmp_path, colour32)
    dump(folder / "test_batch", {b"data": cifar_records(colour32[2]), b"labels": [1, 2]}, 2)
    message = one_line_error(load_layout, folder)
    assert "test_batch" in message and "labels" in message


def test_cifar10_binary(tmp_path, colour32):
    folder = write_cifar10_binary(tmp_path, colour32)
    assert detect_layout(tmp_path) == detect_layout(folder) == "cifar-binary"
    ds = load_layout(tmp_path)
    assert_round_trip(ds, colour32)
    assert (ds.name, ds.layout, ds.class_names) == ("CIFAR10", "cifar-binary", CIFAR10_NAMES)


def test_cifar100_binary_reads_the_fine_label(tmp_path, colour32):
    folder = write_cifar100_binary(tmp_path, colour32)
    ds = load_layout(folder)
    assert_round_trip(ds, colour32, labels=fine)
    assert ds.name == "CIFAR100" and len(ds.class_names) == 100


def test_cifar_binary_with_a_partial_record_is_refused(tmp_path, colour32):
    folder = write_cifar10_binary(tmp_path, colour32)
    batch = folder / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-5])
    message = one_line_error(load_layout, tmp_path)
    assert str(batch) in message and "3073-byte" in message


def test_cifar_binary_label_out_of_range_is_refused(tmp_path, colour32):
    folder = write_cifar10_binary(tmp_path, colour32)
    (folder / "test_batch.bin").write_bytes(binary_records(colour32[2], np.full(297, 10)))
    message = one_line_error(load_layout, folder)
    assert "label 10" in message and "10 classes" in message


# ---------------------------------------------------------------------------------------------
# Keras .npz, and what is not a layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name, name", [("mnist.npz", "MNIST"),
                                             ("fashion_mnist.npz", "FashionMNIST"),
                                             ("my_digits.npz", "my_digits")])
def test_keras_npz(tmp_path, gray28, file_name, name):
    path = write_keras_npz(tmp_path / file_name, gray28)
    assert detect_layout(path) == "keras-npz"
    ds = load_layout(path)
    assert_round_trip(ds, gray28)
    assert ds.name == name and ds.files == [path.resolve()]
    assert len(ds.class_names) == 10


def test_keras_cache_folder_with_mnist_npz_is_detected(tmp_path, gray28):
    write_keras_npz(tmp_path / "mnist.npz", gray28)
    assert detect_layout(tmp_path) == "keras-npz"
    assert load_layout(tmp_path).name == "MNIST"


def test_keras_npz_with_mismatched_shapes_is_refused(tmp_path, gray28, colour32):
    path = tmp_path / "mixed.npz"
    np.savez(path, x_train=gray28[0], y_train=gray28[1], x_test=colour32[2], y_test=colour32[3])
    assert str(path) in one_line_error(load_layout, path)


def test_keras_npz_with_a_stray_huge_label_is_refused(tmp_path, gray28):
    path = tmp_path / "stray.npz"
    y_train = gray28[1].copy()
    y_train[7] = 10**9
    np.savez(path, x_train=gray28[0], y_train=y_train, x_test=gray28[2], y_test=gray28[3])
    message = one_line_error(load_layout, path)
    assert str(path) in message and "1000000000" in message


def test_plain_x_y_npz_is_not_a_layout(tmp_path, gray28):
    path = tmp_path / "data.npz"
    np.savez(path, x=gray28[0], y=gray28[1])
    assert detect_layout(path) is None


def test_image_folders_and_missing_paths_are_not_layouts(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.png").write_bytes(b"")
    assert detect_layout(tmp_path) is None
    assert detect_layout(tmp_path / "nope") is None
    assert "not a dataset layout" in one_line_error(load_layout, tmp_path)
    assert "not found" in one_line_error(load_layout, tmp_path / "nope")


def test_root_with_several_datasets_asks_for_one(tmp_path, gray28, colour32):
    write_torchvision(tmp_path, gray28)
    write_cifar10_binary(tmp_path, colour32)
    assert detect_layout(tmp_path) in ("torchvision-idx", "cifar-binary")
    message = one_line_error(load_layout, tmp_path)
    assert "MNIST" in message and "cifar-10-batches-bin" in message
    assert load_layout(tmp_path / "MNIST").name == "MNIST"
