"""``--artifacts DIR``: every artifact folder below DIR, at any depth, and what was left out.

An artifact folder is one holding manifest.json; its own sub-folders are never searched (they
are part of it). A plan folder keeps its artifacts two levels down (``plan/<name>/artifacts/
onnx-int8``, ``plan/<name>/chosen``), so a fixed depth would miss them. Hidden folders and
links to folders are not entered; those holding a manifest are named with the reason, so no
artifact is skipped silently (an export's own staging and leftovers, never artifacts, excepted).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from export.core.errors import UserError
from export.core.manifest import STAGING_SUFFIX

MANIFEST = "manifest.json"
HIDDEN = "a hidden folder: not entered (hidden folders hold exports in progress or leftovers)"
#: an export's own staging (``.<name>.<pid>-<x>.partial``) and the previous artifact moved aside
#: (``.<name>.replaced-<pid>``): never artifacts, passed over without a line
OURS = re.compile(r"\..+\.(\d+-[A-Za-z0-9_]+" + re.escape(STAGING_SUFFIX) + r"|replaced-\d+)")
LINK = "a symbolic link to a folder (not followed: it may lead out of the tree)"


def discover(root: Path, required: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(every manifest.json of an artifact folder under ``root``, sorted; the folders holding a
    manifest that were not entered, each with why). ``required``: none found is one error line
    naming what was left out."""
    found, skipped = _walk(Path(root))
    if required and not found:
        raise UserError(f"no manifest.json in {root} or its sub-folders"
                        + "".join(f"; {folder}: {why}" for folder, why in skipped))
    return found, skipped


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    if not root.is_dir():
        raise UserError(f"--artifacts {root}: not a folder")
    if (root / MANIFEST).is_file():
        return [root / MANIFEST], []
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):  # links to folders are not followed
        here = Path(dirpath)
        if here != root and MANIFEST in filenames:
            found.append(here / MANIFEST)
            dirnames[:] = []  # an artifact's own sub-folders are part of it
            continue
        kept = []
        for name in sorted(dirnames):
            path = here / name
            why = LINK if path.is_symlink() else HIDDEN if name.startswith(".") else None
            if why is None:
                kept.append(name)
            elif not OURS.fullmatch(name) and _holds_manifest(path):
                skipped.append((path, why))
        dirnames[:] = kept
    return sorted(found), skipped


def _holds_manifest(folder: Path) -> bool:
    try:
        return (folder / MANIFEST).is_file() or next(folder.rglob(MANIFEST), None) is not None
    except OSError:
        return False


def find_manifests(root: Path) -> list[Path]:
    """``root/manifest.json``, else every artifact's manifest.json below ``root``."""
    return discover(root)[0]


__all__ = ["discover", "find_manifests"]
