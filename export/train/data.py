"""Training data: the embedded digits, an image folder, an ``.npz`` file or a dataset in a
torchvision / Keras layout (MNIST family, CIFAR; :mod:`.layouts`), split and served.

Every source goes through the same three steps, so training, the parity gate (through
:func:`reference_images`) and prediction (through :func:`read_image` and :func:`preprocess`) see
exactly the same images:

1. *scan* the source: labels, class names and something that can be decoded later (an array or a
   list of files). A bad source fails here with one :class:`~export.errors.UserError`.
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

import dataclasses
import functools
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from ..core.errors import UserError
from ..core.hardware import available_memory, format_bytes
from ..core.models import ModelSpec
from .layouts import LayoutDataset, detect_layout, load_layout

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2
# ITU-R 601-2 luma, the weights Pillow uses for its RGB -> "L" conversion.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Images resized per chunk, so a float copy of a whole dataset is never made.
RESIZE_CHUNK = 2048
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


def scan(dataset: dict[str, Any]) -> Scanned:
    """Read what the ``dataset`` dict points at, as far as labels; fail early on bad data."""
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
        scanned = _scan_folder(Path(path)) if kind == "folder" else _scan_npz(Path(path))
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


def _scan_folder(root: Path) -> Scanned:
    try:
        classes, skipped = _class_folders(root)
    except OSError as exc:  # a folder we may not list (permissions), or that went away
        where = exc.filename or root
        raise UserError(f"cannot read {where}: {exc.strerror or exc}") from None
    if not classes:
        raise UserError(f"no images found in {root}: expected one sub-folder per class holding "
                        f"{'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} files")
    _require_two_classes([name for name, _ in classes], root)
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
            with Image.open(files[i]) as img:
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


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """One image file as ``uint8`` ``C x H x W`` (C = 1 for grayscale files, 3 otherwise).

    With ``size``, resized to ``size x size`` by :func:`resize_array`, the resize every source
    gets (arrays, files, training and prediction alike).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = _eight_bit(img, path)
                gray = img.mode in ("1", "L", "LA")
                img = img.convert("L" if gray else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"cannot read image {path}: {str(exc).splitlines()[0]} (a "
                        "decompression bomb to Pillow; shrink the image)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else exc}"
                        ) from None
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return arr if size is None else resize_array(arr[None], size)[0]


def _eight_bit(img: Any, path: Path) -> Any:
    """16-bit grayscale (Pillow's "I;16*" and "I" modes) -> 8-bit "L" by its high byte.

    ``v >> 8`` maps 0..65535 onto 0..255 and gives back exactly the 8-bit value ``v`` of a
    picture stored as ``v * 257``, the PNG convention; Pillow's own conversion clips instead,
    which turns a 16-bit picture into black and white. (16-bit colour PNGs already arrive as
    8-bit "RGB" or "RGBA" from Pillow, by the same high byte.)
    """
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        pixels = np.asarray(img)
        if img.mode == "I" and pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise UserError(f"cannot read image {path}: 32-bit integer pixels outside "
                            f"0..65535 ({pixels.min()}..{pixels.max()}); save it as an 8- or "
                            "16-bit PNG")
        return Image.fromarray((pixels.astype(np.uint32) >> 8).astype(np.uint8), "L")
    if img.mode == "F":
        raise UserError(f"cannot read image {path}: floating-point pixels are not supported; "
                        "save it as an 8- or 16-bit PNG")
    return img


def _scan_npz(path: Path) -> Scanned:
    try:
        # np.load would read a lone .npy array or a pickle whole before saying what it is.
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic == b"\x93NUMPY":
            raise UserError(f"{path} is not an .npz archive (it holds a single array): save x "
                            "and y together with numpy.savez")
        if not zipfile.is_zipfile(path):
            raise UserError(f"cannot read {path} as an .npz file (not a zip archive: cut "
                            "short, or another kind of file)")
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise UserError(f"{path} must hold arrays 'x' (images) and 'y' (labels); "
                                f"found {npz.files or 'none'}")
            x, y = _npz_member(npz, "x", path), _npz_member(npz, "y", path)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken archive raises zipfile, zlib, numpy...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read {path} as an .npz file ({first})") from None
    images = _npz_images(x, path)
    labels, class_names = _npz_labels(y, path)
    if len(images) != len(labels):
        raise UserError(f"{path}: x holds {len(images)} images but y holds {len(labels)} labels")
    if len(labels) == 0:
        raise UserError(f"{path} holds no images")
    _require_two_classes(class_names, path)
    return Scanned(labels, class_names, lambda idx, size: resize_array(images[idx], size),
                   min_channels=images.shape[1], image_size=int(max(images.shape[-2:])))


def _npz_member(npz: Any, key: str, path: Path) -> np.ndarray:
    """One array of an open .npz, checked from its header before it is read: a NumPy array
    (not raw bytes), not pickled objects, and small enough for the memory there is."""
    name = f"{key}.npy"
    if name not in npz.zip.namelist():
        raise UserError(f"{path}: {key} is not a NumPy array (the archive member has no .npy "
                        "name); save the arrays with numpy.savez")
    with npz.zip.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _fortran, dtype = read_header(fh)
    if dtype.hasobject:
        raise UserError(f"{path}: {key} holds Python objects (an object array), which are never "
                        "unpickled; store numbers or strings")
    need = math.prod(shape) * dtype.itemsize
    if key == "x" and dtype.kind == "f":
        need *= 2  # floats are scaled into a second array before they become uint8
    check_memory(need, f"{path}: {key} ({' x '.join(map(str, shape))} {dtype})")
    return npz[key]


def check_memory(need: int, what: str, advice: str = "") -> None:
    """Refuse, before allocating it, more memory than this machine has available."""
    available = available_memory()
    if available is not None and need > available:
        raise UserError(f"{what} needs {format_bytes(need)} of memory, but only "
                        f"{format_bytes(available)} is available" + (f": {advice}" if advice
                                                                      else ""))


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
        if x.size and (not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
            raise UserError(f"{path}: float images must hold values in 0..1 "
                            f"(got {np.nanmin(x):.3g}..{np.nanmax(x):.3g}); "
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


def _require_two_classes(class_names: Sequence[str], where: Path) -> None:
    if len(class_names) < 2:
        found = f" ({class_names[0]})" if class_names else ""
        raise UserError(f"{where} holds a single class{found}: training needs at least two")


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


# ---------------------------------------------------------------------------------------------
# Step 2: split
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(labels: np.ndarray, seed: int, val_fraction: float,
                  test_fraction: float | None, class_names: Sequence[str] | None = None,
                  own_test: np.ndarray | None = None) -> Split:
    """Seeded, stratified train / validation / test indices (each class in every part).

    With ``own_test`` (a dataset's own test split) that is the test split, ``test_fraction`` is
    not used, and validation is ``val_fraction`` of the rest, seeded and stratified.
    """
    if own_test is not None:
        return _split_own_test(labels, np.asarray(own_test), seed, val_fraction, class_names)
    counts = np.bincount(labels)
    num_classes = len(counts)
    if counts.min() < 3:
        name = (class_names or [str(i) for i in range(num_classes)])[int(counts.argmin())]
        raise UserError(f"class {name!r} has {counts.min()} image(s): each class needs at least "
                        "3 (one each for training, validation and test)")
    n = len(labels)
    n_test = max(num_classes, round(test_fraction * n))
    n_val = max(num_classes, round(val_fraction * n))
    if n - n_test - n_val < num_classes:
        raise UserError(f"{n} images are too few to split {num_classes} classes into training, "
                        "validation and test parts")
    everything = np.arange(n)
    rest, test = train_test_split(everything, test_size=n_test, random_state=seed,
                                  stratify=labels)
    train, val = train_test_split(rest, test_size=n_val, random_state=seed,
                                  stratify=labels[rest])
    return Split(np.sort(train), np.sort(val), np.sort(test))


def _split_own_test(labels: np.ndarray, test: np.ndarray, seed: int, val_fraction: float,
                    class_names: Sequence[str] | None) -> Split:
    """The source's test split as given; validation: a stratified share of its training set.

    A class may have no images at all (EMNIST letters' unused class 0); a class that has any
    needs two in the training set, one for training and one for validation.
    """
    rest = np.setdiff1d(np.arange(len(labels)), test)
    counts = np.bincount(labels[rest], minlength=len(class_names or []))
    present = np.flatnonzero(counts)
    if counts[present].min() < 2:
        low = int(present[counts[present].argmin()])
        name = (class_names or [str(i) for i in range(len(counts))])[low]
        raise UserError(f"class {name!r} has {counts[low]} training image: each class needs at "
                        "least 2 (one for training, one for validation)")
    n_val = max(len(present), round(val_fraction * len(rest)))
    if len(rest) - n_val < len(present):
        raise UserError(f"{len(rest)} training images are too few to hold out a validation part "
                        f"for {len(present)} classes")
    train, val = train_test_split(rest, test_size=n_val, random_state=seed,
                                  stratify=labels[rest])
    return Split(np.sort(train), np.sort(val), np.sort(test))


def split_of(scanned: Scanned, dataset: dict[str, Any]) -> Split:
    """The split a ``dataset`` dict describes, for a scanned source."""
    test_fraction = dataset.get("test_fraction")
    return split_indices(scanned.labels, int(dataset.get("seed", 0)),
                         float(dataset.get("val_fraction", DEFAULT_VAL_FRACTION)),
                         DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction),
                         scanned.class_names, own_test=scanned.own_test)


def describe_split(scanned: Scanned, dataset: dict[str, Any], split: Split) -> dict[str, Any]:
    """Where each part came from and how many images it holds (for summary.json and logs)."""
    seed, val = int(dataset.get("seed", 0)), float(dataset.get("val_fraction",
                                                                 DEFAULT_VAL_FRACTION))
    if scanned.own_test is not None:
        parts = scanned.parts or {"train": "the dataset's training set",
                                  "test": "the dataset's test set"}
        origin = {"train": f"{parts['train']}, less the validation part",
                  "val": f"{val:.0%} of the training set, seeded ({seed}) and stratified",
                  "test": f"{parts['test']}: the dataset's own test split"}
    else:
        test = float(dataset.get("test_fraction") or DEFAULT_TEST_FRACTION)
        origin = {"train": "the rest",
                  "val": f"{val:.0%} of all images, seeded ({seed}) and stratified",
                  "test": f"{test:.0%} of all images, seeded ({seed}) and stratified"}
    counts = {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    return {part: {"count": int(counts[part]), "from": origin[part]} for part in counts}


# ---------------------------------------------------------------------------------------------
# Step 3: decode, channels and normalisation
# ---------------------------------------------------------------------------------------------


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 N x C x H x W -> uint8 N x C x size x size (bilinear, antialiased when shrinking).

    Works through ``RESIZE_CHUNK`` images at a time, so the float copies it needs stay small
    (a whole 60,000-image dataset at 224 x 224 in float32 would be 12 GB).
    """
    if images.shape[-2:] == (size, size):
        return np.ascontiguousarray(images)
    # In chunks of about 64 MiB of float pixels: the float copies of a whole data set would
    # need 4 bytes per pixel at both sizes at once.
    per_image = 4 * images.shape[1] * (images.shape[2] * images.shape[3] + size * size)
    step = max(1, (64 << 20) // max(1, per_image))
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), step):
        x = torch.from_numpy(np.require(images[start:start + step], requirements=("C", "W")))
        x = x.float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out[start:start + step] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def to_channels(images: np.ndarray, in_chans: int) -> np.ndarray:
    """N x C x H x W with C in (1, 3) -> ``in_chans`` channels (replicate grey, luma of RGB)."""
    have = images.shape[1]
    if have == in_chans:
        return images
    if have == 1 and in_chans == 3:
        return np.repeat(images, 3, axis=1)
    if have == 3 and in_chans == 1:
        luma = np.tensordot(np.asarray(LUMA_WEIGHTS, dtype=np.float32),
                            images.astype(np.float32), axes=([0], [1]))
        return np.rint(luma)[:, None].astype(images.dtype)
    raise UserError(f"cannot turn {have}-channel images into {in_chans}-channel model input")


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 N x C x H x W -> float32, scaled to 0..1 then standardised per channel."""
    m = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    s = np.asarray(std, dtype=np.float32)[None, :, None, None]
    return np.ascontiguousarray((images.astype(np.float32) / 255.0 - m) / s, dtype=np.float32)


def preprocess(images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 ``N x C x H x W`` pixels (C = 1 or 3, any H x W) -> what ``spec``'s model takes.

    float32 ``N x spec.in_chans x S x S``: :func:`resize_array` to ``spec.input_size``,
    :func:`to_channels` (grey replicated to RGB, RGB to grey by ITU-R 601 luma), :func:`normalise`
    with ``spec.mean``/``spec.std``. The one path from pixels to model input: the parity gate's
    real images (:func:`reference_images`) and ``resnet-predict`` both go through it, and the
    training loop's decoded images plus :class:`ImageDataset` without augmentation give the same
    array (a test checks it element for element).
    """
    images = to_channels(resize_array(images, spec.input_size), spec.in_chans)
    return normalise(images, spec.mean, spec.std)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of uint8 N x C x H x W images."""
    # Two passes over chunks of about 8M pixel values: a float64 copy of the whole training
    # split would take eight times its memory.
    n = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    step = max(1, (8 << 20) // max(1, images[0].size if len(images) else 1))
    chunks = [images[i:i + step] for i in range(0, len(images), step)]
    total = sum((c.astype(np.float64) / 255.0).sum(axis=(0, 2, 3)) for c in chunks)
    mean = total / n
    squares = sum((((c.astype(np.float64) / 255.0) - mean[None, :, None, None]) ** 2).sum(
        axis=(0, 2, 3)) for c in chunks)
    std = np.maximum(np.sqrt(squares / n), 1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


# ---------------------------------------------------------------------------------------------
# What training uses
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Decoded splits (uint8 N x C x S x S), labels, class names and the source description."""

    dataset: dict[str, Any]
    class_names: list[str]
    images: dict[str, np.ndarray]  # "train" / "val" / "test"
    labels: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)  # the scan's notes (e.g. skipped files)
    splits: dict[str, Any] = dataclasses.field(default_factory=dict)  # describe_split's
    image_size: int | None = None  # the source images' side, before resizing

    @property
    def in_chans(self) -> int:
        return int(self.images["train"].shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> dict[str, int]:
        return {part: int(len(v)) for part, v in self.labels.items()}


def load_training_data(dataset: dict[str, Any], input_size: int,
                       scanned: Scanned | None = None) -> TrainingData:
    """Scan (unless ``scanned`` is given), split and decode a source; ``dataset`` gains
    ``num_images``.

    Channels are inferred from the data: grayscale (1) unless some image is in colour (3), in
    which case grayscale images are replicated to three channels.
    """
    scanned = scanned if scanned is not None else scan(dataset)
    split = split_of(scanned, dataset)
    order = np.concatenate([split.train, split.val, split.test])
    # Decoded images stay in memory as uint8; decoding briefly holds them twice.
    check_memory(2 * len(order) * scanned.min_channels * input_size * input_size,
                 f"decoding {len(order)} images at {scanned.min_channels} x {input_size} x "
                 f"{input_size}", "lower --input-size or use fewer images")
    decoded = scanned.decode(order, input_size)
    bounds = np.cumsum([len(split.train), len(split.val)])
    parts = dict(zip(("train", "val", "test"), np.split(decoded, bounds)))
    index = dict(zip(("train", "val", "test"), (split.train, split.val, split.test)))
    labels = {part: scanned.labels[idx] for part, idx in index.items()}
    dataset = {**dataset, "num_images": int(len(scanned.labels))}
    return TrainingData(dataset, scanned.class_names, parts, labels, list(scanned.notes),
                        describe_split(scanned, dataset, split), scanned.image_size)


@dataclass
class Labelled:
    """Images of one part of a source as the model sees them, with labels and their indices."""

    images: np.ndarray  # float32 N x C x S x S, normalised
    labels: np.ndarray  # int64 N
    indices: np.ndarray  # positions in the scanned source, to prove two sets disjoint
    part: str


def split_images(dataset: dict[str, Any] | None, spec: ModelSpec, part: str, limit: int,
                 seed: int = 0) -> Labelled:
    """A seeded subset (at most ``limit``, in split order) of one part of a source.

    ``part`` is "train", "val" or "test" of the source's split (as training made it, from the
    dataset dict's seed and fractions), or "all" for every image (a calibration set the user
    names). ``dataset`` None is the embedded digits. Images are resized to ``spec.input_size``,
    converted to ``spec.in_chans`` channels and normalised with ``spec.mean``/``spec.std``.
    Raises :class:`UserError` when the data is gone or changed.
    """
    dataset = dataset if dataset is not None else describe_source(None)
    scanned = scan(dataset)
    if part == "all":
        chosen = np.arange(len(scanned.labels))
    else:
        split = split_of(scanned, dataset)
        chosen = {"train": split.train, "val": split.val, "test": split.test}[part]
    if limit < len(chosen):
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(chosen, size=max(0, limit), replace=False))
    images = preprocess(scanned.decode(chosen, spec.input_size), spec)
    return Labelled(images, scanned.labels[chosen], chosen, part)


def reference_images(dataset: dict[str, Any] | None, spec: ModelSpec, limit: int = 64,
                     seed: int = 0) -> np.ndarray:
    """Real test-split images as the model sees them: float32 N x C x S x S, normalised (the
    parity gate's real inputs; :func:`split_images` with part "test")."""
    return split_images(dataset, spec, "test", limit, seed).images


# ---------------------------------------------------------------------------------------------
# Serving batches
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Small random affine jitter; never flips (a mirrored digit is not the same digit)."""

    max_rotate_deg: float = 10.0
    max_shift: float = 0.1  # of the image side
    max_scale: float = 0.1  # +- relative


class ImageDataset(torch.utils.data.Dataset):
    """Decoded uint8 images -> normalised float tensors, with optional seeded augmentation.

    The jitter of image ``i`` in epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)``,
    so it does not depend on worker count, rank or whether the run was resumed.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float],
                 std: Sequence[float], augment: Augment | None = None, seed: int = 0):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div_(255.0)
        if self.augment is not None:
            x = self._jitter(x, np.random.default_rng((self.seed, self.epoch, int(i))))
        return (x - self.mean) / self.std, self.labels[i]

    def _jitter(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        a = self.augment
        angle = math.radians(rng.uniform(-a.max_rotate_deg, a.max_rotate_deg))
        scale = 1.0 + rng.uniform(-a.max_scale, a.max_scale)
        tx, ty = rng.uniform(-a.max_shift, a.max_shift, size=2) * 2.0  # grid units span 2
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[0]


__all__ = ["Augment", "DEFAULT_TEST_FRACTION", "DEFAULT_VAL_FRACTION", "ImageDataset", "Scanned",
           "Split", "TrainingData", "channel_stats", "describe_source", "load_training_data",
           "normalise", "preprocess", "read_image", "reference_images", "resize_array", "scan",
           "source_name", "describe_split", "split_indices", "split_of",
           "to_channels"]
