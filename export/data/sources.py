"""Training data: the embedded digits, an image folder, an ``.npz`` file or a dataset in a
torchvision / Keras layout (MNIST family, CIFAR; :mod:`.layouts`), split and served.

Every source goes through the same three steps, so training, the parity gate (through
:func:`reference_images`) and prediction (through :func:`read_image` and :func:`preprocess`) see
exactly the same images:

1. *scan* the source: labels, class names and something that can be decoded later (an array or a
   list of files). A bad source fails here with one :class:`~export.core.errors.UserError`.
2. *split* the labels into seeded, stratified train / validation / test indices. A dataset that
   comes with its own test split (MNIST's t10k files, CIFAR's test batch) keeps it as the test
   split; validation is then a seeded, stratified part of its training set.
3. *decode* the chosen indices into ``uint8`` ``N x C x S x S`` arrays at the model's input size.

Where a source came from is recorded as a small plain dict that checkpoints carry::

    {"kind": "digits" | "folder" | "npz" | "layout", "path": str | None, "seed": int,
     "val_fraction": float, "test_fraction": float | None, "num_images": int}

``kind`` and ``path`` say what to read, ``seed`` and the fractions rebuild the split, and
``num_images`` lets a later reader notice that a folder or file changed since training. A layout
also records ``"layout"`` (e.g. ``"torchvision-idx"``) and ``"name"`` (e.g. ``"MNIST"``), and its
``test_fraction`` is None: its test split is its own.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..core.fileio import open_regular
from .layouts import LayoutDataset, detect_layout, load_layout
from .npz import NpzArchive, open_npz
from .pixels import IMAGE_SUFFIXES, read_image, resize_array, to_channels

# Why a source needs two classes, by what it is read for (scan's ``purpose``).
PURPOSES = {
    "training": "training needs at least two",
    "calibration": ("INT8 calibration needs images of every class the model tells apart (its "
                    "ranges are set from them), not of one"),
}

DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2
# A folder's image size is judged from this many of its files, spread over the classes.
SIZE_SAMPLE = 64


# ---------------------------------------------------------------------------------------------
# Describing a source
# ---------------------------------------------------------------------------------------------


def describe_source(path: str | os.PathLike | None, seed: int = 0,
                    val_fraction: float = DEFAULT_VAL_FRACTION,
                    test_fraction: float = DEFAULT_TEST_FRACTION) -> dict[str, Any]:
    """The checkpoint's ``dataset`` dict for ``--data PATH`` (None means the embedded digits)."""
    for name, value in (("validation", val_fraction), ("test", test_fraction)):
        if not 0.0 < value < 1.0:
            raise UserError(f"the {name} fraction must be between 0 and 1, got {value}")
    if val_fraction + test_fraction >= 0.9:
        raise UserError(f"validation + test fractions ({val_fraction} + {test_fraction}) leave "
                        "too little to train on; keep their sum below 0.9")
    if path is None:
        kind, where = "digits", None
    else:
        p = Path(path).expanduser()
        if not os.path.exists(p):  # os.path: False, not an exception, for too long a name
            raise UserError(f"data path not found: {p}")
        _require_file_or_folder(p)
        where = str(p.resolve())
        layout = detect_layout(p)
        if layout is not None:
            found = _layout(where)  # reads it now: a broken dataset fails before anything else
            return {"kind": "layout", "layout": layout, "name": found.name, "path": where,
                    "seed": int(seed), "val_fraction": float(val_fraction),
                    "test_fraction": None}
        if p.is_dir():
            kind = "folder"
        elif p.suffix.lower() == ".npz":
            kind = "npz"
        else:
            raise UserError(f"unsupported data file {p}: give a folder with one sub-folder per "
                            "class, an .npz file with arrays 'x' and 'y', or a dataset as "
                            "torchvision or Keras store it (MNIST-style idx files, CIFAR "
                            "batches, mnist.npz)")
    return {"kind": kind, "path": where, "seed": int(seed), "val_fraction": float(val_fraction),
            "test_fraction": float(test_fraction)}


def _require_file_or_folder(path: Path) -> None:
    """Refuse a FIFO, socket or device before anything opens it (a FIFO blocks the reader)."""
    if not (os.path.isdir(path) or os.path.isfile(path)):
        raise UserError(f"{path} is not a regular file or a folder: give a folder with one "
                        "sub-folder per class, or an .npz file")


def source_name(dataset: dict[str, Any]) -> str:
    """A short name for folder names and messages: "digits", a layout's dataset name (e.g.
    "MNIST"), or the folder / file stem."""
    if dataset["kind"] == "digits":
        return "digits"
    if dataset["kind"] == "layout" and dataset.get("name"):
        return str(dataset["name"])
    return Path(dataset["path"]).stem


# ---------------------------------------------------------------------------------------------
# Step 1: scan
# ---------------------------------------------------------------------------------------------


@dataclass
class Scanned:
    """A source before decoding: labels (0..K-1), class names and a decoder for chosen indices."""

    labels: np.ndarray  # int64, shape (N,)
    class_names: list[str]
    decode: Callable[[np.ndarray, int], np.ndarray]  # (indices, size) -> uint8 N x C x S x S
    notes: list[str] = field(default_factory=list)  # what the user should hear about the scan
    min_channels: int = 1  # channels per decoded image, at least (for the memory check)
    image_size: int | None = None  # the images' side (the longer one; typical one of a folder)
    own_test: np.ndarray | None = None  # indices of the source's own test split, if it has one
    parts: dict[str, str] | None = None  # where the own training and test parts were read from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def scan(dataset: dict[str, Any], purpose: str = "training") -> Scanned:
    """Read what the ``dataset`` dict points at, as far as labels; fail early on bad data.

    ``purpose`` ("training", "calibration") words the refusal of a single-class source.
    """
    kind, path = dataset.get("kind"), dataset.get("path")
    if kind == "digits":
        return _scan_digits()
    if kind not in ("folder", "npz", "layout"):
        raise UserError(f"unknown dataset kind {kind!r} (expected digits, folder, npz or "
                        "layout)")
    if kind == "layout":
        if not path or detect_layout(path) is None:
            raise UserError(f"the {dataset.get('name') or 'layout'} dataset is no longer at "
                            f"{path}: restore it there to use its images")
        scanned = _scan_layout(dataset)
    elif not path or not Path(path).exists() or Path(path).is_dir() != (kind == "folder"):
        raise UserError(f"the {kind} dataset is no longer at {path}: restore it there to use "
                        "its images")
    else:
        _require_file_or_folder(Path(path))
        scanned = (_scan_folder(Path(path), purpose) if kind == "folder"
                   else _scan_npz(Path(path), purpose))
    expected = dataset.get("num_images")
    if expected is not None and expected != len(scanned.labels):
        raise UserError(f"the dataset at {path} has changed since training: it holds "
                        f"{len(scanned.labels)} images, the checkpoint recorded {expected}")
    return scanned


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; scale them to the 0..255 of every other source.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, digits.target.astype(np.int64)


def _scan_digits() -> Scanned:
    images, labels = _digits_arrays()
    return Scanned(labels, [str(d) for d in range(10)],
                   lambda idx, size: resize_array(images[idx], size), image_size=8)


def _class_folders(root: Path) -> tuple[list[tuple[str, list[Path]]], list[Path]]:
    """(class name, its image files) per class folder, and the entries that are not read.

    Hidden entries are left out of both. Only regular files are images: a FIFO or a device
    named ``x.png`` is skipped, never opened (opening a FIFO blocks until someone writes).
    """
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    classes, skipped = [], [p for p in entries if not p.is_dir()]
    for folder in (p for p in entries if p.is_dir()):
        files = []
        for f in sorted(folder.iterdir()):
            if f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(f)
            else:
                skipped.append(f)
        if files:
            classes.append((folder.name, files))
    return classes, skipped


def _scan_folder(root: Path, purpose: str = "training") -> Scanned:
    try:
        classes, skipped = _class_folders(root)
    except OSError as exc:  # a folder we may not list (permissions), or that went away
        where = exc.filename or root
        raise UserError(f"cannot read {where}: {exc.strerror or exc}") from None
    if not classes:
        raise UserError(f"no images found in {root}: expected one sub-folder per class holding "
                        f"{'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} files")
    _require_two_classes([name for name, _ in classes], root, purpose)
    files = [f for _, fs in classes for f in fs]
    labels = np.concatenate([np.full(len(fs), i, dtype=np.int64)
                             for i, (_, fs) in enumerate(classes)])
    notes = []
    if skipped:
        first = skipped[0].relative_to(root)
        notes.append(f"{root}: skipped {len(skipped)} "
                     f"{'entry that is' if len(skipped) == 1 else 'entries that are'} not "
                     f"PNG/JPEG files (first: {first}); only .png/.jpg/.jpeg files in class "
                     "folders are read")
    return Scanned(labels, [name for name, _ in classes],
                   lambda idx, size: _stack_images([read_image(files[i], size) for i in idx], size),
                   notes, image_size=_typical_size(files))


def _typical_size(files: Sequence[Path]) -> int | None:
    """The median longer side of up to SIZE_SAMPLE files spread over the list (headers only)."""
    from PIL import Image

    picks = np.unique(np.linspace(0, len(files) - 1, min(len(files), SIZE_SAMPLE)).astype(int))
    sides = []
    for i in picks:
        try:
            with open_regular(files[i]) as fh, Image.open(fh) as img:
                sides.append(max(img.size))
        except Exception:  # an unreadable file is named when it is decoded
            continue
    return int(np.median(sides)) if sides else None


def _stack_images(images: list[np.ndarray], size: int) -> np.ndarray:
    """Stack C x S x S images; if any is in colour, grayscale ones are replicated to RGB."""
    if not images:
        return np.zeros((0, 1, size, size), dtype=np.uint8)
    in_chans = max(img.shape[0] for img in images)
    return np.stack([to_channels(img[None], in_chans)[0] for img in images])


def _scan_npz(path: Path, purpose: str = "training") -> Scanned:
    with open_npz(path) as npz:
        missing = [k for k in ("x", "y") if k not in npz.names and f"{k}.npy" not in npz.names]
        if missing:
            raise UserError(f"{path} must hold arrays 'x' (images) and 'y' (labels); "
                            f"found {npz.keys() or 'none'}")
        # floats are scaled into a second array before they become uint8
        x = npz.array("x", copies=2 if _member_kind(npz, "x") == "f" else 1)
        y = npz.array("y")
    images = _npz_images(x, path)
    labels, class_names = _npz_labels(y, path)
    if len(images) != len(labels):
        raise UserError(f"{path}: x holds {len(images)} images but y holds {len(labels)} labels")
    if len(labels) == 0:
        raise UserError(f"{path} holds no images")
    _require_two_classes(class_names, path, purpose)
    return Scanned(labels, class_names, lambda idx, size: resize_array(images[idx], size),
                   min_channels=images.shape[1], image_size=int(max(images.shape[-2:])))


def _member_kind(npz: NpzArchive, key: str) -> str:
    """The dtype kind of a member, from its header alone ("" if it has none)."""
    try:
        return npz.dtype(key).kind
    except UserError:
        return ""


def _npz_images(x: np.ndarray, path: Path) -> np.ndarray:
    """x as uint8 N x C x H x W; accepts uint8 (0..255) or floats (0..1), N x H x W (x C)."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise UserError(f"{path}: x must be N x H x W (grayscale) or N x H x W x C with C = 1 "
                        f"or 3, got shape {x.shape}")
    if min(x.shape[2:]) < 1:
        raise UserError(f"{path}: images must be at least 1 x 1 pixel, got "
                        f"{x.shape[2]} x {x.shape[3]}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            bad = int(np.argmin(finite.reshape(len(x), -1).all(axis=1)))
            what = "NaN" if np.isnan(x[bad]).any() else "infinite values"
            raise UserError(f"{path}: x holds {what} (first in image {bad}); float images must "
                            "hold values in 0..1, or store them as uint8 0..255")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise UserError(f"{path}: float images must hold values in 0..1 "
                            f"(got {x.min():.3g}..{x.max():.3g}); "
                            "or store them as uint8 0..255")
        return np.rint(x * 255.0).astype(np.uint8)
    raise UserError(f"{path}: x must be uint8 (0..255) or float (0..1) images, got {x.dtype}")


def _npz_labels(y: np.ndarray, path: Path) -> tuple[np.ndarray, list[str]]:
    """y as labels 0..K-1 and the sorted distinct values as class names."""
    if y.ndim != 1:
        raise UserError(f"{path}: y must be one label per image (shape N), got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype.kind == "U") or y.dtype == np.bool_:
        raise UserError(f"{path}: y must hold integer or string class labels, got {y.dtype}")
    values, labels = np.unique(y, return_inverse=True)
    return labels.astype(np.int64).reshape(-1), [str(v) for v in values]


def _require_two_classes(class_names: Sequence[str], where: Path,
                         purpose: str = "training") -> None:
    if len(class_names) < 2:
        found = f" ({class_names[0]})" if class_names else ""
        need = (PURPOSES.get(purpose) or f"{purpose} needs images of at least two classes")
        raise UserError(f"{where} holds a single class{found}: {need}")


_LAYOUT_CACHE: dict[str, tuple[LayoutDataset, list[tuple[int, int]]]] = {}


def _file_stamps(files: Sequence[Path]) -> list[tuple[int, int]]:
    stamps = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            return []
        stamps.append((st.st_size, st.st_mtime_ns))
    return stamps


def _layout(path: str) -> LayoutDataset:
    """:func:`~.layouts.load_layout`, kept for the next call on the same path while its files
    are unchanged (describing a source and scanning it then read it once, not twice)."""
    held = _LAYOUT_CACHE.get(path)
    if held is not None and held[1] and held[1] == _file_stamps(held[0].files):
        return held[0]
    found = load_layout(path)
    _LAYOUT_CACHE.clear()  # one dataset at a time: they can be large
    _LAYOUT_CACHE[path] = (found, _file_stamps(found.files))
    return found


def _scan_layout(dataset: dict[str, Any]) -> Scanned:
    """Both of a layout's own parts as one index space: training images first, then test."""
    found = _layout(str(dataset["path"]))
    recorded = dataset.get("name")
    if recorded and recorded != found.name:
        raise UserError(f"{dataset['path']} now holds {found.name}, not {recorded} as when the "
                        "run started")
    x_train, x_test = found.x_train, found.x_test
    n_train = len(x_train)
    labels = np.concatenate([found.y_train, found.y_test]).astype(np.int64)

    def decode(idx: np.ndarray, size: int) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        images = np.empty((len(idx), *x_train.shape[1:]), dtype=np.uint8)
        in_test = idx >= n_train
        images[~in_test] = x_train[idx[~in_test]]
        images[in_test] = x_test[idx[in_test] - n_train]
        # N x H x W (grey) or N x H x W x 3 (colour) -> N x C x H x W
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        return resize_array(images, size)

    parts = {"train": f"{found.name} training set", "test": f"{found.name} test set"}
    names = [f.name for f in found.files if "labels" not in f.name]  # idx: name the images
    for part, words in (("train", ("train", "data_batch")), ("test", ("t10k", "test"))):
        files = [n for n in names if any(w in n for w in words)]
        if found.layout == "keras-npz":
            files = [f"{found.root.name}: x_{part}, y_{part}"]
        if files:
            parts[part] += f" ({files[0]}{' .. ' + files[-1] if len(files) > 1 else ''})"
    return Scanned(labels, list(found.class_names), decode,
                   image_size=int(max(x_train.shape[1:3])),
                   own_test=np.arange(n_train, len(labels)), parts=parts)
