"""Where a benchmark writes: the export's rule for output folders, applied to bench runs.

resnet-bench writes only into a folder that is new, empty, or provably an earlier bench run of
ours (nothing in it but bench.json/.csv/.md/.png, and a bench.json that passes the schema), and
replaces an earlier run only with ``--overwrite``. A folder holding anything else (the user's own
``bench.md``, notes, data) is never written into. Default names are claimed with an exclusive
``mkdir`` and carry the process id, so two runs started in the same second get two folders.

Cache folders (``--cache-dir``) must be able to hold files: a pseudo file system (``/proc``,
``/sys``, ...) is refused by name, and anything else by writing a probe file.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from export.core.artifact import enclosing_artifact
from export.core.errors import UserError
from export.core.fileio import make_dirs, remove_dirs

from . import report

DEFAULT_ROOT = Path("artifacts/bench")
#: kernel file systems that hold no user files: writing a cache there fails or means nothing
PSEUDO_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
    "securityfs", "configfs", "pstore", "bpf", "efivarfs", "fusectl", "mqueue", "binfmt_misc",
    "autofs", "rpc_pipefs", "nsfs", "hugetlbfs"})


def check_not_in_artifact(out: Path, option: str = "--out") -> None:
    """A folder we write into may not be (or lie inside) an exported artifact: its files would
    become part of the artifact, which would stop being one."""
    enclosing = enclosing_artifact(out / "bench.json")
    if enclosing is not None:
        raise UserError(f"{option} {out} is inside the artifact folder {enclosing}; what "
                        "resnet-bench writes there would become part of the artifact: choose a "
                        "folder outside it")


def earlier_run(folder: Path) -> str | None:
    """None if ``folder`` is missing or empty; "run" if it is provably an earlier bench run of
    ours; raises :class:`UserError` saying why it is neither (then it is never written into)."""
    if not folder.exists():
        return None
    if folder.is_symlink() or not folder.is_dir():
        raise UserError(f"--out {folder} is not a folder (or is a symbolic link); refused")
    names = {entry.name: entry for entry in os.scandir(folder)}
    if not names:
        return None
    ours = set(report.FILES.values())
    json_name = report.FILES["json"]
    for name, entry in sorted(names.items()):
        foreign = name not in ours or json_name not in names  # no run of ours without its JSON
        if foreign or entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            raise UserError(f"--out {folder} holds {name!r}, which resnet-bench did not write; "
                            "it writes only into a new or empty folder or one of its own "
                            "earlier runs: choose another folder")
    try:
        report.load(folder / report.FILES["json"])
    except ValueError as exc:
        raise UserError(f"--out {folder} holds bench files but no readable bench.json of ours "
                        f"({exc}); choose another folder") from None
    return "run"


def claim_out(out: Path | None, overwrite: bool, prefix: str = "") -> tuple[Path, list[Path]]:
    """The folder to write, created and probed before anything is measured, and the folders
    this call created (removed again if the run ends with nothing to write)."""
    if out is None:
        return _claim_default(prefix)
    check_claimable(out, overwrite)
    return out, probe_folder(out, "--out", "nothing was measured")


def check_claimable(out: Path, overwrite: bool) -> None:
    """Refuse ``out`` unless it is new, empty, or an earlier run of ours and ``overwrite``
    (called again right before writing: the first check saves the work of a run that could
    not be written)."""
    check_not_in_artifact(out)
    if earlier_run(out) == "run" and not overwrite:
        raise UserError(f"--out {out} holds an earlier resnet-bench run; give --overwrite to "
                        "replace it, or choose another folder")


def _claim_default(prefix: str) -> tuple[Path, list[Path]]:
    """artifacts/bench/<prefix><UTC time>-<pid>[-n], made with an exclusive mkdir."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = DEFAULT_ROOT / f"{prefix}{stamp}-{os.getpid()}"
    created = make_dirs(DEFAULT_ROOT) if not DEFAULT_ROOT.is_dir() else []
    for n in range(1, 1000):
        out = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            out.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            remove_dirs(created)
            raise UserError(f"cannot create {out}: {exc.strerror or exc}; nothing was "
                            "measured") from None
        probe_folder(out, "--out", "nothing was measured")
        return out, [out, *created]
    raise UserError(f"cannot find a free folder name beside {base}")


def probe_folder(folder: Path, option: str, consequence: str) -> list[Path]:
    """Create ``folder`` and write (then remove) a probe file in it: a pseudo file system, a
    read-only, full or unwritable folder is one line. Returns the folders created."""
    fs = file_system_type(folder)
    if fs in PSEUDO_FILE_SYSTEMS:
        raise UserError(f"{option} {folder} is on the {fs} pseudo file system, which cannot hold "
                        f"files; {consequence}")
    created: list[Path] = []
    try:
        created = make_dirs(folder)
        fd, probe = tempfile.mkstemp(prefix=".resnet-bench-probe-", dir=folder)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        remove_dirs(created)
        raise UserError(f"cannot write to {option} {folder}: {exc.strerror or exc}; "
                        f"{consequence}") from None
    return created


def file_system_type(path: Path) -> str | None:
    """The type of the file system ``path`` is (or would be) on, from /proc/self/mountinfo;
    None where the system does not say."""
    try:
        resolved = Path(os.path.abspath(path))
        while not resolved.exists() and resolved != resolved.parent:
            resolved = resolved.parent
        resolved = resolved.resolve()
        best, fs = "", None  # type: tuple[str, str | None]
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                mount = fields[4].replace("\\040", " ") if len(fields) > 4 else ""
                inside = str(resolved) == mount or str(resolved).startswith(mount.rstrip("/")
                                                                             + "/")
                if mount and inside and len(mount) >= len(best):
                    words = right.split()
                    best, fs = mount, (words[0] if words else None)
        return fs
    except OSError:
        return None
