"""Which dataset layout a path holds, judged by file and folder names alone (cheap, nothing
is read): the names torchvision and Keras give their files, and the classes of the datasets whose
files carry no names. :mod:`.layouts` reads what is found."""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

from .npz import npz_member_names

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
KNOWN_NAMES = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "kmnist": "KMNIST",
               "emnist": "EMNIST"}
KNOWN_CLASSES = {"MNIST": MNIST_CLASSES, "FashionMNIST": FASHION_MNIST_CLASSES,
                 "KMNIST": KMNIST_CLASSES}
# Sub-folders of a data root worth looking into; any other sub-folder is left alone.
ROOT_CHILDREN = set(KNOWN_NAMES) | {"cifar10batchespy", "cifar100python", "cifar10batchesbin",
                                     "cifar100binary"}
KERAS_NPZ_NAMES = ("mnist.npz", "fashion_mnist.npz")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

IDX_NAME = re.compile(r"^(?:emnist-(?P<split>[a-z]+)-)?(?P<part>train|t10k|test)-"
                      r"(?P<kind>images|labels)[-.]idx[13]-ubyte(?P<gz>\.gz)?$")


def norm(name: str) -> str:
    """A folder or file name as the tables here spell it."""
    return name.lower().replace("-", "").replace("_", "")


@dataclass(frozen=True)
class Candidate:
    """Where a layout was found, and which idx set of it."""

    layout: str
    path: Path                  # the folder (or .npz file) that holds the dataset's files
    idx_set: str | None = None  # torchvision-idx: "" for MNIST-style names, an EMNIST split, or
                                # None for "whichever single set the folder holds"


def detect_layout(path: str | os.PathLike) -> str | None:
    """The layout at ``path``, judged by file names alone (cheap); None if it is none of them.

    None lets the caller fall back to its own readers (an image folder, a plain ``x``/``y``
    ``.npz``). A folder holding several datasets reports the first one's layout, and
    :func:`load_layout` then asks the user to pick one.
    """
    candidates = find_candidates(Path(path).expanduser())
    return candidates[0].layout if candidates else None


def find_candidates(path: Path) -> list[Candidate]:
    try:
        if path.is_file():
            found = _file_candidate(path)
            return [found] if found else []
        if not path.is_dir():
            return []
        own = _folder_candidate(path)
        if own:
            return [own]
        candidates: list[Candidate] = []
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_dir() and norm(entry.name) in ROOT_CHILDREN:
                child = _folder_candidate(Path(entry.path))
            elif entry.is_file() and entry.name in KERAS_NPZ_NAMES:
                child = _file_candidate(Path(entry.path))
            else:
                child = None
            if child:
                candidates.append(child)
        return candidates
    except OSError:
        return []


def _file_candidate(path: Path) -> Candidate | None:
    if path.suffix.lower() == ".npz":
        return Candidate("keras-npz", path) if _npz_has_split_keys(path) else None
    match = IDX_NAME.match(path.name)
    if match:  # any file of a set selects that set (the way to pick one EMNIST split)
        return Candidate("torchvision-idx", path.parent, match["split"] or "")
    return None


def _npz_has_split_keys(path: Path) -> bool:
    """Whether the archive's member names are the four Keras arrays (reads the zip directory)."""
    names = npz_member_names(path)
    return all(f"{key}.npy" in names for key in NPZ_KEYS)


def _folder_candidate(folder: Path) -> Candidate | None:
    names = set(os.listdir(folder))

    def has(*files: str) -> bool:  # a FIFO of such a name counts, and is refused on loading
        return all(f in names and not (folder / f).is_dir() for f in files)

    if any(IDX_NAME.match(n) for n in names):
        return Candidate("torchvision-idx", folder)
    raw = folder / "raw"
    if "raw" in names and raw.is_dir() and any(IDX_NAME.match(n) for n in os.listdir(raw)):
        return Candidate("torchvision-idx", raw)
    if has("data_batch_1", "test_batch") or has("train", "test", "meta"):
        return Candidate("cifar-python", folder)
    if has("data_batch_1.bin", "test_batch.bin") or has("train.bin", "test.bin"):
        return Candidate("cifar-binary", folder)
    return None
