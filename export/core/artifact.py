"""An artifact folder as every reader sees it: reading its manifest, opening its files safely,
and telling whether a folder is provably one of ours.

The schema is :mod:`export.core.manifest_schema`'s; the runtime's loader, ``verify``, the
benchmark and prediction read artifacts through this module only. Every file an artifact lists
is opened through :func:`artifact_file`, which refuses a path (or a symbolic link) that leads
out of the folder.
Replacing a folder atomically, and recovering from a killed replacement, is :mod:`.folders`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .fileio import sha256_file
from .manifest_schema import (
    KIND,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    check_manifest,
    relative_name,
)

# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def manifest_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder / MANIFEST_NAME if folder.is_dir() or not folder.suffix else folder


def read_manifest(folder: str | Path) -> Manifest:
    """Load and check a manifest; every problem is one :class:`UserError` line.

    ``folder`` is the artifact folder (or its manifest.json). The manifest must be a plain file
    of the folder: a symbolic link that leads elsewhere is refused, as is anything too large to
    be a manifest.
    """
    folder = Path(folder)
    path = manifest_path(folder)
    if not os.path.lexists(path):
        raise UserError(f"no {MANIFEST_NAME} in {folder}: not an artifact folder")
    root = path.parent.resolve()
    resolved = path.resolve()
    if not _inside(resolved, root):
        raise UserError(f"{path} is a link to {resolved}, outside the artifact folder; refused")
    if not resolved.is_file():
        raise UserError(f"{path} is not a regular file: not an artifact folder")
    try:
        if resolved.stat().st_size > MAX_MANIFEST_BYTES:
            raise UserError(f"{path} is {resolved.stat().st_size / 1e6:.0f} MB: too large to be "
                            "an artifact manifest")
        data = json.loads(resolved.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not valid JSON ({reason})") from None
    return check_manifest(data, path)


def artifact_file(folder: str | Path, name: Any) -> Path:
    """The real path of a file an artifact lists, refusing anything that leaves the folder.

    A listed name must be relative and stay inside the folder once every symbolic link is
    resolved (a link to ``/etc/passwd`` or to a file beside the folder is refused), and must be a
    regular file (not a folder, FIFO or device).
    """
    folder = Path(folder)
    if not relative_name(name):
        raise UserError(f"manifest lists {name!r}, which is outside the artifact folder")
    root = folder.resolve()
    path = folder / name
    resolved = path.resolve()
    if not _inside(resolved, root):
        raise UserError(f"{path} is a link to {resolved}, outside the artifact folder; refused")
    if not resolved.is_file():
        what = "missing" if not os.path.lexists(path) else "not a regular file"
        raise UserError(f"{path} is {what} (listed in {MANIFEST_NAME})")
    return resolved


def verify_files(folder: str | Path, manifest: Manifest) -> None:
    """Every listed file exists inside the folder and has the recorded sha256 (tampering,
    truncation or a link out of the folder -> error)."""
    folder = Path(folder)
    for entry in manifest["files"]:
        path = artifact_file(folder, entry["path"])
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise UserError(f"sha256 mismatch for {folder / entry['path']}: {digest[:16]}..., "
                            f"manifest says {entry['sha256'][:16]}... (the file changed after "
                            "export)")


def _onnx_tensors(graph: Any) -> Any:
    """Every TensorProto of a graph: initializers, node attributes, and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Any:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for sub in attr.graphs:
                yield from _onnx_tensors(sub)


def check_onnx_file(folder: str | Path, path: Path, manifest: Manifest) -> Any:
    """An ONNX file of the artifact whose external data (if any) is one of the artifact's own
    listed files: never an absolute path, never outside the folder, never unchecked.

    Checked here rather than left to the runtime: whether ONNX Runtime refuses a ``../``
    location depends on its version. Returns the ModelProto (without external data).
    """
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: a damaged file
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path} is not a readable ONNX file ({text})") from None
    listed = {entry["path"] for entry in manifest["files"]}
    tensors = [*_onnx_tensors(proto.graph),
               *(t for function in proto.functions for t in _node_tensors(function.node))]
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        if not relative_name(location):
            raise UserError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, "
                            "outside the artifact folder; refused")
        resolved = artifact_file(folder, location)
        relative = resolved.relative_to(Path(folder).resolve()).as_posix()
        if relative not in listed:
            raise UserError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, "
                            f"which {MANIFEST_NAME} does not list (so nothing checks it); "
                            "refused")
    return proto


# ---------------------------------------------------------------------------------------------
# Whose folder is it?
# ---------------------------------------------------------------------------------------------


def owned_artifact(folder: str | Path) -> Manifest:
    """The manifest of ``folder`` if the folder is provably an artifact this tool wrote.

    Provably ours: a valid manifest of our schema, and nothing in the folder but the files it
    lists and manifest.json itself, all plain files (no links, no sub-folders). Anything else
    raises :class:`UserError` with the reason: such a folder is never replaced or deleted.
    """
    folder = Path(folder)
    if os.path.islink(folder / MANIFEST_NAME):
        raise UserError(f"its {MANIFEST_NAME} is a symbolic link")
    manifest = read_manifest(folder)
    listed = {entry["path"] for entry in manifest["files"]} | {MANIFEST_NAME}
    for entry in os.scandir(folder):
        if entry.name not in listed:
            raise UserError(f"{entry.name} is not one of its manifest's files")
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            raise UserError(f"{entry.name} is not a plain file")
    return manifest


def enclosing_artifact(path: str | Path) -> Path | None:
    """The nearest folder above ``path`` that holds a resnet-deploy manifest, if any."""
    resolved = Path(path).resolve()
    for parent in resolved.parents:
        candidate = parent / MANIFEST_NAME
        try:
            if not candidate.is_file() or candidate.stat().st_size > MAX_MANIFEST_BYTES:
                continue
            data = json.loads(candidate.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and data.get("kind") == KIND:
            return parent
    return None


