"""What an artifact carries so that its precision-sensitive verdict can be re-checked on another
machine without the source weights or the dataset (:mod:`export.runtime.recheck` reads it):
a few of its own gate images and the eager FP32 logits for them, in ``gate-reference.npz``, and
the floors of each sensitive contract it was judged by, in ``parity.recheck``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.manifest import FileEntry, Manifest, file_entry
from ..core.models import ModelSpec
from ..core.shapes import BatchRange
from ..core.weights import SourceModel
from ..runtime.recheck import REFERENCE_NAME, REFERENCE_ROLE, SENSITIVE
from ..runtime.torch_runner import TorchRunner
from .inputs import accuracy_set, parity_inputs
from .parity import TOLERANCES

#: at most this many images, and at most this many bytes of them (stored as float16: 26 RGB
#: images at 224x224, under half a second of ResNet-50 on a CPU; 64 at the digits' 16x16)
MAX_IMAGES = 64
MAX_BYTES = 8 << 20


def sensitive_contracts(manifest: Manifest) -> list[str]:
    """The precisions of this artifact whose kernels differ by CPU: its own (INT8) and the
    execution precisions its gate judged (BF16)."""
    judged = set(manifest["parity"].get("contracts") or {}) | {manifest["precision"]}
    return [p for p in SENSITIVE if p in judged]


def _images(spec: ModelSpec, batch: BatchRange, manifest: Manifest, source: SourceModel
            ) -> np.ndarray:
    """The gate's own images: the held-out labelled ones for INT8, else its real (or, where
    there are none, random) inputs, largest batch first."""
    recorded = (manifest["parity"].get("inputs") or {}).get("real", {})
    dataset = recorded.get("dataset") if recorded.get("dataset") is not None else source.dataset
    if manifest["precision"] == "int8":
        labelled, _ = accuracy_set(spec, dataset, batch.max,
                                   (manifest.get("int8") or {}).get("calibration"))
        return labelled.images
    inputs, _ = parity_inputs(spec, batch, dataset)
    return max(inputs, key=lambda item: (item.kind == "real", len(item.batch))).batch


def write_gate_reference(folder: Path, manifest: Manifest, source: SourceModel
                         ) -> tuple[FileEntry, dict[str, Any]] | None:
    """Write the reference file into ``folder``; its file entry and the manifest's
    ``parity.recheck`` section (None where no contract of the artifact is sensitive)."""
    contracts = sensitive_contracts(manifest)
    if not contracts:
        return None
    spec = ModelSpec.from_dict(manifest["model"])
    batch = BatchRange.from_dict(manifest["batch_range"])
    images = _images(spec, batch, manifest, source)
    per_image = 2 * int(np.prod(images.shape[1:]))
    step = max(batch.min, min(batch.max, MAX_IMAGES, max(1, MAX_BYTES // per_image)))
    count = step * max(1, min(MAX_IMAGES, MAX_BYTES // per_image, len(images)) // step)
    stored = images[np.arange(count) % len(images)].astype(np.float16)
    with TorchRunner(source.model, device="cpu") as reference:
        logits = np.concatenate([reference.infer(stored[i:i + step].astype(np.float32))
                                 for i in range(0, count, step)])
    handle, partial = tempfile.mkstemp(prefix=".reference-", suffix=".npz", dir=folder)
    with os.fdopen(handle, "wb") as fh:
        np.savez(fh, images=stored, logits=logits.astype(np.float32))
    os.replace(partial, folder / REFERENCE_NAME)
    tolerances = {p: {key: getattr(TOLERANCES[p], key)
                      for key in ("min_cosine", "min_clear_top1", "atol", "rtol")}
                  for p in contracts}
    section = {"file": REFERENCE_NAME, "images": count, "batch": step,
               "inputs": "the gate's held-out images" if manifest["precision"] == "int8"
               else "the gate's inputs", "logits": "eager FP32 (torch) on the stored float16 "
               "images", "tolerances": tolerances}
    return file_entry(folder, REFERENCE_NAME, REFERENCE_ROLE), section
