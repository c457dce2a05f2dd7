"""Training on datasets in torchvision's and Keras's layouts (MNIST family, CIFAR, mnist.npz).

Every dataset is written by the tests, in its real format, from the embedded digits (the writers
in ``layout_writers.py``): 1,500 training and 297 test images. The checks: each layout goes
through ``describe_source`` / ``scan`` / ``load_training_data``; the test split is the dataset's
own test split, exactly and in order; validation comes from the training part, seeded and
stratified; class names come from the dataset; the parity gate's real images are that test
split; a short run through ``resnet-train`` records all of it, and an export carries the
dataset's name and layout into its manifest.
"""

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from export.core.checkpoint import load_checkpoint
from export.core.errors import UserError
from export.core.models import ModelSpec
from export.data import (
    describe_source,
    load_training_data,
    normalise,
    pixels,
    reference_images,
    resize_array,
    scan,
    split_of,
    to_channels,
)
from export.data.layouts import FASHION_MNIST_CLASSES
from export.train.cli import main as train_cli

import layout_writers as lw

N_TRAIN, N_TEST = lw.N_TRAIN, 1797 - lw.N_TRAIN


@pytest.fixture(scope="module")
def digits():
    return lw.digits()


@pytest.fixture(scope="module")
def gray28(digits):
    return lw.gray28(digits)


@pytest.fixture(scope="module")
def colour32(digits):
    return lw.colour32(digits)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory, gray28):
    root = tmp_path_factory.mktemp("data")
    lw.write_torchvision(root, gray28)
    return root


def nchw(x):
    """N x H x W or N x H x W x 3 -> N x C x H x W."""
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


# (how to write it, what to point --data at, dataset name, layout, grey?)
LAYOUTS = {
    "idx-root": (lambda p, g, c: lw.write_torchvision(p, g), lambda p: p, "MNIST",
                 "torchvision-idx", True),
    "idx-dataset-folder": (lambda p, g, c: lw.write_torchvision(p, g), lambda p: p / "MNIST",
                           "MNIST", "torchvision-idx", True),
    "idx-raw-gz": (lambda p, g, c: lw.write_torchvision(p, g, gz=True),
                   lambda p: p / "MNIST" / "raw", "MNIST", "torchvision-idx", True),
    "fashion-idx": (lambda p, g, c: lw.write_torchvision(p, g, name="FashionMNIST"),
                    lambda p: p, "FashionMNIST", "torchvision-idx", True),
    "emnist-file": (lambda p, g, c: lw.write_emnist(p, g, "digits"),
                    lambda p: p / "EMNIST" / "raw" / "emnist-digits-train-images-idx3-ubyte",
                    "EMNIST-digits", "torchvision-idx", True),
    "cifar10-python": (lambda p, g, c: lw.write_cifar10_python(p, c), lambda p: p, "CIFAR10",
                       "cifar-python", False),
    "cifar10-binary": (lambda p, g, c: lw.write_cifar10_binary(p, c),
                       lambda p: p / "cifar-10-batches-bin", "CIFAR10", "cifar-binary", False),
    "cifar100-python": (lambda p, g, c: lw.write_cifar100_python(p, c), lambda p: p,
                        "CIFAR100", "cifar-python", False),
    "keras-mnist": (lambda p, g, c: lw.write_keras_npz(p / "mnist.npz", g),
                    lambda p: p / "mnist.npz", "MNIST", "keras-npz", True),
    "keras-fashion": (lambda p, g, c: lw.write_keras_npz(p / "fashion_mnist.npz", g),
                      lambda p: p / "fashion_mnist.npz", "FashionMNIST", "keras-npz", True),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_each_layout_trains_on_its_own_test_split(tmp_path, gray28, colour32, case):
    write, given, name, layout, grey = LAYOUTS[case]
    write(tmp_path, gray28, colour32)
    written = gray28 if grey else colour32
    x_train, y_train, x_test, y_test = written
    if name == "CIFAR100":
        y_train, y_test = lw.fine(y_train), lw.fine(y_test)

    dataset = describe_source(given(tmp_path), seed=0, val_fraction=0.1)
    assert (dataset["kind"], dataset["layout"], dataset["name"]) == ("layout", layout, name)
    assert dataset["test_fraction"] is None  # the dataset's own test split, not a share
    scanned = scan(dataset)
    assert scanned.image_size == x_train.shape[1]
    split = split_of(scanned, dataset)
    # test = the dataset's own test part, every image of it, in order
    np.testing.assert_array_equal(split.test, np.arange(N_TRAIN, N_TRAIN + N_TEST))
    # validation: 10 % of the training part, disjoint from training and test
    assert len(split.val) == round(0.1 * N_TRAIN) and len(split.train) == N_TRAIN - len(split.val)
    assert split.val.max() < N_TRAIN and split.train.max() < N_TRAIN
    assert not set(split.val) & set(split.train)

    size = x_train.shape[1]
    data = load_training_data(dataset, size, scanned)
    assert data.counts() == {"train": len(split.train), "val": len(split.val), "test": N_TEST}
    assert data.in_chans == (1 if grey else 3)
    assert all(v.dtype == np.uint8 for v in data.images.values())
    np.testing.assert_array_equal(data.images["test"], nchw(x_test))
    np.testing.assert_array_equal(data.labels["test"], y_test)
    np.testing.assert_array_equal(data.images["val"], nchw(x_train[split.val]))
    np.testing.assert_array_equal(data.labels["train"], y_train[split.train])
    assert data.dataset["num_images"] == N_TRAIN + N_TEST
    if name == "FashionMNIST":
        assert data.class_names == FASHION_MNIST_CLASSES
    elif name == "CIFAR10":
        assert data.class_names == lw.CIFAR10_NAMES
    elif name == "CIFAR100":
        assert len(data.class_names) == 100 and data.class_names[99] == "class99"
    else:
        assert data.class_names == [str(i) for i in range(10)]
    assert data.splits["test"]["count"] == N_TEST
    assert "own test split" in data.splits["test"]["from"]
    assert "training set" in data.splits["val"]["from"]


def test_validation_is_stratified_and_seeded(mnist_root, gray28):
    dataset = describe_source(mnist_root, seed=3, val_fraction=0.2)
    scanned = scan(dataset)
    a = split_of(scanned, dataset)
    b = split_of(scanned, describe_source(mnist_root, seed=3, val_fraction=0.2))
    c = split_of(scanned, describe_source(mnist_root, seed=4, val_fraction=0.2))
    np.testing.assert_array_equal(a.val, b.val)
    assert not np.array_equal(a.val, c.val)
    np.testing.assert_array_equal(a.test, c.test)  # the test split never moves
    y_train = gray28[1]
    share = np.bincount(y_train[a.val], minlength=10) / len(a.val)
    np.testing.assert_allclose(share, np.bincount(y_train, minlength=10) / N_TRAIN, atol=0.01)


def test_a_class_without_images_is_allowed(tmp_path, gray28):
    """EMNIST letters: class 0 ("N/A") has no images; the model still has its output."""
    x_train, y_train, x_test, y_test = gray28
    lw.write_emnist(tmp_path, (x_train, y_train + 1, x_test, y_test + 1), "letters")
    dataset = describe_source(tmp_path)
    data = load_training_data(dataset, 28)
    assert data.dataset["name"] == "EMNIST-letters" and data.num_classes == 27
    assert data.class_names[0] == "N/A" and 0 not in data.labels["train"]


def test_reference_images_are_the_datasets_own_test_images(mnist_root, gray28):
    dataset = describe_source(mnist_root)
    spec = ModelSpec.create("resnet18", 10, 1, 28, mean=(0.2,), std=(0.3,), stem="small")
    images = reference_images(dataset, spec, limit=1000)
    expected = normalise(nchw(gray28[2]), (0.2,), (0.3,))
    np.testing.assert_array_equal(images, expected)
    few = reference_images(dataset, spec, limit=8, seed=1)
    assert few.shape == (8, 1, 28, 28) and np.array_equal(few,
                                                          reference_images(dataset, spec, 8, 1))
    rgb = ModelSpec.create("resnet18", 10, 3, 32, stem="small")
    resized = reference_images(dataset, rgb, limit=4)
    assert resized.shape == (4, 3, 32, 32)


def test_a_moved_or_changed_layout_is_one_line(tmp_path, gray28):
    lw.write_torchvision(tmp_path, gray28)
    dataset = load_training_data(describe_source(tmp_path), 28).dataset
    raw = tmp_path / "MNIST" / "raw"
    x_train, y_train, x_test, y_test = gray28
    lw.write_idx(raw / "t10k-images-idx3-ubyte", x_test[:-1])
    lw.write_idx(raw / "t10k-labels-idx1-ubyte", y_test[:-1])
    with pytest.raises(UserError, match="has changed since training"):
        scan(dataset)
    (tmp_path / "MNIST").rename(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="no longer at"):
        reference_images(dataset, ModelSpec.create("resnet20", 10, 1, 28))


def test_plain_npz_and_image_folders_keep_their_own_split(tmp_path, gray28):
    x_train, y_train, _, _ = gray28
    np.savez(tmp_path / "plain.npz", x=x_train[:300], y=y_train[:300])
    dataset = describe_source(tmp_path / "plain.npz")
    assert dataset["kind"] == "npz" and dataset["test_fraction"] == 0.2
    data = load_training_data(dataset, 28)
    assert data.counts() == {"train": 210, "val": 30, "test": 60}
    assert "20% of all images" in data.splits["test"]["from"]


def test_sixty_thousand_images_load_in_seconds_and_stay_uint8(tmp_path, gray28):
    x = np.resize(gray28[0], (60_000, 28, 28))
    y = np.resize(gray28[1], 60_000)
    lw.write_torchvision(tmp_path, (x, y, gray28[2], gray28[3]))
    start = time.perf_counter()
    data = load_training_data(describe_source(tmp_path), 28)
    elapsed = time.perf_counter() - start
    assert data.counts() == {"train": 54_000, "val": 6_000, "test": N_TEST}
    assert all(v.dtype == np.uint8 for v in data.images.values())
    assert data.images["train"].nbytes == 54_000 * 28 * 28
    assert elapsed < 10.0, elapsed  # about 0.3 s here; generous for a busy machine


def test_resizing_works_in_chunks_with_the_same_result(monkeypatch, gray28):
    images = nchw(gray28[0][:50])
    whole = resize_array(images, 32)
    monkeypatch.setattr(pixels, "RESIZE_CHUNK", 7)
    np.testing.assert_array_equal(resize_array(images, 32), whole)
    assert to_channels(whole, 3).shape == (50, 3, 32, 32)


# --- through resnet-train and resnet-export ---------------------------------------------------


def invoke(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def test_short_run_on_an_idx_dataset_through_the_cli(tmp_path, mnist_root):
    out = tmp_path / "run"
    result = invoke(train_cli, ["--data", mnist_root, "--depth", "18", "--epochs", "1",
                                "--max-steps", "3", "--batch-size", "16", "--out", out])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("training resnet18 on MNIST (1350 train / 150 val / 297 test")
    assert "1x28x28" in lines[0]
    assert any(line.startswith("test split: MNIST test set (t10k-images-idx3-ubyte)")
               for line in lines)
    chosen = next(line for line in lines if line.startswith("defaults for this data"))
    assert "input size 28" in chosen and "small stem" in chosen
    assert "batch/s" not in result.output  # no progress bars in a log

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"train": 1350, "val": 150, "test": 297}
    assert summary["splits"]["test"] == {
        "count": 297,
        "from": "MNIST test set (t10k-images-idx3-ubyte): the dataset's own test split"}
    assert summary["dataset"]["name"] == "MNIST"
    assert summary["dataset"]["layout"] == "torchvision-idx"
    assert summary["spec"]["stem"] == "small" and summary["spec"]["input_size"] == 28
    assert summary["class_names"] == [str(i) for i in range(10)]
    assert sum(map(sum, summary["confusion_matrix"])) == 297
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.meta["dataset"]["name"] == "MNIST" and ckpt.spec.stem == "small"
    assert ckpt.meta["train_config"]["stem"] == "small"

    # The exported artifact's manifest names the dataset its parity images came from.
    from export.cli import main as export_cli

    art = tmp_path / "onnx"
    exported = invoke(export_cli, ["--checkpoint", out / "best.pt", "--fmt", "onnx", "--out",
                                   art, "--batch-range", "1:2:4"])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((art / "manifest.json").read_text())
    real = manifest["parity"]["inputs"]["real"]
    assert real["available"] is True and real["count"] == 4
    assert (real["dataset"]["name"], real["dataset"]["layout"]) == ("MNIST", "torchvision-idx")
    assert manifest["model"]["stem"] == "small"


def test_test_fraction_does_not_apply_to_a_dataset_with_its_own_test_split(mnist_root):
    result = invoke(train_cli, ["--data", mnist_root, "--test-fraction", "0.3"])
    assert result.exit_code == 2
    assert "--test-fraction does not apply" in result.output
    assert len(result.output.strip().splitlines()) == 1
