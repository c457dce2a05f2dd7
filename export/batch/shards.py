"""A shard's output and its commit: exactly once, whatever stops the job.

A shard's predictions go to ``predictions/part-NNNNNN.parquet`` and its unreadable images to
``errors/part-NNNNNN.parquet``; each is written under a temporary name, fsync'ed and renamed
into place, and only then is the marker ``_committed/part-NNNNNN.json`` (the shard's digest and
counts) written the same way. The marker is the commit: a part without a marker is left over
from a job that stopped half-way and is replaced on the rerun; a shard with a marker is never
written again. The output is complete when ``job.json`` says ``"status": "complete"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import UserError
from .sources import Shard

PREDICTIONS = "predictions"
ERRORS = "errors"
COMMITTED = "_committed"
ERROR_SCHEMA = pa.schema([("key", pa.string()), ("error", pa.string()), ("shard", pa.int32())])


@dataclass
class ChunkOutcome:
    """A chunk's logits (row ``i`` is the chunk's item ``ok[i]``) and its unreadable items."""

    ok: list[int]
    logits: np.ndarray
    errors: list[tuple[int, str]]


@dataclass(frozen=True)
class OutputOptions:
    """What a prediction row holds: ``top`` classes, the logits or not, the class names."""

    class_names: Sequence[str]
    top: int = 5
    logits: bool = False

    def schema(self) -> pa.Schema:
        fields = [("key", pa.string()), ("label", pa.string()), ("class", pa.string()),
                  ("probability", pa.float64()), ("top_classes", pa.list_(pa.string())),
                  ("top_probabilities", pa.list_(pa.float64()))]
        if self.logits:
            fields.append(("logits", pa.list_(pa.float32())))
        return pa.schema(fields)


def top_arrays(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`export.predict.predictor.top_k` for a whole shard at once (the same softmax in
    float64, the same stable order: ties go to the lower class), as arrays: class indices and
    probabilities, ``N x k``. A test holds the two equal, value for value."""
    logits = np.asarray(logits, dtype=np.float64)
    k = max(1, min(k, logits.shape[1]))
    if not len(logits):
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k))
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


def folder_label(key: str, class_names: Sequence[str]) -> str | None:
    """The class an image's folder names (the layout resnet-train reads), or None."""
    parent = key.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in key else ""
    return parent if parent in class_names else None


def tables(shard: Shard, outcomes: Sequence[ChunkOutcome], options: OutputOptions
           ) -> tuple[pa.Table, pa.Table]:
    """The shard's predictions and errors tables, rows in listing order (the chunks cover the
    shard's images in order)."""
    rows: dict[int, np.ndarray] = {}
    errors: list[tuple[int, str]] = []
    base = 0
    for outcome in outcomes:
        rows.update((base + i, outcome.logits[n]) for n, i in enumerate(outcome.ok))
        errors += [(base + i, message) for i, message in outcome.errors]
        base += len(outcome.ok) + len(outcome.errors)
    assert base == len(shard.items), f"{shard.name}: {base} outcomes for {len(shard.items)}"
    order = sorted(rows)
    logits = (np.stack([rows[i] for i in order]) if order
              else np.zeros((0, len(options.class_names)), dtype=np.float32))
    index, probs = top_arrays(logits, options.top)
    names = np.asarray(options.class_names, dtype=object)
    keys = [shard.items[i].key for i in order]
    data: dict[str, Any] = {
        "key": keys, "label": [folder_label(k, options.class_names) for k in keys],
        "class": names[index[:, 0]].tolist() if order else [],
        "probability": probs[:, 0] if order else np.zeros(0),
        "top_classes": names[index].tolist(), "top_probabilities": list(probs)}
    if options.logits:
        data["logits"] = [row.astype(np.float32).tolist() for row in logits]
    errors.sort()
    failed = pa.table({"key": [shard.items[i].key for i, _ in errors],
                       "error": [m for _, m in errors],
                       "shard": [shard.index] * len(errors)}, schema=ERROR_SCHEMA)
    return pa.table(data, schema=options.schema()), failed


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, write: Any) -> None:
    """``write(tmp)`` then fsync and rename onto ``path`` (a crash leaves the old name or none)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def commit(out: Path, shard: Shard, predictions: pa.Table, errors: pa.Table) -> dict[str, Any]:
    """Write the shard's parts, then its marker: from here on the shard is done. A write that
    fails (a full disk) is one line; the shard stays uncommitted and the rerun does it."""
    try:
        return _commit(out, shard, predictions, errors)
    except OSError as exc:
        raise UserError(f"cannot write {shard.name} in {out}: {exc.strerror or exc}; rerun the "
                        "same command to continue from the committed shards") from None


def _commit(out: Path, shard: Shard, predictions: pa.Table, errors: pa.Table
            ) -> dict[str, Any]:
    for folder, table in ((PREDICTIONS, predictions), (ERRORS, errors)):
        (out / folder).mkdir(exist_ok=True)
        _write_durably(out / folder / f"{shard.name}.parquet",
                       lambda tmp, t=table: pq.write_table(t, tmp))
    marker = {"shard": shard.index, "digest": shard.digest, "images": len(shard.items),
              "predicted": predictions.num_rows, "errors": errors.num_rows}
    (out / COMMITTED).mkdir(exist_ok=True)
    _write_durably(out / COMMITTED / f"{shard.name}.json",
                   lambda tmp: tmp.write_text(json.dumps(marker) + "\n"))
    return marker


def committed(out: Path, shard: Shard) -> dict[str, Any] | None:
    """The shard's marker, or None if it was never committed."""
    try:
        return dict(json.loads((out / COMMITTED / f"{shard.name}.json").read_text()))
    except FileNotFoundError:
        return None


def markers(out: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every committed shard's name and marker, in shard order."""
    folder = out / COMMITTED
    if folder.is_dir():
        for path in sorted(folder.glob("part-*.json")):
            yield path.stem, json.loads(path.read_text())


def drop_uncommitted(out: Path) -> int:
    """Remove parts a stopped job left without a marker (ours by name: ``part-*.parquet`` in our
    folders, and our temporary files); the number removed."""
    done = {name for name, _ in markers(out)}
    removed = 0
    for folder in (PREDICTIONS, ERRORS, COMMITTED):
        if not (out / folder).is_dir():
            continue
        for path in (out / folder).iterdir():
            stem = path.name.split(".")[0] if not path.name.startswith(".") else ""
            leftover = path.name.startswith(".part-") and path.name.endswith(".tmp")
            if leftover or (path.suffix == ".parquet" and stem.startswith("part-")
                            and stem not in done):
                path.unlink()
                removed += 1
    return removed


def gather_errors(out: Path) -> int:
    """``errors.parquet``: every committed shard's unreadable images, in shard order."""
    tables = [pq.read_table(out / ERRORS / f"{name}.parquet", schema=ERROR_SCHEMA)
              for name, marker in markers(out) if marker["errors"]]
    table = pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()
    _write_durably(out / "errors.parquet", lambda tmp: pq.write_table(table, tmp))
    return table.num_rows
