"""The gate's inputs: real test-split images and seeded random inputs at each batch size it
judges, and (INT8) the held-out labelled test split whose accuracy decides the contract."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import UserError, first_line
from ..core.models import ModelSpec
from ..core.shapes import BatchRange
from ..data import describe_source, indices_digest, reference_images, split_images
from ..data.identity import shared_images

RANDOM_SEED = 1234
ACCURACY_LIMIT = 1000  # held-out images the accuracy check runs (all of a smaller test split)


@dataclass
class ParityInput:
    """One named batch fed to both runners."""

    name: str  # e.g. "real b=8", "random b=1"
    kind: str  # "real" or "random"
    batch: np.ndarray  # float32 NCHW, normalised


@dataclass
class LabelledInput:
    """Held-out labelled images for a contract's accuracy check (never calibration data)."""

    images: np.ndarray  # float32 NCHW, normalised
    labels: np.ndarray
    batch_size: int  # fed in batches of this size (within the artifact's batch range)


def random_inputs(shape: tuple[int, int, int], batch_sizes: Iterable[int], seed: int = RANDOM_SEED
                  ) -> list[ParityInput]:
    """Seeded N(0, 1) batches (inputs are normalised, so this is image-like in scale)."""
    out = []
    for b in batch_sizes:
        rng = np.random.default_rng(seed + b)
        out.append(ParityInput(f"random b={b}", "random",
                               rng.standard_normal((b, *shape), dtype=np.float32)))
    return out


def real_inputs(images: np.ndarray, batch_sizes: Iterable[int]) -> list[ParityInput]:
    """Real images in batches of the given sizes (cycled when there are fewer images)."""
    out = []
    for b in batch_sizes:
        idx = np.arange(b) % len(images)
        out.append(ParityInput(f"real b={b}", "real",
                               np.ascontiguousarray(images[idx], dtype=np.float32)))
    return out


def parity_inputs(spec: ModelSpec, batch: BatchRange, dataset: dict[str, Any] | None
                  ) -> tuple[list[ParityInput], dict[str, Any]]:
    """Real test-split images (where available) and seeded random inputs at each batch size."""
    sizes = batch.parity_sizes()
    shape = (spec.in_chans, spec.input_size, spec.input_size)
    items: list[ParityInput] = []
    real: dict[str, Any] = {"available": False, "dataset": dataset, "count": 0, "note": None}
    try:
        images = reference_images(dataset, spec, limit=max(sizes))
    except UserError as exc:
        real["note"] = f"real images unavailable: {exc}"
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a damaged description
        real["note"] = f"real images unavailable: the dataset description does not read " \
                       f"({first_line(exc)})"
    else:
        if len(images):
            items += real_inputs(images, sizes)
            real.update(available=True, count=int(len(images)))
        else:
            real["note"] = "real images unavailable: the test split is empty"
    items += random_inputs(shape, sizes, RANDOM_SEED)
    described = {"batch_sizes": sizes, "real": real,
                 "random": {"distribution": "N(0,1)", "seed": RANDOM_SEED}}
    return items, described


def accuracy_set(spec: ModelSpec, dataset: dict[str, Any] | None, batch_size: int,
                 calibration: dict[str, Any] | None = None
                 ) -> tuple[LabelledInput, dict[str, Any]]:
    """The held-out labelled test split that judges an INT8 artifact; refuses to judge on any
    image the calibration saw. Images are compared by what they are (the file each is read
    from, :mod:`export.data.identity`), not by the names the sources were given: the dataset's
    root, its raw folder or one of its files are one source."""
    source = dataset if dataset is not None else describe_source(None)
    held_out = split_images(source, spec, "test", ACCURACY_LIMIT, 0)
    if calibration is not None and calibration.get("dataset") is not None:
        overlap = _overlap(calibration["dataset"], calibration.get("indices") or [], source,
                           held_out.indices)
        if overlap:
            raise UserError(f"{overlap} calibration images are also in the test split "
                            "that judges the INT8 artifact; calibrate on other data")
    described = {"dataset": source, "part": "test", "count": int(len(held_out.labels)),
                 "indices_sha256": indices_digest(held_out.indices)}
    return LabelledInput(held_out.images, held_out.labels, batch_size), described


def _overlap(calibrated: dict[str, Any], calibrated_indices: Any, judged: dict[str, Any],
             judged_indices: Any) -> int:
    """Images in both sets, by file identity; where the calibration data is gone (``verify``
    long after export), by the recorded name and index as a last resort."""
    try:
        return shared_images(calibrated, calibrated_indices, judged, judged_indices)
    except UserError:
        same = (calibrated.get("kind"), calibrated.get("path")) == \
            (judged.get("kind"), judged.get("path"))
        return len(np.intersect1d(judged_indices, np.asarray(calibrated_indices))) if same else 0
