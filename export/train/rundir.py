"""The run folder: where a run goes, whether a folder already holds one, what --resume reads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..core.errors import UserError
from ..core.fileio import make_dirs, remove_dirs
from .config import RUN_FILES, TrainConfig

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not protected from each other
    fcntl = None  # type: ignore[assignment]

MAX_NAME_BYTES = 100  # a default run folder's name (model-data), before any -N suffix
# Held (flock) by the run that writes into the folder, from its start to its end; the kernel
# lets go of it when that process ends, however it ends.
LOCK_NAME = ".resnet-train.lock"


def resolve_run_dir(out: str | os.PathLike | None, config: TrainConfig,
                    overwrite: bool = False, data_name: str | None = None,
                    ignore_claims: bool = False) -> Path:
    """``--out`` as given (refusing to mix runs), or ``artifacts/train/<model>-<data>[-N]``;
    ``<data>`` is ``data_name`` (e.g. "MNIST") if given, else "digits" or the data's stem.
    A default folder that a running training holds is passed over, unless ``ignore_claims``
    (the other ranks of a torchrun job, whose rank 0 holds it)."""
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
    while holds_run(path) or (not ignore_claims and claimed_by(path) is not None):
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


class RunClaim:
    """A run folder held by this process (see :func:`claim_run_dir`); :meth:`release` lets go
    and takes back the folders the claim made if nothing was written into them."""

    def __init__(self, path: Path, fd: int, created: list[Path]):
        self.path, self._fd, self._created = path, fd, created

    @classmethod
    def take(cls, path: Path) -> RunClaim | None:
        """Hold ``path`` (made if missing), or None if another live run holds it."""
        try:
            created = make_dirs(path)
        except OSError as exc:
            raise UserError(f"cannot create the run folder {path}: {exc.strerror or exc}"
                            ) from None
        lock = path / LOCK_NAME
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                remove_dirs(created)
                raise UserError(f"cannot write the run folder {path}: {exc.strerror or exc}"
                                ) from None
            if fcntl is None:
                return cls(path, fd, created)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                remove_dirs(created)
                return None
            try:  # a run that was letting go may have removed the file we locked: lock anew
                if os.path.samestat(os.stat(lock), os.fstat(fd)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:  # the process id, for the message another run gives; the lock is what counts
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        return cls(path, fd, created)

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            (self.path / LOCK_NAME).unlink(missing_ok=True)  # still held: nobody else has it
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1
        remove_dirs(self._created)  # only folders left empty


def claimed_by(path: Path) -> str | None:
    """The process id (as text) of a live run holding ``path``, or None if none holds it."""
    lock = path / LOCK_NAME
    if fcntl is None or not os.path.isfile(lock):
        return None
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


def claim_run_dir(out: str | os.PathLike | None, config: TrainConfig, overwrite: bool = False,
                  data_name: str | None = None) -> RunClaim:
    """:func:`resolve_run_dir`, held from now until the run ends, so that two trainings started
    together never share a folder: the default name moves on to the next free ``-N``, and an
    ``--out`` that another run holds is refused (``--overwrite`` included)."""
    for _ in range(100):
        path = resolve_run_dir(out, config, overwrite, data_name)
        claim = RunClaim.take(path)
        if claim is not None and (overwrite or not holds_run(path)):
            return claim
        if claim is not None:  # a run finished there between the look and the claim
            claim.release()
        if out is not None:
            if claim is None:
                raise UserError(f"{path} is in use by another training run (process "
                                f"{claimed_by(path) or '?'}): wait for it to end, or pick "
                                "another --out")
            raise UserError(f"{path} already holds a training run: continue it with --resume "
                            f"{path}, start again with --overwrite, or pick another --out")
    raise UserError(f"no free run folder next to {path}: remove old runs or give --out")


def claim_resumed(run_dir: Path) -> RunClaim:
    """Hold a run folder for ``--resume``: two resumes of one run would interleave epochs."""
    claim = RunClaim.take(run_dir)
    if claim is None:
        raise UserError(f"{run_dir} is being trained by another run (process "
                        f"{claimed_by(run_dir) or '?'}): wait for it to end")
    return claim
