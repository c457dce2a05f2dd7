"""The training loop: data in, a self-describing checkpoint and a run folder out.

A run folder holds ``last.pt`` (everything needed to resume), ``best.pt`` (best validation
accuracy, what ``resnet-export --checkpoint`` takes), ``metrics.jsonl`` (one line per epoch),
``curves.png`` and ``summary.json`` (test-set figures). Under ``torchrun`` the same code runs with
DistributedDataParallel; only rank 0 writes files, shows progress and evaluates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..core.checkpoint import Checkpoint, load_checkpoint, load_state_into, save_checkpoint
from ..core.errors import UnknownModelError, UserError, printable
from ..core.fileio import atomic_path, write_json
from ..core.models import ModelSpec
from ..data import (
    TrainingData,
    describe_source,
    load_training_data,
    scan,
    source_name,
    split_of,
)
from .adapt import load_init_weights
from .config import RESUME_CHANGES, TrainConfig, default_notes
from .datasets import ImageDataset
from .devices import Processes, cpu_thread_count, cpu_threads, pick_device, process_group
from .monitor import Monitor, train_longer
from .plots import format_confusion, plot_curves
from .rundir import claim_resumed, claim_run_dir, holds_run, resolve_run_dir, resume_checkpoint_path
from .setup import (
    Progress,
    check_batch_memory,
    loaders,
    model_spec,
    place_model,
    restore,
)
from .steps import build_optimizer, evaluate, train_one_epoch, warmup_cosine


@dataclass
class TrainResult:
    """What a run leaves behind (rank 0; other ranks get an empty summary and no model)."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None  # the best model, as evaluated on the test split


def run_training(config: TrainConfig | None, out: str | os.PathLike | None = None,
                 resume: str | os.PathLike | None = None, overwrite: bool = False,
                 echo: Callable[[str], Any] = print,
                 changes: dict[str, Any] | None = None,
                 progress: bool | None = None) -> TrainResult:
    """Train a model from ``config``, or resume the run at ``resume`` with a few ``changes``.

    Under torchrun every process calls this with the same arguments. A resumed run keeps its
    saved configuration except for :data:`RESUME_CHANGES` given in ``changes``. ``progress``
    shows progress bars (None: only when stderr is a terminal, so a log is not flooded).
    """
    started = time.perf_counter()
    procs = Processes.from_env()
    resumed = None
    if resume is not None:
        resumed = load_checkpoint(resume_checkpoint_path(resume))
        if "optimizer" not in resumed.meta or not isinstance(resumed.meta.get("train_config"),
                                                               dict):
            raise UserError(f"{resumed.path} cannot be resumed: it has no optimiser state "
                            "(resume from a run's last.pt)")
        unknown = set(changes or {}) - set(RESUME_CHANGES)
        if unknown:
            raise UserError(f"a resumed run cannot change {', '.join(sorted(unknown))}")
        saved = TrainConfig.from_dict(resumed.meta["train_config"])
        try:
            saved.resolved()
        except (UserError, UnknownModelError) as exc:  # the file's fault: exit status 1
            raise UserError(f"{resumed.path} holds a bad training configuration: {exc}"
                            ) from None
        # a run from before the stem option existed has the stem its model was built with
        config = dataclasses.replace(saved, stem=saved.stem or resumed.spec.stem,
                                     **{"max_steps": None, **(changes or {})})
        run_dir = resumed.path.parent
    elif config is None:
        raise ValueError("run_training needs a config or a run to resume")
    asked = config
    checked = config.resolved()  # bad options fail here, before the data is read
    if resumed is not None and resumed.meta.get("epoch", 0) >= checked.epochs \
            and _summarised(run_dir, resumed.meta):
        raise UserError(f"{resumed.path} already finished {resumed.meta['epoch']} of "
                        f"{checked.epochs} epochs: pass a larger --epochs to train longer")
    # (Trained but not summarised, e.g. killed while testing: _fit goes straight to _finish.)
    dataset = (resumed.meta["dataset"] if resumed is not None else
               describe_source(config.data, config.seed, config.val_fraction,
                               config.test_fraction))
    claim = None  # rank 0 holds the run folder from here to the end (see rundir.RunClaim)
    if resumed is None and procs.is_main:
        claim = claim_run_dir(out, checked, overwrite, source_name(dataset))
        run_dir = claim.path
    elif resumed is None:
        run_dir = resolve_run_dir(out, checked, overwrite, source_name(dataset),
                                  ignore_claims=True)
    elif procs.is_main:
        claim = claim_resumed(run_dir)
    try:
        return _prepare_and_fit(config, asked, dataset, run_dir, resumed, procs, started, echo,
                                progress)
    finally:
        if claim is not None:
            claim.release()


def _prepare_and_fit(config: TrainConfig, asked: TrainConfig, dataset: dict[str, Any],
                     run_dir: Path, resumed: Checkpoint | None, procs: Processes,
                     started: float, echo: Callable[..., Any],
                     progress: bool | None) -> TrainResult:
    """Read the data, then train: everything a run does while it holds its folder."""
    device = pick_device(config.device, procs)
    threads = cpu_thread_count(procs, config.threads)
    scanned = scan(dataset)
    train_images = len(split_of(scanned, dataset).train)
    config = config.resolved(scanned.image_size, train_images, procs.world_size)
    notes = [] if resumed is not None else default_notes(asked, config, scanned.image_size,
                                                          train_images)
    data = load_training_data(dataset, config.input_size, scanned)
    show = sys.stderr.isatty() if progress is None else progress
    with process_group(procs, device), cpu_threads(threads):
        if procs.distributed:
            dist.barrier()  # every rank has checked the run folder before rank 0 writes to it
        return _fit(_Fit(config, data, run_dir, resumed, procs, device, threads, started, echo,
                         notes, show))


def _summarised(run_dir: Path, meta: dict[str, Any]) -> bool:
    """Whether summary.json describes the run as last.pt has it (the finishing steps ran)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(summary, dict) and summary.get("epochs") == meta.get("epoch")
            and summary.get("steps") == meta.get("step"))


@contextlib.contextmanager
def _writing(path: Path, kept: str) -> Iterator[None]:
    """A failed write to the run folder (read-only, full, gone) as one line saying what is kept.

    Every file is written to a temporary name and renamed when complete, so what was there
    before is intact.
    """
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; {kept}") from None


@dataclass
class _Fit:
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


def _fit(run: _Fit) -> TrainResult:
    config, data, run_dir, resumed, procs = run.config, run.data, run.run_dir, run.resumed, \
        run.procs
    device, threads, started, echo = run.device, run.threads, run.started, run.echo
    notes, show_progress = run.notes, run.show_progress
    main = procs.is_main
    # Everything shown is escaped, newlines included: class names, data and folder names come
    # from the user's files and may hold terminal control characters, or a newline that would
    # forge a line of results. (Text of several lines is said one line at a time.)
    say = (lambda text: echo(printable(text))) if main else (lambda *a, **k: None)
    spec = model_spec(config, data, resumed)
    torch.manual_seed(config.seed)
    model = spec.build()
    if resumed is None and config.init_weights:
        for note in load_init_weights(model, config):
            say(f"init weights: {note}")
    check_batch_memory(model, spec, config, data, procs, device)
    model, train_model = place_model(model, procs, device)
    train_loader, eval_loaders = loaders(data, spec, config, procs, device)

    optimizer = build_optimizer(model, config)
    steps_per_epoch = len(train_loader)
    scheduler = warmup_cosine(optimizer, round(config.warmup_epochs * steps_per_epoch),
                              config.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    progress = Progress()
    if resumed is not None:
        progress = restore(resumed, model, optimizer, scheduler, scaler)

    log_path = run_dir / "metrics.jsonl"
    if main:  # also the check that the run folder can be written, before any training
        with _writing(run_dir, "nothing was trained"):
            run_dir.mkdir(parents=True, exist_ok=True)
            if resumed is None and holds_run(run_dir):  # --overwrite: the replaced run's
                for stale in ("summary.json", "curves.png"):  # results go now, its
                    (run_dir / stale).unlink(missing_ok=True)  # checkpoints at epoch 1
            with atomic_path(log_path) as tmp:  # a fresh log, or the resumed run's epochs so far
                tmp.write_text("".join(json.dumps(h) + "\n" for h in progress.history))
    _say_setup(run, spec, progress, train_loader.batch_size, steps_per_epoch, say)
    monitor = Monitor(data.num_classes, data.labels["val"], config)

    steps_left = config.max_steps  # per invocation
    for epoch in range(progress.epoch, config.epochs):
        if steps_left is not None and steps_left <= 0:
            break
        epoch_started = time.perf_counter()
        assert isinstance(train_loader.sampler, DistributedSampler)  # as _loaders made it
        assert isinstance(train_loader.dataset, ImageDataset)
        train_loader.sampler.set_epoch(epoch)
        train_loader.dataset.set_epoch(epoch)
        stats = train_one_epoch(train_model, train_loader, optimizer, scheduler, criterion, device,
                                scaler, steps_left, progress=main and show_progress,
                                desc=f"epoch {epoch + 1}/{config.epochs}")
        progress.epoch, progress.step = epoch + 1, progress.step + stats.steps
        if steps_left is not None:
            steps_left -= stats.steps
        if not math.isfinite(stats.loss):
            raise _diverged(f"the loss is not finite ({stats.loss}) by step {progress.step} "
                            f"in epoch {epoch + 1}", config, run_dir, epoch)
        monitor.check_training(stats.loss, epoch + 1, config)  # same on every rank
        if not main:
            continue  # rank 0 alone validates and writes; the others go on to the next epoch
        val = evaluate(model, eval_loaders["val"], device, data.num_classes)
        if not math.isfinite(val.loss):  # the last step broke the weights
            raise _diverged(f"the validation loss is not finite ({val.loss}) after epoch "
                            f"{epoch + 1}", config, run_dir, epoch)
        monitor.check_validation(val.loss, epoch + 1)
        record = {"epoch": epoch + 1, "step": progress.step,
                  "lr": optimizer.param_groups[0]["lr"],
                  "train_loss": round(stats.loss, 6), "train_top1": round(stats.top1, 6),
                  "val_loss": round(val.loss, 6), "val_top1": round(val.top1, 6),
                  "epoch_time_s": round(time.perf_counter() - epoch_started, 3)}
        progress.history.append(record)
        improved = progress.improves(val.top1, val.loss)
        _save_epoch(run, spec, model, progress, record, improved, val,
                    dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         scaler=scaler.state_dict(), rng_state=torch.get_rng_state()))
        line = (f"epoch {epoch + 1}/{config.epochs}  train loss {stats.loss:.4f} "
                f"acc {stats.top1:.2%}  val loss {val.loss:.4f} acc {val.top1:.2%}  "
                f"lr {record['lr']:.4g}  {record['epoch_time_s']:.1f}s")
        if show_progress:
            tqdm.write(line)  # above the progress bar
        else:
            say(line)
        warning = monitor.after_epoch(progress.best[0], epoch + 1)
        if warning:
            say(f"warning: {warning}")
    if procs.distributed:
        dist.barrier()
    if not main:
        return TrainResult(run_dir)
    return _finish(config, data, spec, run_dir, progress, eval_loaders["test"], device, threads,
                   procs, started, say, notes, monitor)


def _say_setup(run: _Fit, spec: ModelSpec, progress: Progress, batch: int,
               steps_per_epoch: int, say: Callable[[str], Any]) -> None:
    """What a run starts with: the data's notes, what it trains (or that it only finishes), the
    splits, the defaults chosen for this data and a batch smaller than asked."""
    config, data, run_dir = run.config, run.data, run.run_dir
    for note in data.notes:
        say(note)
    if run.resumed is not None and progress.epoch >= config.epochs:
        say(f"finishing {run_dir}: training ended at epoch {progress.epoch}; testing best.pt "
            "and writing the curves and summary")
    else:
        _announce_run(spec, data, config, progress, run.device, run.procs, run.threads, run_dir,
                      run.resumed, say)
    counts = data.counts()
    if data.dataset.get("kind") == "layout":
        say(f"test split: {data.splits['test']['from']} ({counts['test']} images); validation: "
            f"{data.splits['val']['from']}")
    if run.notes:
        say("defaults for this data: " + "; ".join(phrase for phrase, _ in run.notes) + " ("
            + ", ".join(option for _, option in run.notes) + " to change)")
    if batch < config.batch_size:
        say(f"batch {batch}: the training split holds {counts['train']} images "
            f"({steps_per_epoch} step{'s' if steps_per_epoch != 1 else ''} per epoch)")


def _save_epoch(run: _Fit, spec: ModelSpec, model: nn.Module, progress: Progress,
                record: dict[str, Any], improved: bool, val: Any,
                state: dict[str, Any]) -> None:
    """best.pt (when validation improved), last.pt (with the optimiser's state) and the log line
    of one epoch; a failed write says which checkpoints are intact."""
    run_dir, data, epoch = run.run_dir, run.data, record["epoch"] - 1
    extra = dict(dataset=data.dataset, train_config=run.config.to_dict())
    if improved:
        kept = (f"best.pt (epoch {progress.best_epoch}) and last.pt (epoch {epoch}) are as "
                "they were" if epoch > 0 else "no epoch was saved")
        progress.best, progress.best_epoch = (val.top1, -val.loss), epoch + 1
        with _writing(run_dir / "best.pt", kept):
            save_checkpoint(run_dir / "best.pt", model, spec, data.class_names,
                            metrics=record, epoch=epoch + 1, **extra)
    kept = (f"last.pt (epoch {epoch}) is as it was, best.pt holds epoch "
            f"{progress.best_epoch}" if epoch > 0 else
            f"only best.pt (epoch {progress.best_epoch}) was saved")
    with _writing(run_dir / "last.pt", kept):
        save_checkpoint(run_dir / "last.pt", model, spec, data.class_names, metrics=record,
                        **state, **progress.saved(), **extra)
    log_path = run_dir / "metrics.jsonl"
    with _writing(log_path, f"last.pt holds epoch {epoch + 1}; --resume rewrites the log"):
        with open(log_path, "a") as log:
            log.write(json.dumps(record) + "\n")


def _announce_run(spec: ModelSpec, data: TrainingData, config: TrainConfig, progress: Progress,
              device: torch.device, procs: Processes, threads: int, run_dir: Path,
              resumed: Checkpoint | None,
              say: Callable[[str], Any]) -> None:
    counts = data.counts()
    say(f"{'resuming' if resumed else 'training'} {spec.name} on {source_name(data.dataset)} "
        f"({counts['train']} train / {counts['val']} val / {counts['test']} test images, "
        f"{data.num_classes} classes, {spec.in_chans}x{spec.input_size}x{spec.input_size}) "
        f"on {device}" + (f" x{procs.world_size} processes" if procs.distributed else "")
        + f", {threads} thread{'s' if threads != 1 else ''}, "
        f"epochs {progress.epoch + 1}..{config.epochs} -> {run_dir}")


def _diverged(what: str, config: TrainConfig, run_dir: Path, epochs_saved: int) -> UserError:
    """The line that stops a diverged run: nothing of the diverged epoch is saved."""
    if epochs_saved:
        again = (f"last.pt still holds epoch {epochs_saved}, but resuming repeats the same "
                 f"steps: start again with --overwrite")
    else:
        again = f"nothing was saved, so --out {run_dir} can be used again as it is"
    return UserError(f"training diverged: {what}; lower --lr (it was {config.lr:g}) or raise "
                     f"--warmup-epochs (it was {config.warmup_epochs:g}); {again}")


def _finish(config: TrainConfig, data: TrainingData, spec: ModelSpec, run_dir: Path,
            progress: Progress, test_loader: DataLoader, device: torch.device, threads: int,
            procs: Processes, started: float, say: Callable[[str], Any],
            notes: list[tuple[str, str]], monitor: Monitor) -> TrainResult:
    """Test the best checkpoint, record the figures in it, and write curves and summary."""
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    best = load_checkpoint(best_path)
    model = spec.build()
    load_state_into(model, best.state_dict, str(best_path))
    model.to(device)
    test = evaluate(model, test_loader, device, data.num_classes)
    test_counts = np.bincount(data.labels["test"], minlength=data.num_classes)
    test_chance = float(test_counts.max() / max(test_counts.sum(), 1))
    warnings = list(monitor.warnings)
    if monitor.near_chance(test.top1, test_chance):
        warnings.append(f"test accuracy {test.top1:.1%} is near chance (always answering the "
                        f"commonest class gives {test_chance:.1%}): this model has not learned "
                        "the task")
    metrics = {**best.meta["metrics"], "test_loss": round(test.loss, 6),
               "test_top1": round(test.top1, 6)}
    kept = (f"the trained epochs are safe in last.pt and best.pt: once the folder can be "
            f"written, resnet-train --resume {run_dir} redoes only the test, curves and "
            "summary")
    with _writing(best_path, kept):
        save_checkpoint(best_path, model, spec, data.class_names, metrics=metrics,
                        epoch=best.meta["epoch"], dataset=best.meta["dataset"],
                        train_config=best.meta["train_config"])
    history = progress.history
    if history:
        extras = [name for name, on in (("label smoothing", config.label_smoothing > 0),
                                        ("augmented", config.augment)) if on]
        with _writing(run_dir / "curves.png", kept):
            plot_curves(history, run_dir / "curves.png",
                        "train" + (f" ({', '.join(extras)})" if extras else ""))
    summary = {
        "model": spec.name, "spec": spec.to_dict(), "dataset": data.dataset,
        "class_names": data.class_names, "counts": data.counts(), "splits": data.splits,
        "image_size": data.image_size,
        "defaults_chosen": [phrase for phrase, _ in notes], "warnings": warnings,
        "epochs": progress.epoch, "epochs_planned": config.epochs, "steps": progress.step,
        "best_epoch": progress.best_epoch, "best_val_top1": round(progress.best[0], 6),
        "test_top1": round(test.top1, 6), "test_loss": round(test.loss, 6),
        "per_class_top1": dict(zip(data.class_names, test.per_class_top1)),
        "confusion_matrix": test.confusion,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "device": str(device), "world_size": procs.world_size, "threads": threads,
        "torch_version": torch.__version__, "train_config": config.to_dict(),
        "checkpoints": {"best": str(best_path), "last": str(last_path)},
        "metrics_log": str(run_dir / "metrics.jsonl"), "curves": str(run_dir / "curves.png"),
    }
    with _writing(run_dir / "summary.json", kept):
        write_json(run_dir / "summary.json", summary)
    say(f"test top-1 {test.top1:.2%} ({len(data.labels['test'])} images, best epoch "
        f"{progress.best_epoch}); per class: "
        + ", ".join(f"{n} {v:.1%}" for n, v in zip(data.class_names, test.per_class_top1)))
    if data.num_classes <= 20:
        for line in format_confusion(test.confusion, data.class_names).split("\n"):
            say(line)
    if warnings and warnings[-1] not in monitor.warnings:
        say(f"warning: {warnings[-1]}")
    longer = train_longer(progress, config, run_dir) if monitor.judge else None
    if longer:
        summary["hints"] = [longer]
        with _writing(run_dir / "summary.json", kept):
            write_json(run_dir / "summary.json", summary)
        say(f"note: {longer}")
    say(f"wrote {best_path}, {last_path}, {run_dir / 'summary.json'} in "
        f"{summary['wall_time_s']:.1f}s")
    return TrainResult(run_dir, summary, model.eval())


__all__ = ["TrainResult", "run_training"]
