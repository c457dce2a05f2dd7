"""What a training run is asked to do: the configuration, its defaults and checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


from ..core.errors import UserError
from ..core.models import get_architecture



RESUME_CHANGES = ("epochs", "device", "workers", "threads", "max_steps")
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "summary.json")
DIGITS_INPUT_SIZE = 16
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}


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
        """Fill the optimiser-dependent defaults and check the numbers."""
        if self.optimizer not in DEFAULT_LR:
            raise UserError(f"unknown optimizer {self.optimizer!r}: choose sgd or adamw")
        checks = [(self.epochs >= 1, "--epochs must be at least 1"),
                  (self.batch_size >= 2, "--batch-size must be at least 2 (BatchNorm needs it)"),
                  (self.warmup_epochs >= 0, "--warmup-epochs cannot be negative"),
                  (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
                  (self.workers >= 0, "--workers cannot be negative"),
                  (self.threads >= 0, "--threads cannot be negative"),
                  (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
                  (self.input_size is None or self.input_size >= 8, "--input-size must be >= 8"),
                  (self.lr is None or self.lr > 0, "--lr must be positive"),
                  (self.weight_decay is None or self.weight_decay >= 0,
                   "--weight-decay cannot be negative")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        arch = get_architecture(self.model)
        return dataclasses.replace(
            self, model=arch.name,
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
