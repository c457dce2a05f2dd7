"""The one reader of ``.npz`` archives, for the user's ``x``/``y`` files and Keras's datasets.

An archive is untrusted input. Each member is checked from its ``.npy`` header before any of it
is read: a NumPy array (not raw bytes, not a pickle, not object arrays), a header whose size
agrees with the member's own length in the zip directory (a header claiming 10^12 images with
no data behind it), under a byte limit where the caller has one and within the memory there
is. The data is then read into one buffer of exactly the declared size, so a zip bomb can
never decompress more than its header admitted to.
"""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from ..core.errors import UserError, first_line
from ..core.fileio import open_regular
from ..core.hardware import check_memory

NPY_MAGIC = b"\x93NUMPY"
_READ_CHUNK = 1 << 24


class NpzArchive:
    """An open ``.npz`` file: its member names and :meth:`array` to read one checked array."""

    def __init__(self, path: Path, archive: zipfile.ZipFile):
        self.path = path
        self._zip = archive
        self.names = set(archive.namelist())

    def has(self, key: str) -> bool:
        return f"{key}.npy" in self.names

    def keys(self) -> list[str]:
        return sorted(n[:-4] for n in self.names if n.endswith(".npy"))

    def dtype(self, key: str) -> np.dtype:
        """Member ``key``'s dtype, from its header alone."""
        with self._zip.open(self._member(key)) as fh:
            return _header(fh, self.path, key)[2]

    def _member(self, key: str) -> zipfile.ZipInfo:
        name = f"{key}.npy"
        if name not in self.names:
            raise UserError(f"{self.path}: {key} is not a NumPy array (the archive member has "
                            "no .npy name); save the arrays with numpy.savez")
        return self._zip.getinfo(name)

    def array(self, key: str, limit: int | None = None, copies: int = 1) -> np.ndarray:
        """Member ``key`` as an array, refused from its header if it is not a plain numeric or
        string array, its size disagrees with the archive, it is over ``limit`` bytes, or
        ``copies`` of it do not fit in memory."""
        path, info = self.path, self._member(key)
        with self._zip.open(info) as fh:
            shape, fortran, dtype = _header(fh, path, key)
            need = math.prod(shape) * dtype.itemsize
            held = info.file_size - fh.tell()
            declared = f"{' x '.join(map(str, shape)) or 'scalar'} {dtype}"
            if held != need:
                raise UserError(f"{path}: {key} declares {declared} ({need} bytes) but the "
                                f"archive holds {held} bytes of it: truncated or corrupt")
            if limit is not None and need > limit:
                raise UserError(f"{path}: {key} ({declared}) is {need} bytes, over the "
                                f"{limit}-byte limit for this kind of dataset")
            check_memory(need * copies, f"{path}: {key} ({declared})")
            buf = bytearray(need)
            view, got = memoryview(buf), 0
            while got < need:
                block = fh.read(min(_READ_CHUNK, need - got))
                if not block:
                    raise UserError(f"{path}: {key} ends after {got} of {need} bytes: truncated")
                view[got:got + len(block)] = block
                got += len(block)
            fh.read(1)  # at the end of the member: zipfile checks its CRC here
        flat = np.frombuffer(buf, dtype=dtype)
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _header(fh: IO[bytes], path: Path, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The member's shape, order and dtype, refusing what is not a plain array."""
    version = np.lib.format.read_magic(fh)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read(fh)
    if dtype.hasobject:
        raise UserError(f"{path}: {key} holds Python objects (an object array), which are "
                        "never unpickled; store numbers or strings")
    if dtype.itemsize == 0:
        raise UserError(f"{path}: {key} holds zero-byte {dtype} values; store numbers or "
                        "strings")
    return tuple(int(d) for d in shape), bool(fortran), dtype


@contextlib.contextmanager
def open_npz(path: str | os.PathLike) -> Iterator[NpzArchive]:
    """An ``.npz`` archive opened for :meth:`NpzArchive.array`; any damage is one UserError."""
    path = Path(path)
    try:
        with open_regular(path) as fh:
            if fh.read(len(NPY_MAGIC)) == NPY_MAGIC:
                raise UserError(f"{path} is not an .npz archive (it holds a single array): "
                                "save the arrays together with numpy.savez")
            fh.seek(0)
            if not zipfile.is_zipfile(fh):
                raise UserError(f"cannot read {path} as an .npz file (not a zip archive: cut "
                                "short, or another kind of file)")
            with zipfile.ZipFile(fh) as archive:
                yield NpzArchive(path, archive)
    except UserError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, NotImplementedError,
            RuntimeError, zipfile.BadZipFile, zlib.error) as exc:
        # a broken archive or member raises zipfile, zlib, numpy or I/O errors
        raise UserError(f"cannot read {path} as an .npz file ({first_line(exc)})") from None


def npz_member_names(path: str | os.PathLike) -> set[str]:
    """The archive's member names (its zip directory only), or an empty set if it is none."""
    try:
        with open_regular(path) as fh, zipfile.ZipFile(fh) as archive:
            return set(archive.namelist())
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UserError):
        return set()
