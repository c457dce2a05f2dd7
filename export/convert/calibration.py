"""INT8 calibration data: the images a quantizer sees. They never overlap the held-out labelled
images that judge the result (:func:`export.gate.inputs.accuracy_set` checks): calibrating on the
images that judge the result would hide exactly the error the gate exists to catch.

- Calibration: a seeded subset of the checkpoint's TRAINING split (its dataset dict rebuilds the
  split training made), or of every image of a folder / ``.npz`` / dataset layout the user names
  (``--calib-data``). Fresh weights have no data of their own: the embedded digits' training
  split, resized to the model's input, with a warning that the accuracy figures then say little.
- Judging: the TEST split of the same dataset (the digits' for fresh weights), labelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadOption
from ..core.hardware import ACTIVATION_VALUES_PER_PIXEL, check_memory, inference_bytes
from ..core.models import ModelSpec
from ..data import describe_source, indices_digest, scan, source_name, split_images
from .int8_recipes import MIN_CALIBRATION

DEFAULT_COUNT = 256  # measured: 256 covers the outliers 32-64 miss; 512 gains nothing
CALIBRATION_SEED = 0


#: Images the quantizer runs per calibration batch (quantize_qdq's default).
CALIBRATION_BATCH = 16


def calibration_bytes(images: int, spec: ModelSpec, method: str) -> int:
    """Memory a calibration needs, estimated before it starts (as the export estimates its own
    forwards): the normalised float32 images, a calibration batch's forward, and for the
    histogram methods (entropy, percentile) the activations of every image, which ONNX
    Runtime's calibrator keeps until it builds the histograms (min-max keeps two numbers per
    tensor)."""
    pixels = spec.input_size * spec.input_size
    need = 4 * images * spec.in_chans * pixels
    need += inference_bytes(min(images, CALIBRATION_BATCH), spec.in_chans, spec.input_size)
    if method != "minmax":
        need += 4 * images * pixels * ACTIVATION_VALUES_PER_PIXEL
    return need


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
        channels = int(scan(source, "calibration").decode(np.arange(1), 8).shape[1])
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
    images = min(count, len(scan(source).labels))  # a split is smaller: an upper bound
    check_memory(calibration_bytes(images, spec, method),
                 f"INT8 calibration of {images} images at {spec.input_size}x{spec.input_size} "
                 f"({method})", "lower --calib-count or --input-size")
    chosen = split_images(source, spec, part, count, CALIBRATION_SEED)
    if len(chosen.labels) < MIN_CALIBRATION:
        raise BadOption(f"{what} has {len(chosen.labels)} images; INT8 calibration needs at "
                        f"least {MIN_CALIBRATION}")
    description = {"source": what, "dataset": source, "part": part,
                   "count": int(len(chosen.labels)), "requested": count, "method": method,
                   "seed": CALIBRATION_SEED, "indices": [int(i) for i in chosen.indices],
                   "indices_sha256": indices_digest(chosen.indices)}
    return Calibration(chosen.images, description, source, chosen.indices, warning)



