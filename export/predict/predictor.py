"""Classify images with an exported artifact, through exactly the preprocessing training used.

Files are read by :func:`export.data.read_image` and turned into model input by
:func:`export.data.preprocess` (resize, channels, normalisation with the manifest's
mean/std): the functions training and the parity gate use, not a copy of them. Batches are cut
to fit the artifact's batch range (a short last batch is padded up to the range's minimum and
the padding's logits dropped), and every call goes through the artifact's runner.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifact import read_manifest
from ..core.errors import UserError
from ..core.manifest import Manifest
from ..core.models import ModelSpec
from ..core.shapes import BatchRange
from ..data import IMAGE_SUFFIXES, image_files, preprocess, read_image
from ..runtime import Runner
from .runtimes import open_runner

CHANNEL_NAMES = {1: "grayscale", 3: "RGB"}


@dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes."""

    index: int
    label: str
    probability: float  # softmax of the logits
    logit: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "probability": self.probability,
                "logit": self.logit}


@dataclass(frozen=True)
class FileResult:
    """What became of one file: its top-k, or the one-line reason it could not be classified.

    ``converted`` says how its channels were changed to fit the model (e.g. "RGB -> grayscale"),
    the same conversion training applies; None when they already fitted.
    """

    path: Path
    top: list[Prediction] | None = None
    error: str | None = None
    converted: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "top": [p.to_dict() for p in self.top or []],
                "converted": self.converted, "error": self.error}


def conversion(have: int, want: int) -> str | None:
    """How ``have``-channel pixels become the model's ``want`` channels, in words (None: as is)."""
    if have == want:
        return None
    if (have, want) == (3, 1):
        return "RGB -> grayscale (ITU-R 601 luma)"
    if (have, want) == (1, 3):
        return "grayscale -> RGB (replicated)"
    return f"{have} -> {want} channels"


def as_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 images -> N x C x H x W (C = 1 or 3), never guessing: ``N x H x W``,
    ``N x C x H x W`` or ``N x H x W x C`` for a batch; ``H x W`` or ``H x W x C`` for one image.
    A shape that two layouts read differently (``3 x H x W``: three grey images or one
    channels-first RGB image) is refused in one line rather than read one way silently."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise UserError(f"images must be uint8 pixels 0..255, got {images.dtype} (for floats in "
                        "0..1 pass np.rint(x * 255).astype(np.uint8))")
    shape = images.shape
    if images.ndim == 2:
        return images[None, None]
    if images.ndim == 3:
        first, last = shape[0] in (1, 3), shape[2] in (1, 3)
        if last and not first:  # one H x W x C image
            return images.transpose(2, 0, 1)[None]
        if not last and shape[0] != 3:  # N x H x W (one grey image when N = 1, either way)
            return images[:, None]
        raise UserError(f"images of shape {shape} are ambiguous: pass images[None] for one "
                        "image or an N x H x W x C batch")
    if images.ndim == 4:
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
        if first and last:
            raise UserError(f"images of shape {shape} are ambiguous: channels first or last?")
        if first:
            return images
        if last:
            return images.transpose(0, 3, 1, 2)
    raise UserError(f"images must be N x H x W, N x C x H x W or N x H x W x C with C = 1 or 3 "
                    f"(or one H x W / H x W x C image), got shape {shape}")


def find_images(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str | None]]:
    """``(file, None)`` for each file to classify, ``(path, reason)`` for a path that gives none.

    Files count as given (any format Pillow reads); folders are searched recursively for the
    files a training folder holds (PNG/JPEG, hidden files and folders left out), sorted.
    """
    found: list[tuple[Path, str | None]] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            found.append((path, f"no such file or folder: {path}"))
        elif path.is_dir():
            inside = image_files(path)
            kinds = "/".join(s[1:].upper() for s in IMAGE_SUFFIXES)
            found += [(p, None) for p in inside] or [(path, f"no {kinds} images in {path}")]
        elif not path.is_file():  # opening a FIFO would wait for a writer forever
            found.append((path, f"{path} is not a regular file (a FIFO, device or socket is "
                                "never opened)"))
        else:
            found.append((path, None))
    return found


def top_k(logits: np.ndarray, class_names: Sequence[str], k: int) -> list[list[Prediction]]:
    """The ``k`` most likely classes per row, best first; ties go to the lower class index, as
    ``argmax`` does."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    k = max(1, min(k, logits.shape[1]))
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [[Prediction(int(i), class_names[i], float(probs[r, i]), float(logits[r, i]))
             for i in row] for r, row in enumerate(order)]


class Predictor:
    """An artifact ready to classify images: ``Predictor.load(folder)``.

    ``predict_files(paths)`` and ``predict_arrays(uint8 images)`` return one list of
    :class:`Prediction` (best first) per image. The runner is activated on first use and freed by
    :meth:`close` (or at the end of a ``with`` block).
    """

    def __init__(self, runner: Runner, manifest: Manifest, folder: Path | None = None):
        self.runner = runner
        self.manifest = manifest
        self.folder = folder
        self.spec = ModelSpec.from_dict(manifest["model"])
        self.batch = BatchRange.from_dict(manifest["batch_range"])
        names = manifest.get("class_names")
        if not names or len(names) != self.spec.num_classes:
            names = [str(i) for i in range(self.spec.num_classes)]
        self.class_names: list[str] = [str(n) for n in names]

    @classmethod
    def load(cls, folder: str | os.PathLike, runtime: str = "auto", threads: int | None = None,
             verify: bool = True) -> Predictor:
        """The artifact in ``folder`` (any format ``resnet-export`` writes) on ``runtime``
        (:func:`export.predict.runtime_choices`); checked as :func:`export.runtime.load_artifact`
        checks it."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        return cls(open_runner(folder, manifest, runtime, threads, verify), manifest, folder)

    # -- facts -----------------------------------------------------------------------------

    @property
    def trained(self) -> bool:
        """False for an artifact exported from fresh, seeded weights: its classes mean nothing."""
        return self.manifest["source"].get("kind") != "seed"

    def describe(self) -> str:
        m = self.manifest
        return (f"{self.spec.name} ({self.spec.num_classes} classes, {self.spec.in_chans}x"
                f"{self.spec.input_size}x{self.spec.input_size}), {m['format']} "
                f"({m['precision']}) on {self.runner.label}, batch {self.batch}")

    # -- pixels -> model input -------------------------------------------------------------

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (see :func:`as_nchw`) -> float32 model input, as training makes it."""
        return preprocess(as_nchw(images), self.spec)

    def read(self, path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
        """One file -> (float32 1 x C x S x S model input, the channel conversion or None)."""
        pixels = read_image(Path(path))
        return preprocess(pixels[None], self.spec), conversion(pixels.shape[0],
                                                               self.spec.in_chans)

    # -- model input -> logits -------------------------------------------------------------

    def chunk_size(self, batch_size: int | None = None) -> int:
        """Images per runner call: ``batch_size`` (must be in the artifact's range) or the
        range's opt (what TensorRT tunes for)."""
        if batch_size is None:
            return self.batch.opt
        if batch_size not in self.batch:
            raise UserError(f"batch size {batch_size} is outside the artifact's batch range "
                            f"{self.batch.min}..{self.batch.max}")
        return batch_size

    def logits(self, inputs: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """float32 logits for float32 ``N x C x S x S`` model input, in batches the artifact
        takes; a batch below the range's minimum is padded and the padding's logits dropped."""
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        size = self.chunk_size(batch_size)
        self.runner.activate()
        out = []
        for start in range(0, len(inputs), size):
            part = inputs[start:start + size]
            n = len(part)
            if n < self.batch.min:
                part = np.concatenate([part, np.repeat(part[-1:], self.batch.min - n, axis=0)])
            out.append(self.runner.infer(part)[:n])
        if not out:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return np.concatenate(out)

    # -- the API ---------------------------------------------------------------------------

    def predict_arrays(self, images: np.ndarray, top: int = 5,
                       batch_size: int | None = None) -> list[list[Prediction]]:
        """Top-``top`` classes of each uint8 image: ``N x H x W`` (grayscale),
        ``N x C x H x W`` or ``N x H x W x C`` (C = 1 or 3), or one ``H x W (x C)`` image; any
        H x W; ambiguous shapes are refused (:func:`as_nchw`)."""
        return top_k(self.logits(self.preprocess(images), batch_size), self.class_names, top)

    def predict_files(self, paths: Iterable[str | os.PathLike], top: int = 5,
                      batch_size: int | None = None) -> list[list[Prediction]]:
        """Top-``top`` classes of each image file (folders: every PNG/JPEG below them, sorted).
        The first file that cannot be classified raises :class:`UserError`."""
        results = []
        for result in self.iter_files(paths, top, batch_size):
            if result.error is not None or result.top is None:
                raise UserError(result.error or f"{result.path}: not classified")
            results.append(result.top)
        return results

    def iter_files(self, paths: Iterable[str | os.PathLike], top: int = 5,
                   batch_size: int | None = None) -> Iterator[FileResult]:
        """One :class:`FileResult` per file, in order, a batch at a time (memory stays at one
        batch); a file that cannot be read or converted is a result with ``error`` set."""
        files = find_images(paths)
        size = self.chunk_size(batch_size)
        for start in range(0, len(files), size):
            pending: list[tuple[Path, np.ndarray, str | None]] = []
            errors: dict[int, FileResult] = {}
            for i, (path, problem) in enumerate(files[start:start + size]):
                try:
                    if problem is not None:
                        raise UserError(problem)
                    x, converted = self.read(path)
                except UserError as exc:
                    errors[i] = FileResult(path, error=str(exc))
                else:
                    pending.append((path, x, converted))
            tops = iter(top_k(self.logits(np.concatenate([x for _, x, _ in pending]), size),
                              self.class_names, top) if pending else [])
            done = iter(pending)
            for i in range(len(pending) + len(errors)):
                if i in errors:
                    yield errors[i]
                else:
                    path, _, converted = next(done)
                    yield FileResult(path, next(tops), converted=converted)

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["FileResult", "Prediction", "Predictor", "as_nchw", "conversion", "find_images",
           "top_k"]
