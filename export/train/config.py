"""What a training run is asked to do: the configuration, its defaults and checks.

Several defaults follow the data (:meth:`TrainConfig.resolved` is given the images' size and the
size of the training split): the input size, the stem of an ImageNet model, the number of
epochs and the warm-up, the shares held out (:func:`split_fractions`), and on a small
training split the batch size
(with SGD's learning rate in proportion); the learning rate also follows ``--init-weights``.
:func:`.notes.default_notes` says in one line which of them were chosen that way.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from ..core.errors import BadOption, UserError
from ..core.models import (
    DOWNSAMPLING,
    STEMS,
    Architecture,
    check_downsample,
    check_stem,
    get_architecture,
)
from ..data.layout_names import detect_layout

RESUME_CHANGES = ("epochs", "device", "workers", "threads", "max_steps")
# The files that make a folder hold a run (with a log that is not empty: see rundir.holds_run)
RUN_FILES = ("last.pt", "best.pt", "summary.json")
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}  # for DEFAULT_BATCH_SIZE
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
DIGITS_IMAGE_SIZE = 8  # the embedded digits are 8x8
#: --init-weights starts from trained weights: the default learning rate is this much lower
FINE_TUNE_LR_FACTOR = 0.1
DEFAULT_EPOCHS = 15
DEFAULT_BATCH_SIZE = 64
#: a small training split gets a smaller default batch, so an epoch still has this many steps
#: (BatchNorm's running statistics, which evaluation uses, move once per step) ...
MIN_STEPS_PER_EPOCH = 8
#: ... but not smaller than this
MIN_DEFAULT_BATCH_SIZE = 16
#: on a large training split the default number of epochs shows about this many images ...
EPOCH_BUDGET_IMAGES = 100_000
#: ... but never fewer epochs than this
MIN_DEFAULT_EPOCHS = 2
DEFAULT_WARMUP_EPOCHS = 1.0
#: an input size taken from the data is at least this (two stride-2 stages still fit)
MIN_AUTO_INPUT_SIZE = 16
#: ImageNet models get the small stem for inputs up to this side
SMALL_STEM_MAX_INPUT = 64
#: ResNet-18..152 trained from scratch on a training split of at most this many images get the
#: small-data defaults below: measured on 240 training images of five 64x64 texture classes
#: (docs/training.md), 64 px with the stride-1 small stem and SGD reached 58% in 501 s while
#: 32 px with AdamW for 30 epochs reached 92% in 258 s
SMALL_DATA_IMAGES = 2_000
#: ... their input side at most this (the small stem keeps full resolution through layer1, so
#: its cost grows with the square of the side: 64 px is 4x the work of 32 px)
SMALL_DATA_INPUT = 32
SMALL_DATA_OPTIMIZER = "adamw"
SMALL_DATA_EPOCHS = 30
MAX_INPUT_SIZE = 2048
#: the model of a run that names none: the paper's resnet20 on the embedded digits (the quick
#: start's documented figures and the INT8 gates rest on it) and on MNIST / CIFAR as stored
#: (CIFAR-10 is the paper's own benchmark); on your own folder or arrays resnet8 with
#: average-pool downsampling, which measured better than resnet20 and than a plain CNN given
#: the same time on small noisy folders (docs/training.md#own-data-against-a-plain-cnn)
DEFAULT_MODEL = "resnet20"
OWN_DATA_MODEL = "resnet8"
OWN_DATA_DOWNSAMPLE = "avgpool"
#: training-image jitter: "affine" (rotation, sub-pixel shift and scale, resampled) or "shift"
#: (whole-pixel shifts, every pixel kept as it is); see default_jitter
JITTERS = ("affine", "shift")
#: the shares of the data held out for validation and test. The user's own folder or arrays keep
#: 80 % for training (issue 27: holding 30 % out of 2,000 images cost more accuracy than the
#: held-out figures were worth); the embedded digits keep their reference 70 / 10 / 20 split,
#: on which the documented figures and the INT8 gates' 359 test images rest
DEFAULT_VAL_FRACTION = 0.1
OWN_DATA_TEST_FRACTION = 0.1
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Bound:
    """The range of a numeric option: ``kind`` int or float, ends included unless ``*_open``."""

    kind: type
    lo: float
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    reason: str = ""  # why the range is what it is, shown with the error
    optional: bool = False  # None is allowed (a default filled in later)

    def describe(self) -> str:
        lo = f"{self.lo}{' <' if self.lo_open else ' <='} x"
        return lo + (f" {'<' if self.hi_open else '<='} {self.hi}" if self.hi is not None else "")

    def holds(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below


#: every numeric option of resnet-train, checked on the command line and by resolved()
BOUNDS = {
    "epochs": Bound(int, 1, 100_000, optional=True),
    "batch_size": Bound(int, 2, 65_536, optional=True,
                        reason="BatchNorm needs at least 2 images per batch; a larger batch "
                               "does not fit in memory at any ResNet input size"),
    "lr": Bound(float, 0, None, lo_open=True, optional=True),
    "weight_decay": Bound(float, 0, None, optional=True),
    "warmup_epochs": Bound(float, 0, 100_000, optional=True),
    "label_smoothing": Bound(float, 0, 1, hi_open=True),
    "input_size": Bound(int, 8, MAX_INPUT_SIZE, optional=True,
                        reason="ResNets are designed for 32 or 224; a side over "
                               f"{MAX_INPUT_SIZE} needs gigabytes per image to train"),
    "val_fraction": Bound(float, 0, 1, lo_open=True, hi_open=True, optional=True),
    "test_fraction": Bound(float, 0, 1, lo_open=True, hi_open=True, optional=True),
    "seed": Bound(int, 0, 2**32 - 1, reason="NumPy's generators take 32-bit seeds"),
    "workers": Bound(int, 0, 256),
    "threads": Bound(int, 0, 1024),
    "max_steps": Bound(int, 1, 10**12, optional=True),
}


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_bound(name: str, value: Any) -> None:
    """Raise :class:`BadOption` unless ``value`` is a finite number of the right kind in range."""
    problem = bound_problem(name, value)
    if problem:
        raise BadOption(f"{option_flag(name)} {problem}")


def bound_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the option ``name`` ("must be ..."), or None."""
    bound = BOUNDS[name]
    if value is None and bound.optional:
        return None
    number_types = (int,) if bound.kind is int else (int, float)
    if not isinstance(value, number_types) or isinstance(value, bool):
        return f"must be {'an integer' if bound.kind is int else 'a number'}, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if not bound.holds(value):
        return (f"must be in the range {bound.describe()}, got {value}"
                + (f" ({bound.reason})" if bound.reason else ""))
    return None


@dataclass
class TrainConfig:
    """Every choice a run makes; stored in checkpoints as ``train_config``."""

    model: str | None = None  # None: default_model(data)
    data: str | None = None  # folder, .npz or dataset layout; None: the embedded digits
    epochs: int | None = None  # None: default_epochs(training images)
    batch_size: int | None = None  # per process; None: default_batch_size(training images)
    lr: float | None = None  # None: default_lr(optimizer, batch_size, init_weights)
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY[optimizer]
    optimizer: str | None = None  # None: adamw for small_data(), else sgd
    momentum: float = 0.9
    warmup_epochs: float | None = None  # None: default_warmup(training images)
    label_smoothing: float = 0.1
    input_size: int | None = None  # None: default_input_size(model, the data's image size)
    stem: str | None = None  # None: default_stem(model, input_size)
    seed: int = 0
    val_fraction: float | None = None  # None: split_fractions(data)
    test_fraction: float | None = None  # None: split_fractions(data)
    augment: bool = True  # random jitter (datasets.Augment), flips only with hflip
    jitter: str | None = None  # None: default_jitter(image size, input size, own data)
    downsample: str | None = None  # None: OWN_DATA_DOWNSAMPLE for the own-data default model
    hflip: bool = False  # random horizontal flips: only the user knows the classes allow them
    init_weights: str | None = None
    device: str = "auto"
    workers: int = 0
    threads: int = 0  # CPU threads per process; 0: chosen by cpu_thread_count
    max_steps: int | None = None  # stop early after this many optimiser steps (smoke tests)

    def resolved(self, image_size: int | None = None, train_images: int | None = None,
                 world_size: int = 1) -> TrainConfig:
        """Check the numbers and fill every default.

        ``image_size`` is the side of the data's images (the digits' 8 when ``data`` is None)
        and ``train_images`` the size of the training split, shared by ``world_size``
        processes; without them the input size is the architecture's design size, the epochs
        DEFAULT_EPOCHS and the batch DEFAULT_BATCH_SIZE.
        """
        if self.optimizer is not None and self.optimizer not in DEFAULT_LR:
            raise BadOption(f"unknown optimizer {self.optimizer!r}: choose sgd or adamw")
        for name in BOUNDS:
            check_bound(name, getattr(self, name))
        for name, value in (("data", self.data), ("init_weights", self.init_weights)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise BadOption(f"{option_flag(name)} must be a path, got {value!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise BadOption(f"momentum must be in [0, 1), got {self.momentum!r}")
        val_fraction, test_fraction = split_fractions(self)
        if val_fraction + test_fraction >= 0.9:
            raise BadOption(f"validation + test fractions ({val_fraction} + "
                            f"{test_fraction}) leave too little to train on; keep their "
                            "sum below 0.9")
        if self.hflip and self.data is None:
            raise BadOption("--hflip: a mirrored digit is not the same digit; flips are for "
                            "classes a mirror image leaves the same")
        if self.stem is not None and self.stem not in STEMS:
            raise BadOption(f"--stem must be one of {', '.join(STEMS)}")
        if self.jitter is not None and self.jitter not in JITTERS:
            raise BadOption(f"--jitter must be one of {', '.join(JITTERS)}")
        if self.downsample is not None and self.downsample not in DOWNSAMPLING:
            raise BadOption(f"--downsample must be one of {', '.join(DOWNSAMPLING)}")
        arch = get_architecture(self.model or default_model(self.data))
        downsample = self._downsample(arch)
        if image_size is None and self.data is None:
            image_size = DIGITS_IMAGE_SIZE
        small = small_data(arch.name, train_images, self.init_weights)
        input_size = self.input_size or default_input_size(arch.name, image_size, small)
        optimizer = self.optimizer or (SMALL_DATA_OPTIMIZER if small else "sgd")
        stem = self._stem(arch, input_size)
        epochs = self.epochs or (SMALL_DATA_EPOCHS if small else default_epochs(train_images))
        per_process = math.ceil(train_images / world_size) if train_images else None
        batch_size = self.batch_size or default_batch_size(per_process)
        lr = self.lr or default_lr(optimizer, batch_size, bool(self.init_weights))
        return dataclasses.replace(
            self, model=arch.name, lr=lr, epochs=epochs, input_size=input_size, stem=stem,
            downsample=downsample,
            jitter=self.jitter or default_jitter(image_size, input_size, own_data(self.data)),
            optimizer=optimizer, val_fraction=val_fraction, test_fraction=test_fraction,

            batch_size=batch_size,
            # Plain strings: a checkpoint carries the config and is read with weights_only.
            data=None if self.data is None else os.fspath(self.data),
            init_weights=None if self.init_weights is None else os.fspath(self.init_weights),
            warmup_epochs=(default_warmup(train_images) if self.warmup_epochs is None
                           else self.warmup_epochs),
            weight_decay=(DEFAULT_WEIGHT_DECAY[optimizer] if self.weight_decay is None
                          else self.weight_decay))

    def _stem(self, arch: Architecture, input_size: int) -> str:
        try:
            return check_stem(arch, self.stem or default_stem(arch.name, input_size))
        except ValueError as exc:
            raise UserError(f"--stem {self.stem}: {exc}") from None

    def _downsample(self, arch: Architecture) -> str:
        """As asked, else OWN_DATA_DOWNSAMPLE for the own-data default model, else the paper's."""
        own = self.model is None and arch.name == OWN_DATA_MODEL
        try:
            return check_downsample(arch, self.downsample or (OWN_DATA_DOWNSAMPLE if own else None))
        except ValueError as exc:
            raise BadOption(f"--downsample {self.downsample}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A saved configuration; one saved before --jitter existed had the affine jitter."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"jitter": "affine", **{k: v for k, v in data.items() if k in known}})


def own_data(data: Any) -> bool:
    """A folder or arrays of your own: not the embedded digits, not MNIST / CIFAR as stored."""
    return data is not None and detect_layout(data) is None


def default_model(data: Any) -> str:
    """OWN_DATA_MODEL for your own folder or arrays, DEFAULT_MODEL for the embedded digits and
    the stored datasets (MNIST, CIFAR...)."""
    return OWN_DATA_MODEL if own_data(data) else DEFAULT_MODEL


def default_jitter(image_size: int | None, input_size: int, own: bool = True) -> str:
    """"shift" for your own images trained at their own size or smaller: the affine jitter's
    resampling averages neighbouring pixels, so training images would be smoother than the
    test images (on noisy textures it cost 5.8 points, docs/training.md), while whole-pixel
    shifts keep each pixel. "affine" where the images are upscaled to the input size (they
    are resampled anyway), and for the digits and the stored datasets, whose figures rest on
    it (the MNIST stand-in: 98.8 % with it, 98.55 % with shifts)."""
    upscaled = image_size is not None and image_size < input_size
    return "shift" if own and not upscaled else "affine"


def split_fractions(config: TrainConfig) -> tuple[float, float]:
    """(validation, test) shares of the data: as asked, else DEFAULT_VAL_FRACTION and a test
    share of OWN_DATA_TEST_FRACTION for ``--data``, DIGITS_TEST_FRACTION for the digits. (A
    dataset with a test split of its own ignores the test share.)"""
    test = OWN_DATA_TEST_FRACTION if config.data is not None else DIGITS_TEST_FRACTION
    return (DEFAULT_VAL_FRACTION if config.val_fraction is None else config.val_fraction,
            test if config.test_fraction is None else config.test_fraction)


def small_data(model: str, train_images: int | None, init_weights: Any = None) -> bool:
    """ResNet-18..152 trained from scratch on a few hundred images (:data:`SMALL_DATA_IMAGES`):
    they then get 32 px, AdamW and 30 epochs, what makes them worth typing there."""
    return (get_architecture(model).kind == "imagenet" and not init_weights
            and train_images is not None and 0 < train_images <= SMALL_DATA_IMAGES)


def default_input_size(model: str, image_size: int | None, small: bool = False) -> int:
    """The data's own image size, within [MIN_AUTO_INPUT_SIZE, the architecture's design size].

    MNIST's 28x28 trains at 28, CIFAR's 32x32 at 32, the 8x8 digits at 16 (upsampling further
    adds no information but multiplies the work; measured: docs/training.md), photographs at
    the design size (224 for resnet18..152, 32 for resnet20..110). Without an image size: the
    design size.
    """
    arch = get_architecture(model)
    if image_size is None:
        return arch.input_size
    size = max(MIN_AUTO_INPUT_SIZE, min(int(image_size), arch.input_size))
    if small and size <= SMALL_STEM_MAX_INPUT:  # where the small stem would run at full size
        size = min(size, max(MIN_AUTO_INPUT_SIZE, SMALL_DATA_INPUT))
    return size


def default_stem(model: str, input_size: int) -> str:
    """ImageNet models: the small stem for inputs up to SMALL_STEM_MAX_INPUT px, where the
    ImageNet stem's 4x reduction would leave layer4 with 1x1 (or less) to work on."""
    arch = get_architecture(model)
    if arch.kind != "imagenet" or input_size <= SMALL_STEM_MAX_INPUT:
        return "small"
    return "imagenet"


def default_epochs(train_images: int | None) -> int:
    """DEFAULT_EPOCHS, or fewer on a large training split: enough to show about
    EPOCH_BUDGET_IMAGES images, and at least MIN_DEFAULT_EPOCHS (MNIST's 54,000: 2)."""
    if not train_images:
        return DEFAULT_EPOCHS
    return max(MIN_DEFAULT_EPOCHS,
               min(DEFAULT_EPOCHS, math.ceil(EPOCH_BUDGET_IMAGES / train_images)))


def default_batch_size(train_images: int | None) -> int:
    """DEFAULT_BATCH_SIZE, or on a small training split (per process) the batch that gives
    MIN_STEPS_PER_EPOCH steps per epoch, at least MIN_DEFAULT_BATCH_SIZE: 114 images -> 16.

    One or two steps per epoch (114 images in batches of 64) leave BatchNorm's running
    statistics, which validation and test use, far from the model's: measured on a 163-image
    four-class dataset, resnet20 validated at chance (loss 4646) after 3 epochs and reached
    82 % test top-1 where batches of 16 reached 100 % (docs/training.md).
    """
    if not train_images:
        return DEFAULT_BATCH_SIZE
    return max(MIN_DEFAULT_BATCH_SIZE,
               min(DEFAULT_BATCH_SIZE, train_images // MIN_STEPS_PER_EPOCH))


def default_lr(optimizer: str, batch_size: int, fine_tune: bool = False) -> float:
    """DEFAULT_LR; SGD's scaled with the batch below DEFAULT_BATCH_SIZE (the linear scaling
    rule: 0.025 for batches of 16); FINE_TUNE_LR_FACTOR times that from --init-weights."""
    lr = DEFAULT_LR[optimizer]
    if optimizer == "sgd" and batch_size < DEFAULT_BATCH_SIZE:
        lr *= batch_size / DEFAULT_BATCH_SIZE
    return lr * (FINE_TUNE_LR_FACTOR if fine_tune else 1.0)


def default_warmup(train_images: int | None) -> float:
    """One warm-up epoch, or a tenth of the default run where that is shorter than ten epochs
    (MNIST: 0.2). It follows the data, not --epochs, so a resumed run keeps its schedule."""
    return min(DEFAULT_WARMUP_EPOCHS, default_epochs(train_images) / 10)
