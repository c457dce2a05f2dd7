"""The files of the dataset layouts, one at a time: idx files and CIFAR's batches.

Every file is untrusted input: the parsers check sizes against headers before allocating,
CIFAR's pickles go through :mod:`.pickles`, and anything wrong is one :class:`UserError` line
that names the file. :mod:`.layouts` finds the files and puts a dataset together from them.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..core.fileio import open_regular
from .pickles import load_pickle

# No dataset in these layouts comes near this; a header that claims more is corrupt or hostile,
# and refusing it before allocating keeps a 100-byte file from asking for terabytes.
MAX_ARRAY_BYTES = 2 ** 31

# Datasets without known class names get "0".."K-1" from their largest label; named ones hold
# no more names than this either.
MAX_UNNAMED_CLASSES = 100_000

CIFAR_IMAGE_BYTES = 3 * 32 * 32


# -- idx --------------------------------------------------------------------------------------


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One idx file as a uint8 array, its header checked against its length before reading on."""
    compressed = path.name.endswith(".gz")
    try:
        with open_regular(path) as raw, (gzip.GzipFile(fileobj=raw, mode="rb") if compressed
                                          else raw) as f:
            size = None if compressed else os.fstat(raw.fileno()).st_size
            return _read_idx_stream(f, path, ndim, size)
    except UserError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        what = "decompress" if compressed else "read"
        raise UserError(f"{path}: cannot {what} it ({exc})") from None


def _read_idx_stream(f: gzip.GzipFile | io.BufferedReader, path: Path, ndim: int,
                     file_size: int | None) -> np.ndarray:
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


def unpickle(path: Path) -> dict:
    obj = load_pickle(path, MAX_ARRAY_BYTES)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, a CIFAR batch is a dict")
    return obj


def entry(batch: dict, key: str, path: Path) -> Any:
    """``batch[key]`` whether the keys are bytes (the Python 2 originals) or str (re-saved)."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    keys = ", ".join(k.decode(errors="replace") if isinstance(k, bytes) else str(k)
                     for k in batch)
    raise UserError(f"{path}: no '{key}' entry (found: {keys or 'none'})")


def cifar_python_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle(path)
    data, labels = entry(batch, "data", path), entry(batch, label_key, path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == CIFAR_IMAGE_BYTES):
        what = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise UserError(f"{path}: 'data' must be a uint8 array of N x {CIFAR_IMAGE_BYTES} "
                        f"pixels, got a {what}")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError):
        y = np.asarray([None])
    if y.ndim != 1 or len(y) != len(data) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: '{label_key}' must be {len(data)} integer labels, one per "
                        f"image, got {y.dtype} of shape {y.shape}")
    return cifar_hwc(data), y.astype(np.int64)


def cifar_hwc(records: np.ndarray) -> np.ndarray:
    """CIFAR's 3072 bytes per image (all red, then green, then blue) as N x 32 x 32 x 3."""
    return records.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def label_names(value: Any, path: Path, key: str) -> list[str]:
    """CIFAR's class names: a list of text (bytes in the originals), nothing else."""
    if not (isinstance(value, (list, tuple)) and value
            and all(isinstance(v, (bytes, str)) for v in value)):
        odd = (next(v for v in value if not isinstance(v, (bytes, str)))
               if isinstance(value, (list, tuple)) and value else None)
        got = (f"a list holding {type(odd).__name__}"
               if isinstance(value, (list, tuple)) and value else
               "an empty list" if isinstance(value, (list, tuple)) else type(value).__name__)
        raise UserError(f"{path}: '{key}' must be a list of class names (text), got {got}")
    if len(value) > MAX_UNNAMED_CLASSES:
        raise UserError(f"{path}: '{key}' holds {len(value)} class names, over the "
                        f"{MAX_UNNAMED_CLASSES} this reader accepts")
    return [_text(v) for v in value]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# -- CIFAR, binary records --------------------------------------------------------------------


def cifar_binary_batch(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + CIFAR_IMAGE_BYTES
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0 or size % record or size > MAX_ARRAY_BYTES:
                raise UserError(
                    f"{path}: {size} bytes is not a whole number of {record}-byte CIFAR "
                    f"records ({size // record} records and {size % record} bytes over)"
                    if size <= MAX_ARRAY_BYTES else
                    f"{path}: {size} bytes, over the {MAX_ARRAY_BYTES}-byte limit")
            raw = np.fromfile(f, dtype=np.uint8, count=size)
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc})") from None
    if raw.size != size:
        raise UserError(f"{path}: read {raw.size} of {size} bytes")
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)
    return cifar_hwc(rows[:, label_bytes:]), labels
