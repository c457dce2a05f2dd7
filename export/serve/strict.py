"""Strict JSON for requests a hostile client writes: what Python's ``json`` lets through and the
protocol does not.

- ``NaN``, ``Infinity`` and ``-Infinity`` tokens are not JSON: refused (400), never parsed;
- nesting deeper than :data:`MAX_DEPTH` (a 10^5-deep array is a RecursionError inside ``json``)
  is refused before any of it is walked;
- tensor data is numbers only: numeric strings, booleans and ``null`` are refused, as are
  integers that do not fit a float64 (``10**400``) and floats that overflow (``1e400``).
"""

from __future__ import annotations

import json
from itertools import chain
from typing import Any

import numpy as np

#: deepest nesting a request needs: the document, inputs, one input, its 4-D nested data, + room
MAX_DEPTH = 12


class StrictJSONError(ValueError):
    """Not acceptable JSON: the message says why in one line."""


def _constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON number (non-finite values are refused)")


def _depth_ok(text: bytes) -> bool:
    """Cheap upper bound on the nesting of ``text`` (brackets inside strings counted too): true
    when it cannot exceed :data:`MAX_DEPTH`."""
    arr = np.frombuffer(text, dtype=np.uint8)
    if len(arr) == 0:
        return True
    step = ((arr == ord("[")) | (arr == ord("{"))).astype(np.int32)
    step -= ((arr == ord("]")) | (arr == ord("}"))).astype(np.int32)
    return int(np.cumsum(step).max()) <= MAX_DEPTH


def _depth(doc: Any) -> int:
    """The real nesting of a parsed document (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((v, level + 1) for v in (node.values() if isinstance(node, dict)
                                                  else node))
    return deepest


def loads(text: bytes) -> Any:
    """``json.loads`` without non-finite constants and with bounded nesting."""
    try:
        doc = json.loads(text, parse_constant=_constant)
    except RecursionError:
        raise StrictJSONError(f"nesting deeper than {MAX_DEPTH} levels") from None
    if not _depth_ok(text) and _depth(doc) > MAX_DEPTH:
        raise StrictJSONError(f"nesting deeper than {MAX_DEPTH} levels")
    return doc


def numbers(data: Any, dtype: np.dtype) -> np.ndarray:
    """A (nested) list of JSON numbers -> a flat array of ``dtype``; anything else (strings,
    booleans, null, objects, ragged nesting, out-of-range values) raises StrictJSONError."""
    level: list[Any] = data if isinstance(data, list) else [data]
    while level and type(level[0]) is list:
        if set(map(type, level)) != {list}:
            raise StrictJSONError("data mixes lists and numbers")
        level = list(chain.from_iterable(level))
    kinds = set(map(type, level))
    if not kinds <= {int, float}:
        bad = sorted(k.__name__ for k in kinds - {int, float})
        names = {"str": "strings", "bool": "booleans", "NoneType": "nulls", "dict": "objects",
                 "list": "lists"}
        raise StrictJSONError("data holds " + ", ".join(names.get(b, b) for b in bad)
                              + "; tensor data must be JSON numbers")
    try:
        arr = np.asarray(level, dtype=np.float64 if dtype.kind == "f" else dtype)
    except OverflowError:
        raise StrictJSONError(f"a value is out of range for {dtype}") from None
    if dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise StrictJSONError("a value is out of range (overflows to infinity)")
        big = float(np.finfo(dtype).max)
        if arr.size and float(np.abs(arr).max()) > big:
            raise StrictJSONError(f"a value is out of range for {dtype} (|x| > {big:.4g})")
        arr = arr.astype(dtype)
    elif float in kinds:
        raise StrictJSONError(f"{dtype} data must be integers")
    return arr


__all__ = ["MAX_DEPTH", "StrictJSONError", "loads", "numbers"]
