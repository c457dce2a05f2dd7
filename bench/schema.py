"""The bench.json schema, checked in one place before anything reads a document.

``resnet-bench report`` reads files a user may have edited, truncated or replaced: every key a
reader uses (the Markdown, CSV and PNG writers, the merge, the speed-ups) is typed here, as a
JSON Schema checked with the ``jsonschema`` library, so a damaged document is one line naming
the key, never a traceback deep in a writer. The file itself is read only if it is a regular file
of sensible size (a FIFO would block, ``/dev/zero`` never ends), and JSON's non-standard
``NaN``/``Infinity`` are refused while parsing: a latency is a finite number.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

SCHEMA = "resnet-bench"
SCHEMA_VERSION = 1
#: a bench.json is tens of kB per run; a merged report of a hundred runs stays far below this
MAX_BYTES = 64 << 20

_STR = {"type": "string"}
_STR_OR_NULL = {"type": ["string", "null"]}
_BOOL_OR_NULL = {"type": ["boolean", "null"]}
_COUNT = {"type": "integer", "minimum": 1, "maximum": 1 << 40}
_COUNT_OR_NULL = {"type": ["integer", "null"], "minimum": 0, "maximum": 1 << 40}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_NONNEG = {"type": "number", "minimum": 0}
_NONNEG_OR_NULL = {"type": ["number", "null"], "minimum": 0}
_NUMBERS = {"type": ["array", "null"], "items": _NONNEG}
_STRINGS = {"type": ["array", "null"], "items": _STR}

ROW = {
    "type": "object",
    "required": ["backend", "precision", "batch_size", "device", "timing", "p50_ms",
                 "throughput_ips"],
    "properties": {
        "backend": _STR, "precision": _STR, "device": _STR, "timing": _STR,
        "batch_size": _COUNT, "p50_ms": _POSITIVE, "throughput_ips": _NONNEG,
        "label": _STR_OR_NULL, "model": _STR_OR_NULL, "model_label": _STR_OR_NULL,
        "effective_precision": _STR_OR_NULL, "note": _STR_OR_NULL, "artifact": _STR_OR_NULL,
        "input_shape": {"type": "array", "minItems": 4, "maxItems": 4, "items": _COUNT},
        "cuda_graphs": _BOOL_OR_NULL, "channels_last": _BOOL_OR_NULL,
        "warmup_steady": _BOOL_OR_NULL, "noisy": _BOOL_OR_NULL, "complete": _BOOL_OR_NULL,
        "iterations": _COUNT_OR_NULL, "rounds": _COUNT_OR_NULL, "threads": _COUNT_OR_NULL,
        **{key: _NONNEG_OR_NULL for key in (
            "min_ms", "mean_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "std_ms", "cv",
            "gflops", "setup_s", "export_s", "first_infer_ms", "wall_s", "warmup_s",
            "round_spread", "speedup_vs_torch", "speedup_vs_torch_rounds")},
        "round_p50_ms": _NUMBERS, "speedup_vs_torch_rounds_iqr": _NUMBERS,
        "flags": _STRINGS, "flag_reasons": _STRINGS, "noise_reasons": _STRINGS,
        "round_group": {"type": ["string", "integer", "null"]},
    },
}

SKIP = {
    "type": "object",
    "required": ["backend", "reason"],
    "properties": {"backend": _STR, "reason": {"type": "string", "minLength": 1},
                   "precision": _STR_OR_NULL, "batch_size": _COUNT_OR_NULL,
                   "artifact": _STR_OR_NULL},
}

_OBJECT_OR_NULL = {"type": ["object", "null"]}
ENVIRONMENT = {
    "type": "object",
    "properties": {"cpu": {"type": "object", "properties": {"isa": _OBJECT_OR_NULL}},
                   "versions": {"type": "object"}, "threads": {"type": "object"},
                   "gpu": _OBJECT_OR_NULL},
}

_TIMING = {
    "type": "object",
    "required": ["warmup_iters", "warmup_time", "min_iters", "min_time"],
    "properties": {key: _NONNEG for key in (
        "warmup_iters", "warmup_time", "min_iters", "min_time", "steady_window", "steady_tol",
        "warmup_max_time", "rounds", "round_warmup", "round_warmup_max", "switch_pause")},
}
_NOISE_RULE = {"type": "object", "required": ["cv_max", "tail_max"],
               "properties": {key: _NONNEG for key in (
                   "cv_max", "tail_max", "rounds_max", "busy_others")}}
CONFIG = {
    "type": "object",
    "properties": {"model": _OBJECT_OR_NULL, "timing": _TIMING, "noise_rule": _NOISE_RULE},
    "dependentRequired": {"timing": ["noise_rule"]},
}

DOCUMENT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "schema_version", "environment", "config", "results", "skipped",
                 "interrupted"],
    "properties": {
        "schema": {"const": SCHEMA}, "schema_version": {"const": SCHEMA_VERSION},
        "created": _STR_OR_NULL, "interrupted": {"type": "boolean"},
        "environment": ENVIRONMENT, "config": CONFIG,
        "results": {"type": "array", "items": ROW}, "skipped": {"type": "array", "items": SKIP},
    },
}


def _where(error: Any) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path]
    return "".join(parts).lstrip(".") or "the document"


def check_document(doc: Any) -> None:
    """Raise ValueError (one line naming the key) if ``doc`` is not a bench document this code
    reads. The first error by position in the document is the one reported."""
    from jsonschema import Draft202012Validator

    if not isinstance(doc, dict):
        raise ValueError(f"not a {SCHEMA} document (a JSON {type(doc).__name__}, not an object)")
    if doc.get("schema") == SCHEMA and doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"not a {SCHEMA} v{SCHEMA_VERSION} document (schema_version "
                         f"{doc.get('schema_version')!r}); this release reads {SCHEMA_VERSION}")
    errors = sorted(Draft202012Validator(DOCUMENT).iter_errors(doc),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        error = errors[0]
        message = error.message if len(error.message) <= 120 else error.message[:117] + "..."
        raise ValueError(f"bench document: {_where(error)}: {message}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows (latencies are finite)")


def read_document(path: Path) -> dict[str, Any]:
    """Read and check one bench.json; every problem is a ValueError of one line (the caller
    adds nothing but the exit)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file (a FIFO, device or socket is never "
                         "read)")
    if info.st_size > MAX_BYTES:
        raise ValueError(f"{path} is {info.st_size / 2**20:.0f} MiB: too large to be a bench "
                         f"document (at most {MAX_BYTES >> 20} MiB)")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ValueError(f"more than {MAX_BYTES >> 20} MiB")
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a bench document") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path} is not a readable bench document ({reason})") from None
    try:
        check_document(doc)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a bench document") from None
    return doc


def model_key(row: dict[str, Any]) -> str:
    """The model a row measured (name, input, channels, classes): one baseline and one report
    section per distinct model."""
    if row.get("model_label"):
        return row["model_label"]
    shape = row.get("input_shape") or [None, "?", "?", "?"]
    return f"{row.get('model')} {shape[2]}x{shape[3]}x{shape[1]}"
