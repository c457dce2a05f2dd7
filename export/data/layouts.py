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
untrusted input: the parsers check sizes against headers before allocating, and CIFAR's pickles
are read with an unpickler that admits only the few numpy globals those files contain. Anything
wrong is one :class:`UserError` line that names the file.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import string
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError

# No dataset in these layouts comes near this; a header that claims more is corrupt or hostile,
# and refusing it before allocating keeps a 100-byte file from asking for terabytes.
MAX_ARRAY_BYTES = 2 ** 31

# Datasets without known class names get "0".."K-1" from their largest label.
MAX_UNNAMED_CLASSES = 100_000

LAYOUTS = ("torchvision-idx", "cifar-python", "cifar-binary", "keras-npz")

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
KMNIST_CLASSES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
# EMNIST's mapping files are not kept by torchvision; these are the same lists torchvision uses.
_EMNIST_MERGED = set("cijklmopsuvwxyz")
_EMNIST_ALL = sorted(string.digits + string.ascii_letters)
EMNIST_CLASSES = {
    "byclass": _EMNIST_ALL,
    "bymerge": [c for c in _EMNIST_ALL if c not in _EMNIST_MERGED],
    "balanced": [c for c in _EMNIST_ALL if c not in _EMNIST_MERGED],
    "letters": ["N/A"] + list(string.ascii_lowercase),
    "digits": list(string.digits),
    "mnist": list(string.digits),
}

# Folder (or .npz stem) names, lower-cased without "-" and "_", and the dataset they hold.
_KNOWN_NAMES = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "kmnist": "KMNIST",
                "emnist": "EMNIST"}
_KNOWN_CLASSES = {"MNIST": MNIST_CLASSES, "FashionMNIST": FASHION_MNIST_CLASSES,
                  "KMNIST": KMNIST_CLASSES}
# Sub-folders of a data root worth looking into; any other sub-folder is left alone.
_ROOT_CHILDREN = set(_KNOWN_NAMES) | {"cifar10batchespy", "cifar100python", "cifar10batchesbin",
                                      "cifar100binary"}
_KERAS_NPZ_NAMES = ("mnist.npz", "fashion_mnist.npz")
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

_IDX_NAME = re.compile(r"^(?:emnist-(?P<split>[a-z]+)-)?(?P<part>train|t10k|test)-"
                       r"(?P<kind>images|labels)[-.]idx[13]-ubyte(?P<gz>\.gz)?$")
_IDX_NDIM = {"images": 3, "labels": 1}

_CIFAR_IMAGE_BYTES = 3 * 32 * 32
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


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


@dataclass(frozen=True)
class _Candidate:
    layout: str
    path: Path                  # the folder (or .npz file) that holds the dataset's files
    idx_set: str | None = None  # torchvision-idx: "" for MNIST-style names, an EMNIST split, or
                                # None for "whichever single set the folder holds"


# ---------------------------------------------------------------------------------------------
# Detection: file names only
# ---------------------------------------------------------------------------------------------


def detect_layout(path: str | os.PathLike) -> str | None:
    """The layout at ``path``, judged by file names alone (cheap); None if it is none of them.

    None lets the caller fall back to its own readers (an image folder, a plain ``x``/``y``
    ``.npz``). A folder holding several datasets reports the first one's layout, and
    :func:`load_layout` then asks the user to pick one.
    """
    candidates = _candidates(Path(path).expanduser())
    return candidates[0].layout if candidates else None


def _candidates(path: Path) -> list[_Candidate]:
    try:
        if path.is_file():
            found = _file_candidate(path)
            return [found] if found else []
        if not path.is_dir():
            return []
        own = _folder_candidate(path)
        if own:
            return [own]
        found = []
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_dir() and _norm(entry.name) in _ROOT_CHILDREN:
                child = _folder_candidate(Path(entry.path))
            elif entry.is_file() and entry.name in _KERAS_NPZ_NAMES:
                child = _file_candidate(Path(entry.path))
            else:
                child = None
            if child:
                found.append(child)
        return found
    except OSError:
        return []


def _file_candidate(path: Path) -> _Candidate | None:
    if path.suffix.lower() == ".npz":
        return _Candidate("keras-npz", path) if _npz_has_split_keys(path) else None
    match = _IDX_NAME.match(path.name)
    if match:  # any file of a set selects that set (the way to pick one EMNIST split)
        return _Candidate("torchvision-idx", path.parent, match["split"] or "")
    return None


def _npz_has_split_keys(path: Path) -> bool:
    """Whether the archive's member names are the four Keras arrays (reads the zip directory)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False
    return all(f"{key}.npy" in names for key in _NPZ_KEYS)


def _folder_candidate(folder: Path) -> _Candidate | None:
    names = set(os.listdir(folder))

    def has(*files: str) -> bool:
        return all(f in names and (folder / f).is_file() for f in files)

    if any(_IDX_NAME.match(n) for n in names):
        return _Candidate("torchvision-idx", folder)
    raw = folder / "raw"
    if "raw" in names and raw.is_dir() and any(_IDX_NAME.match(n) for n in os.listdir(raw)):
        return _Candidate("torchvision-idx", raw)
    if has("data_batch_1", "test_batch") or has("train", "test", "meta"):
        return _Candidate("cifar-python", folder)
    if has("data_batch_1.bin", "test_batch.bin") or has("train.bin", "test.bin"):
        return _Candidate("cifar-binary", folder)
    return None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_layout(path: str | os.PathLike) -> LayoutDataset:
    """Read the dataset at ``path`` into memory; any problem is one UserError naming the file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data path not found: {p}")
    candidates = _candidates(p)
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
            files: list[Path]) -> LayoutDataset:
    """Checks every layout shares, then the dataset; ``class_names`` None means "0".."K-1"."""
    for (x, y, where), split in ((train, "training"), (test, "test")):
        if len(x) == 0:
            raise UserError(f"{where}: holds no {split} images")
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
    for _, y, where in (train, test):
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= len(class_names):
            bad = low if low < 0 else high
            raise UserError(f"{where}: label {bad} is out of range for {name}'s "
                            f"{len(class_names)} classes")
    return LayoutDataset(name, layout, root.resolve(), train[0], train[1], test[0], test[1],
                         list(class_names), [f.resolve() for f in files])


def _shape(x: np.ndarray) -> str:
    return " x ".join(str(d) for d in x.shape[1:])


# -- torchvision idx --------------------------------------------------------------------------


def _load_idx(found: _Candidate) -> LayoutDataset:
    folder = found.path
    sets: dict[str, dict[tuple[str, str], Path]] = {}
    for name in sorted(os.listdir(folder)):
        match = _IDX_NAME.match(name)
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
            labels = ", ".join(f"EMNIST {s}" if s else "MNIST-style" for s in sorted(sets))
            example = folder / _idx_file_name(max(sets), "train", "images")
            raise UserError(f"{folder} holds idx files of several datasets ({labels}): point at "
                            f"one of that set's files, e.g. {example}")
        chosen = next(iter(sets))
    files = sets.get(chosen, {})
    wanted = [(part, kind) for part in ("train", "test") for kind in ("images", "labels")]
    missing = [_idx_file_name(chosen, part, kind) for part, kind in wanted if (part, kind)
               not in files]
    if missing:
        raise UserError(f"{folder}: missing {', '.join(missing)} (plain or .gz)")

    arrays = {key: _read_idx(files[key], _IDX_NDIM[key[1]]) for key in wanted}
    if chosen:
        name, class_names = f"EMNIST-{chosen}", EMNIST_CLASSES.get(chosen)
        # EMNIST stores each image column by column: transpose to get it upright.
        for part in ("train", "test"):
            images = arrays[(part, "images")]
            arrays[(part, "images")] = np.ascontiguousarray(images.transpose(0, 2, 1))
    else:
        owner = folder.parent if folder.name == "raw" else folder
        name = _KNOWN_NAMES.get(_norm(owner.name), owner.name)
        class_names = _KNOWN_CLASSES.get(name)
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


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """One idx file as a uint8 array, its header checked against its length before reading on."""
    compressed = path.name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            return _read_idx_stream(f, path, ndim, None if compressed else path.stat().st_size)
    except UserError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        what = "decompress" if compressed else "read"
        raise UserError(f"{path}: cannot {what} it ({exc})") from None


def _read_idx_stream(f, path: Path, ndim: int, file_size: int | None) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4:
        raise UserError(f"{path}: {len(head)} bytes, too short for an idx header")
    magic = struct.unpack(">I", head)[0]
    expected = 0x800 + ndim
    what = "images" if ndim == 3 else "labels"
    if magic >> 16 != 0:
        raise UserError(f"{path}: not an idx file (magic number 0x{magic:08X}, expected "
                        f"0x{expected:08X} for {what})")
    if head[2] != 0x08:
        raise UserError(f"{path}: idx data type 0x{head[2]:02X}, only unsigned bytes (0x08) "
                        "are supported")
    if head[3] != ndim:
        raise UserError(f"{path}: magic number 0x{magic:08X} ({head[3]}-dimensional data), "
                        f"expected 0x{expected:08X} for {what}")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise UserError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    header = 4 + 4 * ndim
    payload = 1
    for d in dims:
        payload *= d
    declared = " x ".join(map(str, dims))
    if payload > MAX_ARRAY_BYTES:
        raise UserError(f"{path}: header declares {declared} ({payload} bytes), over the "
                        f"{MAX_ARRAY_BYTES}-byte limit; the file is corrupt")
    if file_size is not None and file_size != header + payload:
        raise UserError(f"{path}: {file_size} bytes, but its header declares {declared} "
                        f"({header + payload} bytes): truncated or corrupt")
    buf = bytearray(payload)
    view, got = memoryview(buf), 0
    while got < payload:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if got < payload:
        raise UserError(f"{path}: holds {header + got} bytes of data, but its header declares "
                        f"{declared} ({header + payload} bytes): truncated")
    if f.read(1):
        raise UserError(f"{path}: more data than its header declares ({declared}): corrupt")
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


# -- CIFAR, python pickles --------------------------------------------------------------------


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What CIFAR's pickles (Python 2 originals, or re-saved by Python 3) may name, and nothing
    else: numpy array, scalar and dtype reconstruction, and latin-1 bytes for protocol-2
    re-saves. None of them runs code that the file chooses."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    objects = {"multiarray._reconstruct": multiarray._reconstruct, "ndarray": np.ndarray,
               "dtype": np.dtype,
               # numpy integers in place of ints, in batches re-saved from numpy arrays
               "multiarray.scalar": multiarray.scalar}
    if hasattr(numeric, "_frombuffer"):  # protocol-5 pickles of arrays
        objects["numeric._frombuffer"] = numeric._frombuffer
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    for qualified, obj in objects.items():
        module, _, name = qualified.rpartition(".")
        for prefix in ("numpy.core", "numpy._core") if module else ("numpy",):
            allowed[(f"{prefix}.{module}" if module else prefix, name)] = obj
    return allowed


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (bytes stored as latin-1 text); only that."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1"):
        raise ValueError(f"unexpected codec {encoding!r}")
    return text.encode("latin-1", errors)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :func:`_allowed_globals` and refuses everything else.

    Refusing in ``find_class`` means a hostile file's callable is never even imported, let alone
    called: pickle looks up a global before it can reduce with it.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UserError(f"{self._path}: refusing to unpickle global {module}.{name} (a CIFAR "
                            "batch holds only arrays, lists and numbers)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(f"{self._path}: refusing a persistent reference (not a CIFAR batch)")


def _unpickle(path: Path) -> dict:
    size = path.stat().st_size
    if size > MAX_ARRAY_BYTES:
        raise UserError(f"{path}: {size} bytes, over the {MAX_ARRAY_BYTES}-byte limit for a "
                        "CIFAR batch")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as exc:  # a corrupt pickle raises anything from EOFError to TypeError
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}"
                        f"{': ' + first if first else ''})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, a CIFAR batch is a dict")
    return obj


def _entry(batch: dict, key: str, path: Path) -> Any:
    """``batch[key]`` whether the keys are bytes (the Python 2 originals) or str (re-saved)."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    keys = ", ".join(k.decode(errors="replace") if isinstance(k, bytes) else str(k)
                     for k in batch)
    raise UserError(f"{path}: no '{key}' entry (found: {keys or 'none'})")


def _load_cifar_python(found: _Candidate) -> LayoutDataset:
    folder = found.path
    if (folder / "data_batch_1").is_file():
        name, train, test, meta = "CIFAR10", _CIFAR10_TRAIN, ["test_batch"], "batches.meta"
        label_key, names_key = "labels", "label_names"
    else:
        name, train, test, meta = "CIFAR100", ["train"], ["test"], "meta"
        label_key, names_key = "fine_labels", "fine_label_names"
    wanted = train + test + [meta]
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: missing {', '.join(missing)} (a {name} python folder holds "
                        f"{', '.join(wanted)})")
    names = [_text(n) for n in _entry(_unpickle(folder / meta), names_key, folder / meta)]
    parts = []
    for files in (train, test):
        xs, ys = [], []
        for f in files:
            x, y = _cifar_python_batch(folder / f, label_key)
            xs.append(x)
            ys.append(y)
        parts.append((np.concatenate(xs), np.concatenate(ys), folder / files[-1]))
    return _finish(name, "cifar-python", folder, parts[0], parts[1], names,
                   [folder / f for f in wanted])


def _cifar_python_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data, labels = _entry(batch, "data", path), _entry(batch, label_key, path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _CIFAR_IMAGE_BYTES):
        what = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise UserError(f"{path}: 'data' must be a uint8 array of N x {_CIFAR_IMAGE_BYTES} "
                        f"pixels, got a {what}")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError):
        y = np.asarray([None])
    if y.ndim != 1 or len(y) != len(data) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: '{label_key}' must be {len(data)} integer labels, one per "
                        f"image, got {y.dtype} of shape {y.shape}")
    return _cifar_hwc(data), y.astype(np.int64)


def _cifar_hwc(records: np.ndarray) -> np.ndarray:
    """CIFAR's 3072 bytes per image (all red, then green, then blue) as N x 32 x 32 x 3."""
    return records.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# -- CIFAR, binary records --------------------------------------------------------------------


def _load_cifar_binary(found: _Candidate) -> LayoutDataset:
    folder = found.path
    if (folder / "data_batch_1.bin").is_file():
        name, names_file, label_bytes = "CIFAR10", "batches.meta.txt", 1
        train, test = [f"{b}.bin" for b in _CIFAR10_TRAIN], ["test_batch.bin"]
    else:  # each CIFAR-100 record starts with its coarse label, then its fine label
        name, names_file, label_bytes = "CIFAR100", "fine_label_names.txt", 2
        train, test = ["train.bin"], ["test.bin"]
    wanted = train + test + [names_file]
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: missing {', '.join(missing)} (a {name} binary folder holds "
                        f"{', '.join(wanted)})")
    try:
        text = (folder / names_file).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"{folder / names_file}: cannot read it ({exc})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"{folder / names_file}: holds no class names")
    parts = []
    for files in (train, test):
        xs, ys = [], []
        for f in files:
            x, y = _cifar_binary_batch(folder / f, label_bytes)
            xs.append(x)
            ys.append(y)
        parts.append((np.concatenate(xs), np.concatenate(ys), folder / files[-1]))
    return _finish(name, "cifar-binary", folder, parts[0], parts[1], names,
                   [folder / f for f in wanted])


def _cifar_binary_batch(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + _CIFAR_IMAGE_BYTES
    size = path.stat().st_size
    if size == 0 or size % record or size > MAX_ARRAY_BYTES:
        raise UserError(f"{path}: {size} bytes is not a whole number of {record}-byte CIFAR "
                        f"records ({size // record} records and {size % record} bytes over)"
                        if size <= MAX_ARRAY_BYTES else
                        f"{path}: {size} bytes, over the {MAX_ARRAY_BYTES}-byte limit")
    try:
        with open(path, "rb") as f:
            raw = np.fromfile(f, dtype=np.uint8, count=size)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc})") from None
    if raw.size != size:
        raise UserError(f"{path}: read {raw.size} of {size} bytes")
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)
    return _cifar_hwc(rows[:, label_bytes:]), labels


# -- Keras .npz -------------------------------------------------------------------------------


def _load_keras_npz(found: _Candidate) -> LayoutDataset:
    path = found.path
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in _NPZ_KEYS}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: cannot read it as an .npz file ({first})") from None
    stem = _norm(path.stem)
    name = _KNOWN_NAMES.get(stem, path.stem)
    x_train = _npz_images(arrays["x_train"], path, "x_train")
    x_test = _npz_images(arrays["x_test"], path, "x_test")
    y_train = _npz_labels(arrays["y_train"], path, "y_train")
    y_test = _npz_labels(arrays["y_test"], path, "y_test")
    return _finish(name, "keras-npz", path, (x_train, y_train, path), (x_test, y_test, path),
                   _KNOWN_CLASSES.get(name), [path])


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
