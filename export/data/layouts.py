"""Datasets a user already has on disk, in the layouts torchvision and Keras leave behind.

People who have trained before usually have MNIST or CIFAR sitting in a ``data/`` folder that
torchvision or Keras downloaded. This module recognises those folders and files by their names
and reads them into memory, so they can be used without converting them first:

* ``torchvision-idx``: MNIST, FashionMNIST, KMNIST and EMNIST as ``<root>/<Name>/raw/`` idx files
  (``train-images-idx3-ubyte`` ..., plain or ``.gz``; EMNIST's ``emnist-<split>-...`` files).
  The root, the ``<Name>`` folder, the ``raw`` folder or one of its idx files may be given (a
  file picks its set: the way to choose one EMNIST split where torchvision extracted them all).
* ``cifar-python``: ``cifar-10-batches-py`` / ``cifar-100-python`` (Python pickles).
* ``cifar-binary``: ``cifar-10-batches-bin`` / ``cifar-100-binary`` (fixed-size records).
* ``keras-npz``: ``mnist.npz`` / ``fashion_mnist.npz``, or any ``.npz`` holding ``x_train``,
  ``y_train``, ``x_test`` and ``y_test``.

Images come back as ``uint8`` arrays, ``N x H x W`` (grayscale) or ``N x H x W x 3`` (colour),
labels as ``int64``. The dataset's own test split is returned as the test split. Every file is
untrusted input: the parsers (:mod:`.formats`, :mod:`.npz`) check sizes against headers before
allocating, only regular files are opened, and CIFAR's pickles are read with an unpickler that
admits only the few numpy constructors those files need and bounds what it built
(:mod:`.pickles`). Anything wrong is one :class:`UserError` line that names the file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError, printable
from ..core.fileio import open_regular
from .formats import (
    MAX_ARRAY_BYTES,
    MAX_UNNAMED_CLASSES,
    cifar_binary_batch,
    cifar_python_batch,
    entry,
    label_names,
    read_idx,
    unpickle,
)
from .layout_names import (
    EMNIST_CLASSES,
    FASHION_MNIST_CLASSES,
    IDX_NAME,
    KMNIST_CLASSES,
    KNOWN_CLASSES,
    KNOWN_NAMES,
    LAYOUTS,
    MNIST_CLASSES,
    NPZ_KEYS,
    Candidate,
    detect_layout,
    find_candidates,
    norm,
)
from .npz import open_npz

#: what other modules import from here (the names and detection live in .layout_names)
__all__ = ["EMNIST_CLASSES", "FASHION_MNIST_CLASSES", "KMNIST_CLASSES", "LAYOUTS",
           "MNIST_CLASSES", "LayoutDataset", "detect_layout", "load_layout"]

# CIFAR binary's class-name files are a few hundred bytes; read no more than this of one.
MAX_NAMES_BYTES = 1 << 20


_IDX_NDIM = {"images": 3, "labels": 1}

CIFAR_IMAGE_BYTES = 3 * 32 * 32
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@dataclass(eq=False)
class LayoutDataset:
    """One dataset read from disk: both of its own splits in memory, and where they came from."""

    name: str
    layout: str
    root: Path
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    files: list[Path]

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for logs and checkpoints (no arrays, no file list)."""
        return {"name": self.name, "layout": self.layout, "root": str(self.root),
                "train_images": len(self.x_train), "test_images": len(self.x_test),
                "image_shape": [int(d) for d in self.x_train.shape[1:]],
                "num_classes": len(self.class_names)}

    def __repr__(self) -> str:
        return f"LayoutDataset({self.describe()})"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_layout(path: str | os.PathLike) -> LayoutDataset:
    """Read the dataset at ``path`` into memory; any problem is one UserError naming the file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data path not found: {p}")
    candidates = find_candidates(p)
    if not candidates:
        raise UserError(f"{p}: not a dataset layout this reader knows (torchvision MNIST-style "
                        "idx files, CIFAR python or binary batches, Keras .npz with x_train, "
                        "y_train, x_test, y_test)")
    if len(candidates) > 1:
        listed = ", ".join(c.path.name if c.path.name != "raw" else c.path.parent.name
                           for c in candidates)
        raise UserError(f"{p} holds several datasets ({listed}): point at one of them")
    found = candidates[0]
    loader = {"torchvision-idx": _load_idx, "cifar-python": _load_cifar_python,
              "cifar-binary": _load_cifar_binary, "keras-npz": _load_keras_npz}[found.layout]
    return loader(found)


def _finish(name: str, layout: str, root: Path, train: tuple[np.ndarray, np.ndarray, Path],
            test: tuple[np.ndarray, np.ndarray, Path], class_names: list[str] | None,
            files: list[Path], names_from: Path | None = None) -> LayoutDataset:
    """Checks every layout shares, then the dataset; ``class_names`` None means "0".."K-1"."""
    for (x, y, where), split in ((train, "training"), (test, "test")):
        if len(x) == 0:
            raise UserError(f"{where}: holds no {split} images")
        if min(x.shape[1:3]) < 1:
            raise UserError(f"{where}: its {split} images are {_shape(x)} pixels; an image "
                            "needs at least 1 x 1")
        if len(x) != len(y):
            raise UserError(f"{where}: {len(x)} {split} images but {len(y)} labels")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise UserError(f"{root}: training images are {_shape(train[0])} but test images are "
                        f"{_shape(test[0])}")
    if class_names is None:
        top = max(int(train[1].max()), int(test[1].max()))
        if top >= MAX_UNNAMED_CLASSES:  # one name per class index: keep a stray label small
            raise UserError(f"{train[2]}: labels go up to {top}; expected class indices "
                            f"0..K-1 with K under {MAX_UNNAMED_CLASSES}")
        class_names = [str(i) for i in range(top + 1)]
    _require_distinct(class_names, names_from or root)
    for _, y, where in (train, test):
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= len(class_names):
            bad = low if low < 0 else high
            raise UserError(f"{where}: label {bad} is out of range for {name}'s "
                            f"{len(class_names)} classes")
    return LayoutDataset(name, layout, root.resolve(), train[0], train[1], test[0], test[1],
                         list(class_names), [f.resolve() for f in files])


def _require_distinct(class_names: list[str], where: Path) -> None:
    """Two classes with one name cannot be told apart in any result, and a checkpoint refuses
    them: refuse them before training (names that decode to the same text included)."""
    name, times = Counter(class_names).most_common(1)[0]
    if times > 1:
        raise UserError(f"{where}: the class name '{printable(name)}' appears {times} times; "
                        "each class needs a name of its own")


def _require_files(folder: Path, wanted: list[str], what: str) -> None:
    """Every file in ``wanted`` is in ``folder`` and regular (a FIFO would block the reader)."""
    for f in wanted:
        if os.path.lexists(folder / f) and not os.path.isfile(folder / f):
            kind = "a folder" if os.path.isdir(folder / f) else "not a regular file"
            raise UserError(f"{folder / f} is {kind}: refusing to read it")
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: missing {', '.join(missing)} (a {what} folder holds "
                        f"{', '.join(wanted)})")


def _shape(x: np.ndarray) -> str:
    return " x ".join(str(d) for d in x.shape[1:])


# -- torchvision idx --------------------------------------------------------------------------


def _load_idx(found: Candidate) -> LayoutDataset:
    folder = found.path
    sets: dict[str, dict[tuple[str, str], Path]] = {}
    for name in sorted(os.listdir(folder)):
        match = IDX_NAME.match(name)
        if not match:
            continue
        part = "train" if match["part"] == "train" else "test"
        files = sets.setdefault(match["split"] or "", {})
        key = (part, match["kind"])
        # torchvision keeps both the download (.gz) and its extraction: read the extracted one.
        if key not in files or not match["gz"]:
            files[key] = folder / name
    chosen = found.idx_set
    if chosen is None:
        if len(sets) > 1:
            kinds = ", ".join(f"EMNIST {s}" if s else "MNIST-style" for s in sorted(sets))
            example = folder / _idx_file_name(max(sets), "train", "images")
            raise UserError(f"{folder} holds idx files of several datasets ({kinds}): point at "
                            f"one of that set's files, e.g. {example}")
        chosen = next(iter(sets))
    files = sets.get(chosen, {})
    wanted = [(part, kind) for part in ("train", "test") for kind in ("images", "labels")]
    missing = [_idx_file_name(chosen, part, kind) for part, kind in wanted if (part, kind)
               not in files]
    if missing:
        raise UserError(f"{folder}: missing {', '.join(missing)} (plain or .gz)")

    arrays = {key: read_idx(files[key], _IDX_NDIM[key[1]]) for key in wanted}
    if chosen:
        name, class_names = f"EMNIST-{chosen}", EMNIST_CLASSES.get(chosen)
        # EMNIST stores each image column by column: transpose to get it upright.
        for part in ("train", "test"):
            images = arrays[(part, "images")]
            arrays[(part, "images")] = np.ascontiguousarray(images.transpose(0, 2, 1))
    else:
        owner = folder.parent if folder.name == "raw" else folder
        name = KNOWN_NAMES.get(norm(owner.name), owner.name)
        class_names = KNOWN_CLASSES.get(name)
    for part in ("train", "test"):
        images, labels = arrays[(part, "images")], arrays[(part, "labels")]
        if len(images) != len(labels):
            raise UserError(f"{files[(part, 'labels')]}: {len(labels)} labels but "
                            f"{files[(part, 'images')].name} holds {len(images)} images")
    return _finish(name, "torchvision-idx", folder,
                   (arrays[("train", "images")], arrays[("train", "labels")].astype(np.int64),
                    files[("train", "labels")]),
                   (arrays[("test", "images")], arrays[("test", "labels")].astype(np.int64),
                    files[("test", "labels")]),
                   class_names, [files[key] for key in wanted])


def _idx_file_name(idx_set: str, part: str, kind: str) -> str:
    dims = "idx3" if kind == "images" else "idx1"
    if idx_set:
        return f"emnist-{idx_set}-{part}-{kind}-{dims}-ubyte"
    return f"{'train' if part == 'train' else 't10k'}-{kind}-{dims}-ubyte"


# -- CIFAR, python pickles --------------------------------------------------------------------


def _load_cifar_python(found: Candidate) -> LayoutDataset:
    folder = found.path
    if os.path.lexists(folder / "data_batch_1"):
        name, train, test, meta = "CIFAR10", _CIFAR10_TRAIN, ["test_batch"], "batches.meta"
        label_key, names_key = "labels", "label_names"
    else:
        name, train, test, meta = "CIFAR100", ["train"], ["test"], "meta"
        label_key, names_key = "fine_labels", "fine_label_names"
    wanted = train + test + [meta]
    _require_files(folder, wanted, f"{name} python")
    names = label_names(entry(unpickle(folder / meta), names_key, folder / meta),
                         folder / meta, names_key)
    parts = _train_and_test(folder, (train, test),
                            lambda path: cifar_python_batch(path, label_key))
    return _finish(name, "cifar-python", folder, parts[0], parts[1], names,
                   [folder / f for f in wanted], folder / meta)


def _train_and_test(folder: Path, groups: tuple[list[str], list[str]],
                    read: Callable[[Path], tuple[np.ndarray, np.ndarray]]
                    ) -> list[tuple[np.ndarray, np.ndarray, Path]]:
    """The training and the test batches of a CIFAR folder, each group read and joined."""
    parts = []
    for files in groups:
        xs, ys = zip(*(read(folder / f) for f in files))
        parts.append((np.concatenate(xs), np.concatenate(ys), folder / files[-1]))
    return parts


# -- CIFAR, binary records --------------------------------------------------------------------


def _load_cifar_binary(found: Candidate) -> LayoutDataset:
    folder = found.path
    if os.path.lexists(folder / "data_batch_1.bin"):
        name, names_file, label_bytes = "CIFAR10", "batches.meta.txt", 1
        train, test = [f"{b}.bin" for b in _CIFAR10_TRAIN], ["test_batch.bin"]
    else:  # each CIFAR-100 record starts with its coarse label, then its fine label
        name, names_file, label_bytes = "CIFAR100", "fine_label_names.txt", 2
        train, test = ["train.bin"], ["test.bin"]
    wanted = train + test + [names_file]
    _require_files(folder, wanted, f"{name} binary")
    try:
        with open_regular(folder / names_file) as fh:
            raw = fh.read(MAX_NAMES_BYTES + 1)
    except OSError as exc:
        raise UserError(f"{folder / names_file}: cannot read it ({exc})") from None
    if len(raw) > MAX_NAMES_BYTES:
        raise UserError(f"{folder / names_file}: over {MAX_NAMES_BYTES} bytes; a list of class "
                        "names is a few hundred")
    text = raw.decode("utf-8", errors="replace")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"{folder / names_file}: holds no class names")
    parts = _train_and_test(folder, (train, test),
                            lambda path: cifar_binary_batch(path, label_bytes))
    return _finish(name, "cifar-binary", folder, parts[0], parts[1], names,
                   [folder / f for f in wanted], folder / names_file)


# -- Keras .npz -------------------------------------------------------------------------------


def _load_keras_npz(found: Candidate) -> LayoutDataset:
    path = found.path
    with open_npz(path) as npz:
        arrays = {key: npz.array(key, limit=MAX_ARRAY_BYTES) for key in NPZ_KEYS}
    stem = norm(path.stem)
    name = KNOWN_NAMES.get(stem, path.stem)
    x_train = _npz_images(arrays["x_train"], path, "x_train")
    x_test = _npz_images(arrays["x_test"], path, "x_test")
    y_train = _npz_labels(arrays["y_train"], path, "y_train")
    y_test = _npz_labels(arrays["y_test"], path, "y_test")
    return _finish(name, "keras-npz", path, (x_train, y_train, path), (x_test, y_test, path),
                   KNOWN_CLASSES.get(name), [path])


def _npz_images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise UserError(f"{path}: {key} must be N x H x W or N x H x W x 3 images, got shape "
                        f"{x.shape}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.bool_ and (
            x.size == 0 or (x.min() >= 0 and x.max() <= 255)):
        return x.astype(np.uint8)
    raise UserError(f"{path}: {key} must hold uint8 pixels (0..255), got {x.dtype}")


def _npz_labels(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:  # Keras's CIFAR arrays keep labels as N x 1
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise UserError(f"{path}: {key} must be one integer label per image, got {y.dtype} of "
                        f"shape {y.shape}")
    return y.astype(np.int64)
