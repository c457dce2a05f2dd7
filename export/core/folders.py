"""Output folders: whether an export may write one (only over an artifact that is provably ours,
and of the same weights unless told to overwrite), replacing it atomically, and putting right what
a killed replacement left.

Replacing an artifact folder (the exporter's last step) is :func:`replace_folder`; what a killed
replacement leaves behind is put right by :func:`recover_interrupted`, which every export, verify
and load calls first.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import enclosing_artifact, owned_artifact
from .errors import UserError
from .fileio import exchange_paths, process_alive
from .manifest import FAILED_SUFFIX, STAGING_SUFFIX, Manifest

Echo = Callable[[str], None]

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


# ---------------------------------------------------------------------------------------------
# May an export write this folder?
# ---------------------------------------------------------------------------------------------


def weights_identity(source: dict[str, Any], model: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two artifacts "from the same weights": the file's sha256, or the seed and the
    model description that seeded weights follow from."""
    if source.get("kind") == "seed":
        return ("seed", source.get("seed"), model.get("name"), model.get("num_classes"),
                model.get("in_chans"), model.get("shortcut", "A"),
                model.get("downsample") or "stride")
    return ("file", source.get("sha256"))


def describe_weights(source: dict[str, Any], model: dict[str, Any]) -> str:
    if source.get("kind") == "seed":
        return f"UNTRAINED seeded weights (seed {source.get('seed')}, {model.get('name')})"
    what = "checkpoint" if source.get("kind") == "checkpoint" else "state dict"
    return f"the {what} {source.get('path')} (sha256 {str(source.get('sha256'))[:12]})"


@dataclass
class Target:
    """An output folder of one format and what was found there."""

    out: Path
    previous: Manifest | None = None  # the artifact at ``out`` that this export replaces


def _blocker(out: Path) -> None:
    if out.name in ("", ".", ".."):
        raise UserError(f"--out {out} must name a folder (not . or ..)")
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot write {out}: {blocker} is a file, not a folder")
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link (to {os.readlink(out)}); give the "
                        "folder itself or another name")
    enclosing = enclosing_artifact(out)
    if enclosing is not None:
        raise UserError(f"--out {out} is inside the artifact folder {enclosing}; an artifact "
                        "cannot hold another: choose a folder outside it")


def _replaceable(out: Path, refusal: Callable[[str], str]) -> Manifest | None:
    """The manifest of the artifact at ``out`` if it may be replaced (None: nothing there)."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    try:
        return owned_artifact(out)
    except UserError as exc:
        raise UserError(refusal(str(exc))) from None


def check_out(out: Path, source: dict[str, Any], model: dict[str, Any], overwrite: bool,
              echo: Echo = print) -> Manifest | None:
    """May this export write ``out``? Returns the artifact it would replace, if any.

    Refused, in one line: a file on the way, a symbolic link, a folder inside another artifact,
    a non-empty folder that is not provably one of our artifacts, and - without ``overwrite`` -
    an artifact of other source weights. Leftovers of a killed export are put right first.
    """
    out = Path(out)
    _blocker(out)
    for note in recover_interrupted(out):
        echo(f"note: {note}")
    previous = _replaceable(out, lambda why: (
        f"--out {out} exists and is not an artifact folder ({why}); nothing was changed: "
        "choose another --out or empty it"))
    if previous is not None and not overwrite and \
            weights_identity(previous["source"], previous["model"]) != \
            weights_identity(source, model):
        raise UserError(
            f"--out {out} holds a {previous['model']['name']} {previous['format']} artifact "
            f"exported from {describe_weights(previous['source'], previous['model'])}; this "
            f"export is from {describe_weights(source, model)}: pass --overwrite to replace "
            "it, or choose another --out")
    return previous


def check_failed_slot(out: Path, echo: Echo = print) -> Manifest | None:
    """``--keep-failed`` writes ``<out>.FAILED``: only over a failed artifact of ours."""
    failed = out.with_name(out.name + FAILED_SUFFIX)
    _blocker(failed)
    for note in recover_interrupted(failed):
        echo(f"note: {note}")
    return _replaceable(failed, lambda why: (
        f"--keep-failed would replace {failed}, which is not an artifact folder ({why}); "
        "nothing was changed: move it away or leave out --keep-failed"))
