"""Items -> model input, in a worker: read, decode and preprocess a chunk of one shard.

Decoding is :func:`export.data.decode_image` and preprocessing :func:`export.data.preprocess`,
exactly what ``resnet-predict`` does per file, one image at a time (images of a chunk may have
different sizes). An image that cannot be read becomes an error of the chunk, never a stop; a
file whose size or modification time differs from the listing stops the job
(:class:`~.sources.SourceChanged`), since its shard would mix two versions of the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import UserError
from ..core.fileio import open_regular
from ..core.models import ModelSpec
from ..data import decode_image, preprocess
from .sources import Item, SourceChanged

_SPEC: ModelSpec | None = None


@dataclass
class Decoded:
    """A chunk's model input: ``inputs[i]`` is the chunk's item ``ok[i]``; ``errors`` the rest."""

    ok: list[int]
    inputs: np.ndarray
    errors: list[tuple[int, str]] = field(default_factory=list)


def init_worker(spec: dict) -> None:
    """Per worker process: the model's spec, and one thread for torch (the resize) so decode
    workers never compete with the runtime's threads."""
    global _SPEC
    import torch

    torch.set_num_threads(1)
    _SPEC = ModelSpec.from_dict(spec)


def _read_bytes(item: Item) -> bytes:
    kind = item.locator[0]
    if kind == "bytes":
        if item.locator[1] is None:
            raise UserError(f"{item.key}: the cell is null")
        return bytes(item.locator[1])
    if kind == "file":
        path = item.locator[1]
        if item.size < 0:
            raise UserError(f"cannot read image {item.key}: no such file")
        try:
            with open_regular(path) as fh:
                st = os.fstat(fh.fileno())
                if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
                    raise SourceChanged(f"{path} changed while the job ran (size or time differ "
                                        "from the listing)")
                return fh.read()
        except FileNotFoundError:
            raise SourceChanged(f"{path} was removed while the job ran") from None
        except OSError as exc:
            raise UserError(f"cannot read image {path}: {exc.strerror or exc}") from None
    _, path, offset, size, tar_size, tar_mtime = item.locator
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if (st.st_size, st.st_mtime_ns) != (tar_size, tar_mtime):
                raise SourceChanged(f"{path} changed while the job ran")
            fh.seek(offset)
            return fh.read(size)
    except FileNotFoundError:
        raise SourceChanged(f"{path} was removed while the job ran") from None


def decode_chunk(chunk: list[Item], spec: ModelSpec | None = None) -> Decoded:
    """The chunk's images as float32 model input, in order, with the ones that failed."""
    spec = spec or _SPEC
    assert spec is not None, "init_worker first"
    ok, inputs, errors = [], [], []
    for i, item in enumerate(chunk):
        try:
            pixels = decode_image(_read_bytes(item), item.key)
            inputs.append(preprocess(pixels[None], spec))
            ok.append(i)
        except SourceChanged:
            raise
        except UserError as exc:
            errors.append((i, str(exc)))
    shape = (0, spec.in_chans, spec.input_size, spec.input_size)
    array = np.concatenate(inputs) if inputs else np.zeros(shape, dtype=np.float32)
    return Decoded(ok, array, errors)
