"""What a run tells the user: what it trains, how long that will take, how to go on after a
stop, and in the end its summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..data import source_name
from .interrupt import resume_command
from .runstate import FitRun, Trainer
from .steps import Evaluation

#: the estimate is taken over this many steps, after this many for warming up
ESTIMATE_WARMUP_STEPS = 1
ESTIMATE_STEPS = 5
#: evaluating an image costs about this share of training on it (forward only, no backward)
EVAL_COST = 1 / 3


def say_setup(run: FitRun, trainer: Trainer) -> None:
    """What a run starts with: the data's notes, what it trains (or that it only finishes), the
    splits, the defaults chosen for this data and a batch smaller than asked."""
    config, data, run_dir, say = run.config, run.data, run.run_dir, trainer.say
    progress, epochs = trainer.progress, int(config.epochs or 0)  # resolved: set
    for note in data.notes:
        say(note)
    if run.resumed is not None and progress.epoch >= epochs:
        say(f"finishing {run_dir}: training ended at epoch {progress.epoch}; testing best.pt "
            "and writing the curves and summary")
    else:
        counts = data.counts()
        where = (f" (epoch {progress.epoch + 1} from step {progress.epoch_step + 1} of "
                 f"{trainer.steps_per_epoch})" if progress.epoch_step else "")
        say(f"{'resuming' if run.resumed else 'training'} {trainer.spec.name} on "
            f"{source_name(data.dataset)} ({counts['train']} train / {counts['val']} val / "
            f"{counts['test']} test images, {data.num_classes} classes, {trainer.spec.in_chans}"
            f"x{trainer.spec.input_size}x{trainer.spec.input_size}) on {run.device}"
            + (f" x{run.procs.world_size} processes" if run.procs.distributed else "")
            + f", {run.threads} thread{'s' if run.threads != 1 else ''}, "
            f"epochs {progress.epoch + 1}..{config.epochs}{where} -> {run_dir}")
    counts = data.counts()
    if data.dataset.get("kind") == "layout":
        say(f"test split: {data.splits['test']['from']} ({counts['test']} images); validation: "
            f"{data.splits['val']['from']}")
    if run.notes:
        say("defaults for this data: " + "; ".join(phrase for phrase, _ in run.notes) + " ("
            + ", ".join(option for _, option in run.notes) + " to change)")
    asked = int(config.batch_size or 0)
    batch = trainer.train_loader.batch_size or asked
    if batch < asked:
        steps = trainer.steps_per_epoch
        say(f"batch {batch}: the training split holds {counts['train']} images "
            f"({steps} step{'s' if steps != 1 else ''} per epoch)")


class Estimate:
    """Times the first steps of a run and says once, early, about how long it will take."""

    def __init__(self, run: FitRun, trainer: Trainer):
        progress, spe = trainer.progress, trainer.steps_per_epoch
        self.steps_per_epoch = spe
        self.steps = (int(run.config.epochs or 0) - progress.epoch) * spe - progress.epoch_step
        if run.config.max_steps is not None:
            self.steps = min(self.steps, run.config.max_steps)
        batch = trainer.train_loader.batch_size or 1
        # validation after each epoch, as a share of an epoch's training
        self.eval_share = EVAL_COST * len(run.data.labels["val"]) / max(1, spe * batch)
        self.tell: Callable[[str], Any] = trainer.tell
        self.times: list[float] = []
        self.done = not run.procs.is_main or self.steps <= 0

    def on_step(self, _steps: int) -> None:
        """Called after every step of the run's first call of train_one_epoch."""
        if self.done:
            return
        self.times.append(time.perf_counter())
        if len(self.times) > ESTIMATE_WARMUP_STEPS + ESTIMATE_STEPS:
            self.say()

    def say(self) -> None:
        """The estimate from the steps timed so far (at least two are needed)."""
        if self.done or len(self.times) < 2:
            return
        self.done = True
        first = min(ESTIMATE_WARMUP_STEPS, len(self.times) - 2)
        timed = self.times[first:]
        per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
        epochs = round(self.steps / max(1, self.steps_per_epoch), 1)
        total = per_step * self.steps * (1 + self.eval_share)
        self.tell(f"estimate: about {format_duration(total)} for {epochs:g} epoch"
                  f"{'s' if epochs != 1 else ''} ({self.steps} steps) on this machine "
                  f"({per_step:.3g} s a step, timed over {len(timed) - 1} steps)")


def format_duration(seconds: float) -> str:
    """"40 s", "3 min", "1.5 h": as a person would round an estimate."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def stopped_line(run: FitRun, trainer: Trainer, saved: bool) -> str:
    """What an interrupted run says: where it stopped and the command that goes on from there."""
    progress = trainer.progress
    if not saved and not (run.run_dir / "last.pt").exists():
        return (f"stopped before anything was saved: run the same command again (--out "
                f"{run.run_dir} can be used as it is)")
    if saved and progress.epoch_step:
        where = (f"epoch {progress.epoch + 1} at step {progress.epoch_step} of "
                 f"{trainer.steps_per_epoch}")
    elif saved:
        where = f"the end of epoch {progress.epoch}"
    else:
        where = "the state last.pt holds"
    return f"stopped: `{resume_command(run.run_dir)}` goes on from {where}"


def run_summary(run: FitRun, trainer: Trainer, test: Evaluation) -> dict[str, Any]:
    """summary.json: the run's data, splits, choices and test figures."""
    data, progress, monitor, run_dir = run.data, trainer.progress, trainer.monitor, run.run_dir
    test_counts = np.bincount(data.labels["test"], minlength=data.num_classes)
    test_chance = float(test_counts.max() / max(test_counts.sum(), 1))
    warnings = list(monitor.warnings)
    if monitor.near_chance(test.top1, test_chance):
        warnings.append(f"test accuracy {test.top1:.1%} is near chance (always answering the "
                        f"commonest class gives {test_chance:.1%}): this model has not learned "
                        "the task")
    return {
        "model": trainer.spec.name, "spec": trainer.spec.to_dict(), "dataset": data.dataset,
        "class_names": data.class_names, "counts": data.counts(), "splits": data.splits,
        "image_size": data.image_size,
        "defaults_chosen": [phrase for phrase, _ in run.notes], "warnings": warnings,
        "epochs": progress.epoch, "epochs_planned": run.config.epochs, "steps": progress.step,
        "best_epoch": progress.best_epoch, "best_val_top1": round(progress.best[0], 6),
        "test_top1": round(test.top1, 6), "test_loss": round(test.loss, 6),
        "per_class_top1": dict(zip(data.class_names, test.per_class_top1)),
        "confusion_matrix": test.confusion,
        "wall_time_s": round(time.perf_counter() - run.started, 2),
        "device": str(run.device), "world_size": run.procs.world_size,
        "threads": run.threads, "torch_version": torch.__version__,
        "train_config": run.config.to_dict(),
        "checkpoints": {"best": str(run_dir / "best.pt"), "last": str(run_dir / "last.pt")},
        "metrics_log": str(run_dir / "metrics.jsonl"), "curves": str(run_dir / "curves.png"),
    }
