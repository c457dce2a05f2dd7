"""What a training run is asked to do: the configuration, its defaults and checks."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from ..core.errors import BadOption
from ..core.models import get_architecture

RESUME_CHANGES = ("epochs", "device", "workers", "threads", "max_steps")
# The files that make a folder hold a run (with a log that is not empty: see rundir.holds_run)
RUN_FILES = ("last.pt", "best.pt", "summary.json")
DIGITS_INPUT_SIZE = 16
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
MAX_INPUT_SIZE = 2048


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
    "epochs": Bound(int, 1, 100_000),
    "batch_size": Bound(int, 2, 65_536, reason="BatchNorm needs at least 2 images per batch; "
                        "a larger batch does not fit in memory at any ResNet input size"),
    "lr": Bound(float, 0, None, lo_open=True, optional=True),
    "weight_decay": Bound(float, 0, None, optional=True),
    "warmup_epochs": Bound(float, 0, 100_000),
    "label_smoothing": Bound(float, 0, 1, hi_open=True),
    "input_size": Bound(int, 8, MAX_INPUT_SIZE, optional=True,
                        reason="ResNets are designed for 32 or 224; a side over "
                               f"{MAX_INPUT_SIZE} needs gigabytes per image to train"),
    "val_fraction": Bound(float, 0, 1, lo_open=True, hi_open=True),
    "test_fraction": Bound(float, 0, 1, lo_open=True, hi_open=True),
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

    model: str = "resnet20"
    data: str | None = None  # folder or .npz; None: the embedded digits
    epochs: int = 15
    batch_size: int = 64  # per process
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY[optimizer]
    optimizer: str = "sgd"
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    input_size: int | None = None  # None: default_input_size(model, data)
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    augment: bool = True
    init_weights: str | None = None
    device: str = "auto"
    workers: int = 0
    threads: int = 0  # CPU threads per process; 0: chosen by cpu_thread_count
    max_steps: int | None = None  # stop early after this many optimiser steps (smoke tests)

    def resolved(self) -> "TrainConfig":
        """Fill the optimiser-dependent defaults and check the numbers.

        A value of the wrong type or out of its range (:data:`BOUNDS`) raises :class:`BadOption`
        (a :class:`UserError`; exit status 2 on the command line).
        """
        if self.optimizer not in DEFAULT_LR:
            raise BadOption(f"unknown optimizer {self.optimizer!r}: choose sgd or adamw")
        for name in BOUNDS:
            check_bound(name, getattr(self, name))
        for name, value in (("data", self.data), ("init_weights", self.init_weights)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise BadOption(f"{option_flag(name)} must be a path, got {value!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise BadOption(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise BadOption(f"validation + test fractions ({self.val_fraction} + "
                            f"{self.test_fraction}) leave too little to train on; keep their "
                            "sum below 0.9")
        arch = get_architecture(self.model)
        return dataclasses.replace(
            self, model=arch.name,
            # Plain strings: a checkpoint carries the config and is read with weights_only.
            data=None if self.data is None else os.fspath(self.data),
            init_weights=None if self.init_weights is None else os.fspath(self.init_weights),
            lr=DEFAULT_LR[self.optimizer] if self.lr is None else self.lr,
            weight_decay=(DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None
                          else self.weight_decay),
            input_size=self.input_size or default_input_size(arch.name, self.data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def default_input_size(model: str, data: str | None) -> int:
    """The architecture's design size, except 16 for small-image ResNets on the 8x8 digits.

    Upsampling 8x8 digits to 32x32 adds no information but quadruples the work; at 16x16 the
    network still has room for its two stride-2 stages (measured: docs/training.md).
    """
    arch = get_architecture(model)
    return DIGITS_INPUT_SIZE if data is None and arch.kind == "cifar" else arch.input_size
