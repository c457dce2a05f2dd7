"""INT8 data: the calibration images a quantizer sees, and the held-out labelled images that
judge the result. The two never overlap: calibrating on the images that judge the result would
hide exactly the error the gate exists to catch.

- Calibration: a seeded subset of the checkpoint's TRAINING split (its dataset dict rebuilds the
  split training made), or of every image of a folder / ``.npz`` / dataset layout the user names
  (``--calib-data``). Fresh weights have no data of their own: the embedded digits' training
  split, resized to the model's input, with a warning that the accuracy figures then say little.
- Judging: the TEST split of the same dataset (the digits' for fresh weights), labelled.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import BadOption, UserError
from .core.models import ModelSpec
from .int8 import MIN_CALIBRATION
from .parity import LabelledInput
from .train.data import describe_source, scan, source_name, split_images

DEFAULT_COUNT = 256  # measured: 256 covers the outliers 32-64 miss; 512 gains nothing
ACCURACY_LIMIT = 1000  # held-out images the accuracy check runs (all of a smaller test split)
CALIBRATION_SEED = 0


def _digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()


@dataclass
class Calibration:
    images: np.ndarray  # float32 NCHW, normalised as the model's input
    description: dict[str, Any]  # for the manifest
    dataset: dict[str, Any]  # the source it came from (to prove disjointness)
    indices: np.ndarray
    warning: str | None = None


def calibration_set(spec: ModelSpec, dataset: dict[str, Any] | None, calib_data: Path | None,
                    count: int, method: str) -> Calibration:
    """The calibration images for an export (see the module docstring for the rules)."""
    warning = None
    if calib_data is not None:
        source = describe_source(calib_data)
        channels = int(scan(source).decode(np.arange(1), 8).shape[1])
        if channels != spec.in_chans:
            raise BadOption(f"--calib-data {calib_data}: its images have {channels} channel(s), "
                            f"the model takes {spec.in_chans}")
        part, what = "all", f"{source_name(source)} (--calib-data, every image)"
    elif dataset is not None:
        source, part = dataset, "train"
        what = f"{source_name(dataset)} training split (the checkpoint's)"
    else:
        source, part = describe_source(None), "train"
        what = "embedded digits training split (fresh weights: no data of their own)"
        warning = ("INT8 calibrated and judged on the embedded digits resized to the model's "
                   "input: with untrained weights the accuracy figures say little")
    chosen = split_images(source, spec, part, count, CALIBRATION_SEED)
    if len(chosen.labels) < MIN_CALIBRATION:
        raise BadOption(f"{what} has {len(chosen.labels)} images; INT8 calibration needs at "
                        f"least {MIN_CALIBRATION}")
    description = {"source": what, "dataset": source, "part": part,
                   "count": int(len(chosen.labels)), "requested": count, "method": method,
                   "seed": CALIBRATION_SEED, "indices": [int(i) for i in chosen.indices],
                   "indices_sha256": _digest(chosen.indices)}
    return Calibration(chosen.images, description, source, chosen.indices, warning)


def accuracy_set(spec: ModelSpec, dataset: dict[str, Any] | None, batch_size: int,
                 calibration: dict[str, Any] | None = None
                 ) -> tuple[LabelledInput, dict[str, Any]]:
    """The held-out labelled test split that judges an INT8 artifact; refuses to judge on any
    image the calibration saw (compared by index within the same source)."""
    source = dataset if dataset is not None else describe_source(None)
    held_out = split_images(source, spec, "test", ACCURACY_LIMIT, 0)
    if calibration is not None and _same_source(calibration.get("dataset"), source):
        overlap = np.intersect1d(held_out.indices, np.asarray(calibration["indices"]))
        if len(overlap):
            raise UserError(f"{len(overlap)} calibration images are also in the test split "
                            "that judges the INT8 artifact; calibrate on other data")
    described = {"dataset": source, "part": "test", "count": int(len(held_out.labels)),
                 "indices_sha256": _digest(held_out.indices)}
    return LabelledInput(held_out.images, held_out.labels, batch_size), described


def _same_source(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    if a is None:
        return False
    return (a.get("kind"), a.get("path")) == (b.get("kind"), b.get("path"))
