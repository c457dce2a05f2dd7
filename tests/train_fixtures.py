"""What the tests of training's refusals share: tiny PNG class folders, small MNIST and CIFAR
layouts, an edited checkpoint, the command line, a run short enough to be a test (TINY), and a
guard that turns a hang into a failure."""

import pickle
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from export.core.checkpoint import save_checkpoint
from export.core.models import ModelSpec

from cli_helpers import invoke as run_cli


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


def edited_checkpoint(tmp_path, name="ckpt.pt", **changes):
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


def epoch_lines(output):
    """The per-epoch lines of a training's output."""
    return [line for line in output.splitlines() if "train loss" in line]


def mnist_like(root, name="MNIST", n_train=20, n_test=10, size=8, gz=False):
    """A torchvision MNIST-style idx dataset of random 2-class images; returns its raw folder."""
    import layout_writers

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, size, size), dtype=np.uint8)
    y = (np.arange(n_train + n_test) % 2).astype(np.uint8)
    return layout_writers.write_torchvision(
        root, (x[:n_train], y[:n_train], x[n_train:], y[n_train:]), name=name, gz=gz)


def cifar_tiny(root, n_train=20, n_test=10):
    """cifar-10-batches-py with a few random 32 x 32 images (the layout's own writer)."""
    import layout_writers

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n_train + n_test) % 10
    return layout_writers.write_cifar10_python(
        root, (x[:n_train], y[:n_train], x[n_train:], y[n_train:]), protocol=2)


def rewrite_pickle(path, **changes):
    """Replace entries of a CIFAR python batch (or batches.meta) in place."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch.update({k.encode(): v for k, v in changes.items()})
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return path
