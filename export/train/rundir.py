"""The run folder: where a run goes, whether a folder already holds one, what --resume reads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..core.errors import UserError
from .config import RUN_FILES, TrainConfig

MAX_NAME_BYTES = 100  # a default run folder's name (model-data), before any -N suffix


def resolve_run_dir(out: str | os.PathLike | None, config: TrainConfig,
                    overwrite: bool = False, data_name: str | None = None) -> Path:
    """``--out`` as given (refusing to mix runs), or ``artifacts/train/<model>-<data>[-N]``;
    ``<data>`` is ``data_name`` (e.g. "MNIST") if given, else "digits" or the data's stem."""
    if out is not None:
        path = Path(out)
        check_creatable(path)
        if holds_run(path) and not overwrite:
            raise UserError(f"{path} already holds a training run: continue it with --resume "
                            f"{path}, start again with --overwrite, or pick another --out")
        return path
    data = data_name or ("digits" if config.data is None else Path(config.data).stem)
    base = Path("artifacts") / "train" / folder_name(f"{config.model}-{data}")
    path, n = base, 1
    while holds_run(path):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    check_creatable(path)
    return path


def check_creatable(path: Path) -> None:
    """Refuse, before any data is read, a run folder that cannot be made or written: one that
    is a file (or a FIFO...), one under a file, or one on a read-only file system. (Running out
    of space, or permissions a superuser ignores, show at the first write, still before
    training.)"""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"cannot use {path} as the run folder: it exists and is not a folder")
    for name in path.parts:
        if len(os.fsencode(name)) > 255:
            raise UserError(f"cannot create the run folder {path}: a name in it is longer "
                            "than the 255 bytes file systems allow")
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing == Path(""):
        existing = Path(".")
    if not os.path.isdir(existing):
        raise UserError(f"cannot create the run folder {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create the run folder {path}: {existing} is not writable")


def folder_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """``name`` as one safe folder name: non-printable characters become ``_``, and a name over
    ``limit`` bytes is cut and given a hash of the whole, so that long names stay distinct and
    the ``-2``, ``-3`` suffixes still fit under the file system's 255-byte limit."""
    safe = "".join(c if c.isprintable() and c not in "/\\" else "_" for c in name)
    if len(safe.encode()) <= limit:
        return safe
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    head = safe.encode()[:limit - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def holds_run(path: Path) -> bool:
    """A folder holds a run once it has a checkpoint or a summary, or a log with an epoch in
    it. An empty log alone is what a run that failed before its first epoch leaves: the
    folder is free again."""
    if any(os.path.exists(path / name) for name in RUN_FILES):
        return True
    try:
        return os.path.getsize(path / "metrics.jsonl") > 0
    except OSError:
        return False


def resume_checkpoint_path(resume: str | os.PathLike) -> Path:
    """``--resume`` takes a run folder or its ``last.pt``."""
    path = Path(resume)
    if os.path.isdir(path):
        folder, path = path, path / "last.pt"
        if not os.path.exists(path):
            if holds_run(folder):  # best.pt or summary.json without last.pt
                raise UserError(f"nothing to resume: {folder} holds no last.pt (the run "
                                "stopped before saving one); start a new run there with "
                                f"--out {folder} --overwrite, or pick another --out")
            raise UserError(f"nothing to resume: {folder} holds no last.pt (no epoch of a run "
                            f"finished there); start a new run with --out {folder}")
    if not os.path.exists(path):
        raise UserError(f"nothing to resume: {path} not found")
    return path
