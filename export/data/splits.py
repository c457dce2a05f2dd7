"""Splits: seeded, stratified train / validation / test indices of a scanned source, and
the decoded parts that training, the gate and calibration read."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from ..core.errors import UserError
from ..core.hardware import check_memory
from ..core.models import ModelSpec
from .pixels import preprocess
from .sources import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    Scanned,
    describe_source,
    scan,
)

# ---------------------------------------------------------------------------------------------
# Step 2: split
# ---------------------------------------------------------------------------------------------


def indices_digest(indices: np.ndarray) -> str:
    """sha256 of a set of image indices: how a manifest names the images it used."""
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(labels: np.ndarray, seed: int, val_fraction: float,
                  test_fraction: float | None, class_names: Sequence[str] | None = None,
                  own_test: np.ndarray | None = None) -> Split:
    """Seeded, stratified train / validation / test indices (each class in every part).

    With ``own_test`` (a dataset's own test split) that is the test split, ``test_fraction`` is
    not used, and validation is ``val_fraction`` of the rest, seeded and stratified.
    """
    if own_test is not None:
        return _split_own_test(labels, np.asarray(own_test), seed, val_fraction, class_names)
    counts = np.bincount(labels)
    num_classes = len(counts)
    if counts.min() < 3:
        name = (class_names or [str(i) for i in range(num_classes)])[int(counts.argmin())]
        raise UserError(f"class {name!r} has {counts.min()} image(s): each class needs at least "
                        "3 (one each for training, validation and test)")
    if test_fraction is None:
        raise ValueError("test_fraction is needed unless the dataset has its own test split")
    n = len(labels)
    n_test = max(num_classes, round(test_fraction * n))
    n_val = max(num_classes, round(val_fraction * n))
    if n - n_test - n_val < num_classes:
        raise UserError(f"{n} images are too few to split {num_classes} classes into training, "
                        "validation and test parts")
    everything = np.arange(n)
    rest, test = train_test_split(everything, test_size=n_test, random_state=seed,
                                  stratify=labels)
    train, val = train_test_split(rest, test_size=n_val, random_state=seed,
                                  stratify=labels[rest])
    return Split(np.sort(train), np.sort(val), np.sort(test))


def _split_own_test(labels: np.ndarray, test: np.ndarray, seed: int, val_fraction: float,
                    class_names: Sequence[str] | None) -> Split:
    """The source's test split as given; validation: a stratified share of its training set.

    A class may have no images at all (EMNIST letters' unused class 0); a class that has any
    needs two in the training set, one for training and one for validation.
    """
    rest = np.setdiff1d(np.arange(len(labels)), test)
    counts = np.bincount(labels[rest], minlength=len(class_names or []))
    present = np.flatnonzero(counts)
    if counts[present].min() < 2:
        low = int(present[counts[present].argmin()])
        name = (class_names or [str(i) for i in range(len(counts))])[low]
        raise UserError(f"class {name!r} has {counts[low]} training image: each class needs at "
                        "least 2 (one for training, one for validation)")
    n_val = max(len(present), round(val_fraction * len(rest)))
    if len(rest) - n_val < len(present):
        raise UserError(f"{len(rest)} training images are too few to hold out a validation part "
                        f"for {len(present)} classes")
    train, val = train_test_split(rest, test_size=n_val, random_state=seed,
                                  stratify=labels[rest])
    return Split(np.sort(train), np.sort(val), np.sort(test))


def split_of(scanned: Scanned, dataset: dict[str, Any]) -> Split:
    """The split a ``dataset`` dict describes, for a scanned source."""
    test_fraction = dataset.get("test_fraction")
    return split_indices(scanned.labels, int(dataset.get("seed", 0)),
                         float(dataset.get("val_fraction", DEFAULT_VAL_FRACTION)),
                         DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction),
                         scanned.class_names, own_test=scanned.own_test)


def describe_split(scanned: Scanned, dataset: dict[str, Any], split: Split) -> dict[str, Any]:
    """Where each part came from and how many images it holds (for summary.json and logs)."""
    seed, val = int(dataset.get("seed", 0)), float(dataset.get("val_fraction",
                                                                 DEFAULT_VAL_FRACTION))
    if scanned.own_test is not None:
        parts = scanned.parts or {"train": "the dataset's training set",
                                  "test": "the dataset's test set"}
        origin = {"train": f"{parts['train']}, less the validation part",
                  "val": f"{val:.0%} of the training set, seeded ({seed}) and stratified",
                  "test": f"{parts['test']}: the dataset's own test split"}
    else:
        test = float(dataset.get("test_fraction") or DEFAULT_TEST_FRACTION)
        origin = {"train": "the rest",
                  "val": f"{val:.0%} of all images, seeded ({seed}) and stratified",
                  "test": f"{test:.0%} of all images, seeded ({seed}) and stratified"}
    counts = {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    return {part: {"count": int(counts[part]), "from": origin[part]} for part in counts}


# ---------------------------------------------------------------------------------------------
# What training uses
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Decoded splits (uint8 N x C x S x S), labels, class names and the source description."""

    dataset: dict[str, Any]
    class_names: list[str]
    images: dict[str, np.ndarray]  # "train" / "val" / "test"
    labels: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)  # the scan's notes (e.g. skipped files)
    splits: dict[str, Any] = dataclasses.field(default_factory=dict)  # describe_split's
    image_size: int | None = None  # the source images' side, before resizing

    @property
    def in_chans(self) -> int:
        return int(self.images["train"].shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> dict[str, int]:
        return {part: int(len(v)) for part, v in self.labels.items()}


def load_training_data(dataset: dict[str, Any], input_size: int,
                       scanned: Scanned | None = None) -> TrainingData:
    """Scan (unless ``scanned`` is given), split and decode a source; ``dataset`` gains
    ``num_images``.

    Channels are inferred from the data: grayscale (1) unless some image is in colour (3), in
    which case grayscale images are replicated to three channels.
    """
    scanned = scanned if scanned is not None else scan(dataset)
    split = split_of(scanned, dataset)
    order = np.concatenate([split.train, split.val, split.test])
    # Decoded images stay in memory as uint8; decoding briefly holds them twice.
    check_memory(2 * len(order) * scanned.min_channels * input_size * input_size,
                 f"decoding {len(order)} images at {scanned.min_channels} x {input_size} x "
                 f"{input_size}", "lower --input-size or use fewer images")
    decoded = scanned.decode(order, input_size)
    bounds = np.cumsum([len(split.train), len(split.val)])
    parts = dict(zip(("train", "val", "test"), np.split(decoded, bounds)))
    index = dict(zip(("train", "val", "test"), (split.train, split.val, split.test)))
    labels = {part: scanned.labels[idx] for part, idx in index.items()}
    dataset = {**dataset, "num_images": int(len(scanned.labels))}
    return TrainingData(dataset, scanned.class_names, parts, labels, list(scanned.notes),
                        describe_split(scanned, dataset, split), scanned.image_size)


@dataclass
class Labelled:
    """Images of one part of a source as the model sees them, with labels and their indices."""

    images: np.ndarray  # float32 N x C x S x S, normalised
    labels: np.ndarray  # int64 N
    indices: np.ndarray  # positions in the scanned source, to prove two sets disjoint
    part: str


def split_images(dataset: dict[str, Any] | None, spec: ModelSpec, part: str, limit: int,
                 seed: int = 0) -> Labelled:
    """A seeded subset (at most ``limit``, in split order) of one part of a source.

    ``part`` is "train", "val" or "test" of the source's split (as training made it, from the
    dataset dict's seed and fractions), or "all" for every image (a calibration set the user
    names). ``dataset`` None is the embedded digits. Images are resized to ``spec.input_size``,
    converted to ``spec.in_chans`` channels and normalised with ``spec.mean``/``spec.std``.
    Raises :class:`UserError` when the data is gone or changed.
    """
    dataset = dataset if dataset is not None else describe_source(None)
    scanned = scan(dataset)
    if part == "all":
        chosen = np.arange(len(scanned.labels))
    else:
        split = split_of(scanned, dataset)
        chosen = {"train": split.train, "val": split.val, "test": split.test}[part]
    if limit < len(chosen):
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(chosen, size=max(0, limit), replace=False))
    images = preprocess(scanned.decode(chosen, spec.input_size), spec)
    return Labelled(images, scanned.labels[chosen], chosen, part)


def reference_images(dataset: dict[str, Any] | None, spec: ModelSpec, limit: int = 64,
                     seed: int = 0) -> np.ndarray:
    """Real test-split images as the model sees them: float32 N x C x S x S, normalised (the
    parity gate's real inputs; :func:`split_images` with part "test")."""
    return split_images(dataset, spec, "test", limit, seed).images
