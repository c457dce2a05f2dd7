"""Which images are the same images, whatever they are called.

A dataset can be named many ways: its root, its ``raw`` folder, one of its idx files, a link to
any of them, a folder and a sub-folder of it. Comparing the names a user gave says nothing about
whether two sources share images (the INT8 gate once judged on the very images it had been
calibrated on). So an image is identified by the file it is read from, as the file system knows
it (device and inode, once every link is resolved), and by its record within that file:

- a layout (MNIST/CIFAR/Keras): the set of files it reads, and the image's index in it;
- a folder of class folders: the image file itself;
- an ``.npz`` file: the file and the index;
- the embedded digits: their index.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError


def _file_id(path: str | os.PathLike[str]) -> tuple[int, int]:
    st = os.stat(path)  # follows links: two names of one file are one file
    return st.st_dev, st.st_ino


def image_identities(dataset: dict[str, Any], indices: Any) -> set[Hashable]:
    """One key per image of ``dataset`` at ``indices`` (the indices of :func:`~.sources.scan`);
    two sources share an image exactly when their keys meet. Raises :class:`UserError` when
    the source cannot be read any more."""
    from .sources import _class_folders, _layout

    idx = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
    kind, path = dataset.get("kind"), dataset.get("path")
    try:
        if kind == "digits":
            return {("digits", i) for i in idx}
        if kind == "layout":
            ids = tuple(sorted(_file_id(f) for f in _layout(str(path)).files))
            return {("layout", ids, i) for i in idx}
        if kind == "npz":
            return {("npz", _file_id(str(path)), i) for i in idx}
        if kind == "folder":
            classes, _ = _class_folders(Path(str(path)))
            files = [f for _, fs in classes for f in fs]
            return {("file", _file_id(files[i])) for i in idx if 0 <= i < len(files)}
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename or path}: {exc.strerror or exc}") from None
    raise UserError(f"unknown dataset kind {kind!r}")


def shared_images(a: dict[str, Any], a_indices: Any, b: dict[str, Any], b_indices: Any) -> int:
    """How many images of ``a`` at ``a_indices`` are also images of ``b`` at ``b_indices``."""
    return len(image_identities(a, a_indices) & image_identities(b, b_indices))
