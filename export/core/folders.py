"""Replacing an artifact folder atomically, and putting right what a killed replacement left.

Replacing an artifact folder (the exporter's last step) is :func:`replace_folder`; what a killed
replacement leaves behind is put right by :func:`recover_interrupted`, which every export, verify
and load calls first.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .artifact import owned_artifact
from .errors import UserError
from .fileio import exchange_paths, process_alive
from .manifest import STAGING_SUFFIX

# ---------------------------------------------------------------------------------------------
# Replacing a folder, and putting right what a killed replacement left
# ---------------------------------------------------------------------------------------------


def staging_prefix(out: Path) -> str:
    """``.<name>.<pid>-``: the staging folder's name says which process is writing it."""
    return f".{out.name}.{os.getpid()}-"


def _replaced_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.replaced-{os.getpid()}")


def _leftover(entry_name: str, out_name: str) -> tuple[str, int] | None:
    """("partial" | "replaced", pid) for a leftover of an export to ``out_name``, else None."""
    head = f".{out_name}."
    if not entry_name.startswith(head):
        return None
    rest = entry_name[len(head):]
    match = re.fullmatch(r"replaced-(\d+)", rest)
    if match:
        return "replaced", int(match.group(1))
    match = re.fullmatch(r"(\d+)-[A-Za-z0-9_]+" + re.escape(STAGING_SUFFIX), rest)
    if match:
        return "partial", int(match.group(1))
    return None


def recover_interrupted(out: str | Path) -> list[str]:
    """Put right what a killed export left beside ``out``; returns what was done, in words.

    Only leftovers of processes that are no longer running are touched (another export may be
    writing right now):

    - ``.<out>.replaced-<pid>``, the previous artifact moved aside by a replacement that could
      not swap the folders in one step: renamed back to ``out`` if ``out`` is missing (the
      replacement was killed half-way), else deleted (it was killed after the new one was in);
    - ``.<out>.<pid>-XXXX.partial``, a staging folder: deleted.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    notes: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return notes
    for entry in entries:
        found = _leftover(entry.name, out.name)
        if found is None or not entry.is_dir(follow_symlinks=False):
            continue
        kind, pid = found
        if process_alive(pid):
            continue
        path = Path(entry.path)
        try:
            if kind == "replaced" and not os.path.lexists(out):
                os.replace(path, out)
                notes.append(f"restored {out} from an export that was interrupted while "
                             "replacing it")
            elif kind == "replaced":
                owned_artifact(path)  # only ever delete what is provably an artifact
                shutil.rmtree(path)
                notes.append(f"removed {path.name}, left by an interrupted export")
            else:
                shutil.rmtree(path)
                notes.append(f"removed {path.name}, left by an interrupted export")
        except (OSError, UserError):
            continue
    return notes


def replace_folder(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` folder to ``out``; a folder at ``out`` is replaced.

    Where the system can swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``),
    ``out`` always names a complete folder: the old one until the swap, the new one after, and
    the old one is deleted from the staging name. Elsewhere it takes two renames (``out`` aside
    to ``.<out>.replaced-<pid>``, staging to ``out``); a failure between them renames the old one
    back, and a kill between them is put right by :func:`recover_interrupted` at the next
    export, verify or load.
    """
    if not os.path.lexists(out):
        os.rename(staging, out)
        return
    if exchange_paths(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous folder
        return
    old = _replaced_name(out)
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
