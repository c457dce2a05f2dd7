"""What one training run holds once it is set up: the run's settings (:class:`FitRun`), the
objects it trains with (:class:`Trainer`), what it leaves behind (:class:`TrainResult`), and how
a failed write to its folder is said."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.errors import UserError
from ..core.models import ModelSpec
from ..data import TrainingData
from .config import TrainConfig
from .devices import Processes
from .monitor import Monitor
from .setup import Progress


@dataclass
class TrainResult:
    """What a run leaves behind (rank 0; other ranks get an empty summary and no model)."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None  # the best model, as evaluated on the test split


@dataclass
class FitRun:
    """Everything one training run needs once its data and run folder are settled."""

    config: TrainConfig
    data: TrainingData
    run_dir: Path
    resumed: Any  # the checkpoint being resumed, or None
    procs: Processes
    device: torch.device
    threads: int
    started: float  # perf_counter() when the command started
    echo: Callable[[str], None]
    notes: list[tuple[str, str]]  # the defaults chosen for this data: (phrase, option)
    show_progress: bool


@dataclass
class Trainer:
    """The model, its optimiser and schedule, the loaders and where the run stands."""

    spec: ModelSpec
    model: nn.Module
    train_model: nn.Module  # what the step calls: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    train_loader: DataLoader
    steps_per_epoch: int  # of a whole epoch (the loader's length while none is skipped)
    eval_loaders: dict[str, DataLoader]
    progress: Progress
    monitor: Monitor
    say: Callable[[str], Any]  # one escaped line, rank 0 only
    tell: Callable[[str], Any]  # one line of ours, above the progress bar where there is one

    def resume_state(self) -> dict[str, Any]:
        """What last.pt holds besides the weights and progress, for --resume."""
        return dict(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict(), rng_state=torch.get_rng_state())


@contextlib.contextmanager
def writing(path: Path, kept: str) -> Iterator[None]:
    """A failed write to the run folder (read-only, full, gone) as one line saying what is kept.

    Every file is written to a temporary name and renamed when complete, so what was there
    before is intact.
    """
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; {kept}") from None
