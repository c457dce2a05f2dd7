"""CIFAR's Python pickles, read as the untrusted files they are.

A pickle is a program. This reader runs only the few numpy constructors CIFAR's batches need
(never a callable the file chooses), guards those against building arrays without their bytes,
and then bounds what was built before anything walks it: a pickle can share one list through
its memo so that 40 nested levels stand for 2^40 leaves in a file of a few hundred bytes (a
"billion laughs"), which ``numpy.asarray`` would then try to walk for hours.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError, first_line
from ..core.fileio import open_regular

# CIFAR's batches are dicts of lists of numbers and bytes: two levels deep.
MAX_DEPTH = 8
# Each element of a tree needs at least one opcode byte, so a tree larger than its file shares
# subtrees through the memo; the absolute cap keeps the walk short (CIFAR-100's training file,
# the largest, holds about 150,000 elements).
MAX_ELEMENTS = 4_000_000
_NUMERIC = "biuf"


def load_pickle(path: Path, limit: int) -> Any:
    """The object pickled in ``path`` (at most ``limit`` bytes), its tree checked and bounded."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise UserError(f"{path}: {size} bytes, over the {limit}-byte limit for a "
                                "CIFAR batch")
            # From memory: a length field claiming 2^60 bytes then reads what is there, where a
            # file object would be asked to allocate it first.
            data = f.read()
        obj = _CifarUnpickler(io.BytesIO(data), path).load()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle raises anything, EOFError..
        raise UserError(f"{path}: not a readable CIFAR batch ({first_line(exc)})") from None
    _check_tree(obj, path, min(len(data) + 64, MAX_ELEMENTS))
    return obj


def _check_tree(obj: Any, path: Path, budget: int) -> None:
    """Walk ``obj`` without recursion, refusing depth, size or types a CIFAR file never has."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > budget:
            raise UserError(f"{path}: its lists expand to more than {budget} elements, more "
                            "than the file holds (shared references in a pickle bomb); not a "
                            "CIFAR batch")
        if depth > MAX_DEPTH:
            raise UserError(f"{path}: nested more than {MAX_DEPTH} levels deep; a CIFAR batch "
                            "is a dict of lists")
        if isinstance(item, (list, tuple)):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            for key, value in item.items():
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(item, (np.ndarray, np.generic)):
            if item.dtype.kind not in _NUMERIC:
                raise UserError(f"{path}: holds a {item.dtype} array; a CIFAR batch holds "
                                "numbers")
        elif not isinstance(item, (bytes, str, int, float, type(None), np.dtype)):
            raise UserError(f"{path}: holds a {type(item).__name__}; a CIFAR batch holds "
                            "arrays, lists, numbers and text")


class _NoBareArrays:
    """Stands for ``numpy.ndarray`` in a pickle: ``_reconstruct`` may name the type, but
    calling it would make an array of uninitialised memory, as large as the file asks."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UserError("builds a numpy array from a shape alone, with no pixel bytes "
                        "(uninitialised memory)")


_NDARRAY = _NoBareArrays()


def _numpy_parts() -> tuple[Any, Any]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    return multiarray, numeric


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` as every numpy pickle calls it: an empty array of shape (0,)
    whose bytes the next opcode sets. Any other shape would be uninitialised memory."""
    if subtype is not _NDARRAY or not isinstance(shape, tuple) or math.prod(
            int(d) if isinstance(d, int) else 1 for d in shape) != 0:
        raise UserError(f"builds a numpy array of shape {shape!r} with no pixel bytes "
                        "(uninitialised memory)")
    return _numpy_parts()[0]._reconstruct(np.ndarray, shape, dtype)


def _scalar(dtype: Any, *args: Any) -> Any:
    """A numpy number (labels re-saved from numpy arrays); numbers only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC:
        raise UserError(f"builds a numpy scalar of type {dtype!r}; a CIFAR batch holds numbers")
    return _numpy_parts()[0].scalar(dtype, *args)


def _dtype(*args: Any) -> np.dtype:
    made = np.dtype(*args)
    if made.kind not in _NUMERIC:
        raise UserError(f"names the numpy type {made}; a CIFAR batch holds numbers")
    return made


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (bytes stored as latin-1 text); only that."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1"):
        raise ValueError(f"unexpected codec {encoding!r}")
    return text.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What CIFAR's pickles (Python 2 originals, or re-saved by Python 3) may name, and nothing
    else; none of them runs code that the file chooses or allocates more than the file holds."""
    _, numeric = _numpy_parts()
    objects: dict[str, Any] = {"multiarray._reconstruct": _reconstruct, "ndarray": _NDARRAY,
                               "dtype": _dtype, "multiarray.scalar": _scalar}
    if hasattr(numeric, "_frombuffer"):  # protocol-5 pickles of arrays: sized by their bytes
        objects["numeric._frombuffer"] = numeric._frombuffer
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    for qualified, obj in objects.items():
        module, _, name = qualified.rpartition(".")
        for prefix in ("numpy.core", "numpy._core") if module else ("numpy",):
            allowed[(f"{prefix}.{module}" if module else prefix, name)] = obj
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :func:`_allowed_globals` and refuses everything else.

    Refusing in ``find_class`` means a hostile file's callable is never even imported, let alone
    called: pickle looks up a global before it can reduce with it.
    """

    def __init__(self, file: Any, path: Path):
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

    def load(self) -> Any:
        try:
            return super().load()
        except UserError as exc:
            text = str(exc)
            if text.startswith(str(self._path)):
                raise
            raise UserError(f"{self._path}: {text}") from None
