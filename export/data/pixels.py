"""Pixels: reading one image file, resizing, channels and normalisation -- the one
``preprocess`` that training, the parity gate, calibration and prediction share."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import UserError
from ..core.fileio import open_regular
from ..core.models import ModelSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# ITU-R 601-2 luma, the weights Pillow uses for its RGB -> "L" conversion.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Images resized per chunk, so a float copy of a whole dataset is never made.
RESIZE_CHUNK = 2048


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """One image file as ``uint8`` ``C x H x W`` (C = 1 for grayscale files, 3 otherwise).

    With ``size``, resized to ``size x size`` by :func:`resize_array`, the resize every source
    gets (arrays, files, training and prediction alike). A JPEG's EXIF orientation is applied,
    as image viewers do, so a photo taken with the camera turned is read upright. Only a
    regular file is opened: a FIFO named ``x.png`` is refused, never read.
    """
    return _decode(lambda: open_regular(path), path, size)


def decode_image(data: bytes, name: str | Path, size: int | None = None) -> np.ndarray:
    """Encoded image bytes (a tar member, a Parquet cell, a file already read) as
    :func:`read_image` reads a file: the same pixels, the same errors naming ``name``."""
    return _decode(lambda: io.BytesIO(data), Path(name), size)


def _decode(opener: Callable[[], Any], path: Path, size: int | None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with opener() as fh, Image.open(fh) as opened:
                opened.load()
                img: Any = ImageOps.exif_transpose(opened)
                img = _eight_bit(img, path)
                gray = img.mode in ("1", "L", "LA")
                img = img.convert("L" if gray else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"cannot read image {path}: {str(exc).splitlines()[0]} (a "
                        "decompression bomb to Pillow; shrink the image)") from None
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {path}: cannot identify image file {str(path)!r}"
                        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else exc}"
                        ) from None
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return arr if size is None else resize_array(arr[None], size)[0]


def walk_images(root: Path) -> Iterator[os.DirEntry[str]]:
    """The PNG/JPEG regular files under ``root`` at any depth, as they are found: depth first,
    each folder's entries by name, hidden files and folders left out. It streams (a folder of
    a million files is never held as a list), walks with a stack rather than recursion
    (``Path.rglob`` recurses, and a folder nested 1,400 deep ends it in a RecursionError), and
    reads a folder reached twice through symbolic links once, so a link loop ends. A folder it
    cannot read is one :class:`UserError`."""
    stack: list[Path] = [root]
    seen: set[tuple[int, int]] = set()
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")),
                                 key=lambda e: e.name)
            subfolders = []
            for entry in entries:
                if entry.is_dir():
                    subfolders.append(Path(entry.path))
                elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    yield entry
        except OSError as exc:
            raise UserError(f"cannot read {exc.filename or folder}: {exc.strerror or exc}"
                            ) from None
        stack.extend(reversed(subfolders))


def image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG regular files under ``folder`` at any depth (:func:`walk_images`), sorted."""
    return sorted(Path(entry.path) for entry in walk_images(folder))


def _eight_bit(img: Any, path: Path) -> Any:
    """16-bit grayscale (Pillow's "I;16*" and "I" modes) -> 8-bit "L" by its high byte.

    ``v >> 8`` maps 0..65535 onto 0..255 and gives back exactly the 8-bit value ``v`` of a
    picture stored as ``v * 257``, the PNG convention; Pillow's own conversion clips instead,
    which turns a 16-bit picture into black and white. (16-bit colour PNGs already arrive as
    8-bit "RGB" or "RGBA" from Pillow, by the same high byte.)
    """
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        pixels = np.asarray(img)
        if img.mode == "I" and pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise UserError(f"cannot read image {path}: 32-bit integer pixels outside "
                            f"0..65535 ({pixels.min()}..{pixels.max()}); save it as an 8- or "
                            "16-bit PNG")
        return Image.fromarray((pixels.astype(np.uint32) >> 8).astype(np.uint8), "L")
    if img.mode == "F":
        raise UserError(f"cannot read image {path}: floating-point pixels are not supported; "
                        "save it as an 8- or 16-bit PNG")
    return img



# ---------------------------------------------------------------------------------------------
# Step 3: decode, channels and normalisation
# ---------------------------------------------------------------------------------------------


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 N x C x H x W -> uint8 N x C x size x size (bilinear, antialiased when shrinking).

    Works through ``RESIZE_CHUNK`` images at a time, so the float copies it needs stay small
    (a whole 60,000-image dataset at 224 x 224 in float32 would be 12 GB).
    """
    if images.shape[-2:] == (size, size):
        return np.ascontiguousarray(images)
    # In chunks of about 64 MiB of float pixels: the float copies of a whole data set would
    # need 4 bytes per pixel at both sizes at once.
    per_image = 4 * images.shape[1] * (images.shape[2] * images.shape[3] + size * size)
    step = max(1, (64 << 20) // max(1, per_image))
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), step):
        x = torch.from_numpy(np.require(images[start:start + step], requirements=("C", "W")))
        x = x.float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out[start:start + step] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def to_channels(images: np.ndarray, in_chans: int) -> np.ndarray:
    """N x C x H x W with C in (1, 3) -> ``in_chans`` channels (replicate grey, luma of RGB)."""
    have = images.shape[1]
    if have == in_chans:
        return images
    if have == 1 and in_chans == 3:
        return np.repeat(images, 3, axis=1)
    if have == 3 and in_chans == 1:
        luma = np.tensordot(np.asarray(LUMA_WEIGHTS, dtype=np.float32),
                            images.astype(np.float32), axes=([0], [1]))
        return np.rint(luma)[:, None].astype(images.dtype)
    raise UserError(f"cannot turn {have}-channel images into {in_chans}-channel model input")


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 N x C x H x W -> float32, scaled to 0..1 then standardised per channel."""
    m = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    s = np.asarray(std, dtype=np.float32)[None, :, None, None]
    return np.ascontiguousarray((images.astype(np.float32) / 255.0 - m) / s, dtype=np.float32)


def preprocess(images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 ``N x C x H x W`` pixels (C = 1 or 3, any H x W) -> what ``spec``'s model takes.

    float32 ``N x spec.in_chans x S x S``: :func:`resize_array` to ``spec.input_size``,
    :func:`to_channels` (grey replicated to RGB, RGB to grey by ITU-R 601 luma), :func:`normalise`
    with ``spec.mean``/``spec.std``. The one path from pixels to model input: the parity gate's
    real images (:func:`reference_images`) and ``resnet-predict`` both go through it, and the
    training loop's decoded images plus :class:`ImageDataset` without augmentation give the same
    array (a test checks it element for element).
    """
    images = to_channels(resize_array(images, spec.input_size), spec.in_chans)
    return normalise(images, spec.mean, spec.std)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of uint8 N x C x H x W images."""
    # Two passes over chunks of about 8M pixel values: a float64 copy of the whole training
    # split would take eight times its memory.
    n = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    step = max(1, (8 << 20) // max(1, images[0].size if len(images) else 1))
    chunks = [images[i:i + step] for i in range(0, len(images), step)]
    total = sum((c.astype(np.float64) / 255.0).sum(axis=(0, 2, 3)) for c in chunks)
    mean = total / n
    squares = sum((((c.astype(np.float64) / 255.0) - mean[None, :, None, None]) ** 2).sum(
        axis=(0, 2, 3)) for c in chunks)
    std = np.maximum(np.sqrt(squares / n), 1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
