"""Atomic writes and file hashes: a failed or interrupted step never leaves a good-looking file."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import NotRegularFile

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_regular(path: str | os.PathLike) -> io.BufferedReader:
    """``open(path, "rb")`` for a regular file only; anything else is :class:`NotRegularFile`.

    The file is opened without blocking and then checked through its own descriptor, so a FIFO
    never blocks the reader and a file swapped for a FIFO after a check cannot slip through.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise NotRegularFile(f"{os.fspath(path)} is {kind}, not a regular file: refusing "
                                 "to read it")
        if nonblock:
            os.set_blocking(fd, True)
        raw = io.FileIO(fd, "rb")
        raw.name = os.fspath(path)  # messages name the file, not the fd
        return io.BufferedReader(raw)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes files owner-only; give them the usual mode
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2: Any = None


def _load_renameat2() -> Any:
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
            except (OSError, AttributeError):
                return False
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
    return _renameat2


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot.

    Linux ``renameat2(RENAME_EXCHANGE)`` (3.15+, on ext4, XFS, Btrfs, tmpfs and most local file
    systems): at no moment is either name missing. Other systems, and file systems that do not
    support it, answer False and the caller falls back to two renames.
    """
    fn = _load_renameat2()
    if not fn:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False  # not supported here (EPERM: some FUSE and overlay file systems)
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (unknown counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or we cannot tell: leave its files alone
    return True


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p that remembers what it created, so a failure can take it back."""
    created: list[Path] = []
    try:
        for parent in reversed([path, *path.parents]):
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
    except BaseException:  # half-way: take back what was made
        remove_dirs(created)
        raise
    return created


def remove_dirs(created: list[Path]) -> None:
    """Take back the folders :func:`make_dirs` created, innermost first, stopping at one in use."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            break
