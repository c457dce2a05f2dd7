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
from ..core.errors import UnknownModelError, UserError, first_line, printable
from ..core.fileio import atomic_path, write_json
from ..core.hardware import available_memory, format_bytes
from ..core.models import ModelSpec
from ..data import (
    TrainingData,
    channel_stats,
    describe_source,
    load_training_data,
    scan,
    source_name,
    split_of,
)
from .adapt import load_init_weights
from .config import RESUME_CHANGES, TrainConfig, default_notes
from .datasets import Augment, ImageDataset
from .devices import Processes, cpu_thread_count, cpu_threads, pick_device, process_group
from .plots import format_confusion, plot_curves
from .rundir import claim_resumed, claim_run_dir, holds_run, resolve_run_dir, resume_checkpoint_path
from .steps import activation_bytes, build_optimizer, evaluate, train_one_epoch, warmup_cosine


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
class Progress:
    """Where a run stands between epochs; last.pt carries it so --resume can go on."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: tuple[float, float] = (-1.0, -math.inf)  # (val top-1, -val loss) of best.pt
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch

    def improves(self, top1: float, loss: float) -> bool:
        """Better validation accuracy; on a tie, lower validation loss."""
        return (top1, -loss) > self.best

    def saved(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "best_val_top1": self.best[0],
                "best_val_loss": -self.best[1], "best_epoch": self.best_epoch,
                "history": self.history}

    @classmethod
    def from_saved(cls, meta: dict[str, Any]) -> Progress:
        return cls(int(meta["epoch"]), int(meta.get("step", 0)),
                   (float(meta["best_val_top1"]), -float(meta["best_val_loss"])),
                   int(meta["best_epoch"]), list(meta.get("history", [])))


def _model_spec(config: TrainConfig, data: TrainingData, resumed: Checkpoint | None
                ) -> ModelSpec:
    """The resumed run's spec, or a new one with the training split's mean and std."""
    if resumed is None:
        mean, std = channel_stats(data.images["train"])
        return ModelSpec.create(config.model, data.num_classes, data.in_chans, config.input_size,
                                mean=mean, std=std, stem=config.stem)
    spec = resumed.spec
    if spec.in_chans != data.in_chans or spec.num_classes != data.num_classes:
        raise UserError(f"the data no longer matches {resumed.path}'s model "
                        f"({data.in_chans} channels / {data.num_classes} classes now)")
    return spec


def _restore(resumed: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler,
             scaler: torch.amp.GradScaler) -> Progress:
    """Load last.pt's weights and resume state, or say in one line that the state is damaged
    (the loaders of torch's optimiser and schedule trust what they are given)."""
    meta = resumed.meta
    load_state_into(model, resumed.state_dict, str(resumed.path))
    try:
        optimizer.load_state_dict(meta["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        if isinstance(meta.get("rng_state"), torch.Tensor):
            torch.set_rng_state(meta["rng_state"])
        progress = Progress.from_saved(meta)
        rates = [*scheduler.base_lrs, *(group["lr"] for group in optimizer.param_groups)]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in rates):
            raise ValueError(f"learning rates {rates}")
        if scheduler.last_epoch != progress.step:
            raise ValueError(f"the schedule is at step {scheduler.last_epoch!r}, the run at "
                             f"{progress.step}")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise UserError(f"{resumed.path}: its resume state is damaged ({first_line(exc)}); "
                        "start the run again with --overwrite") from None
    return progress


def _check_batch_memory(model: nn.Module, spec: ModelSpec, config: TrainConfig,
                        data: TrainingData, procs: Processes, device: torch.device) -> None:
    """Refuse a batch whose activations alone cannot fit, before the first step tries."""
    batch = min(config.batch_size, math.ceil(len(data.labels["train"]) / procs.world_size))
    per_image = activation_bytes(model, spec.in_chans, spec.input_size,
                                 element_size=2 if device.type == "cuda" else 4)
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = available_memory()
    need = batch * per_image
    if available is not None and need > available:
        raise UserError(f"a batch of {batch} images of {spec.in_chans} x {spec.input_size} x "
                        f"{spec.input_size} needs at least {format_bytes(need)} for "
                        f"{spec.name}'s activations, but only {format_bytes(available)} of "
                        f"{'GPU ' if device.type == 'cuda' else ''}memory is available: lower "
                        "--batch-size or --input-size")


def _place_model(model: nn.Module, procs: Processes,
                 device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(the model, what the training step calls): channels_last and DDP where they apply."""
    model.to(device)
    if device.type == "cuda":
        # Module.to takes memory_format (documented); torch's type stubs do not list it
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if procs.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not procs.distributed:
        return model, model
    # On CPU (no SyncBatchNorm there) each rank normalises its own batch, and DDP's
    # broadcast_buffers keeps every rank's running statistics equal to rank 0's.
    return model, nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


#: the last, partial batch of an epoch is dropped only when it holds less than this share of the
#: epoch's images (or a single image, which BatchNorm cannot normalise)
DROP_LAST_MAX_FRACTION = 0.05


def train_batching(images: int, batch_size: int, world_size: int = 1) -> tuple[int, bool]:
    """(batch size, drop_last) for ``images`` training images shared by ``world_size`` ranks.

    The batch is at most one rank's share. The partial last batch is kept unless it is a small
    fraction of the epoch: dropping it always, as before, threw away 50 of 114 images each
    epoch on a small dataset.
    """
    per_rank = math.ceil(images / world_size)
    batch = max(1, min(batch_size, per_rank))
    remainder = per_rank % batch
    drop = 0 < remainder and (remainder < 2 or remainder <= DROP_LAST_MAX_FRACTION * per_rank)
    return batch, drop


def _loaders(data: TrainingData, spec: ModelSpec, config: TrainConfig, procs: Processes,
             device: torch.device) -> tuple[DataLoader, dict[str, DataLoader]]:
    """A sharded, seeded, augmented training loader and plain validation / test loaders."""
    train_set = ImageDataset(data.images["train"], data.labels["train"], spec.mean, spec.std,
                             Augment() if config.augment else None, config.seed)
    # DistributedSampler even for one process: its order depends only on (seed, epoch), so a
    # resumed run sees the batches an uninterrupted one would have.
    sampler: DistributedSampler[int] = DistributedSampler(
        train_set, num_replicas=procs.world_size, rank=procs.rank, shuffle=True, seed=config.seed)
    common: dict[str, Any] = dict(num_workers=config.workers, pin_memory=device.type == "cuda")
    batch_size, drop_last = train_batching(len(train_set), config.batch_size, procs.world_size)
    train = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                       **common)
    evals = {part: DataLoader(ImageDataset(data.images[part], data.labels[part], spec.mean,
                                           spec.std), batch_size=256, **common)
             for part in ("val", "test")}
    return train, evals


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
    spec = _model_spec(config, data, resumed)
    torch.manual_seed(config.seed)
    model = spec.build()
    if resumed is None and config.init_weights:
        for note in load_init_weights(model, config):
            say(f"init weights: {note}")
    _check_batch_memory(model, spec, config, data, procs, device)
    model, train_model = _place_model(model, procs, device)
    train_loader, eval_loaders = _loaders(data, spec, config, procs, device)

    optimizer = build_optimizer(model, config)
    steps_per_epoch = len(train_loader)
    scheduler = warmup_cosine(optimizer, round(config.warmup_epochs * steps_per_epoch),
                              config.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    progress = Progress()
    if resumed is not None:
        progress = _restore(resumed, model, optimizer, scheduler, scaler)

    log_path = run_dir / "metrics.jsonl"
    if main:  # also the check that the run folder can be written, before any training
        with _writing(run_dir, "nothing was trained"):
            run_dir.mkdir(parents=True, exist_ok=True)
            if resumed is None and holds_run(run_dir):  # --overwrite: the replaced run's
                for stale in ("summary.json", "curves.png"):  # results go now, its
                    (run_dir / stale).unlink(missing_ok=True)  # checkpoints at epoch 1
            with atomic_path(log_path) as tmp:  # a fresh log, or the resumed run's epochs so far
                tmp.write_text("".join(json.dumps(h) + "\n" for h in progress.history))
    for note in data.notes:
        say(note)
    if resumed is not None and progress.epoch >= config.epochs:
        say(f"finishing {run_dir}: training ended at epoch {progress.epoch}; testing best.pt "
            "and writing the curves and summary")
    else:
        _announce_run(spec, data, config, progress, device, procs, threads, run_dir, resumed, say)
    counts = data.counts()
    if data.dataset.get("kind") == "layout":
        say(f"test split: {data.splits['test']['from']} ({counts['test']} images); validation: "
            f"{data.splits['val']['from']}")
    if notes:
        say("defaults for this data: " + "; ".join(phrase for phrase, _ in notes) + " ("
            + ", ".join(option for _, option in notes) + " to change)")
    batch = train_loader.batch_size
    if batch < config.batch_size:
        say(f"batch {batch}: the training split holds {counts['train']} images "
            f"({steps_per_epoch} step{'s' if steps_per_epoch != 1 else ''} per epoch)")
    monitor = Monitor(data.num_classes, data.labels["val"], config)

    saved_extra = dict(dataset=data.dataset, train_config=config.to_dict())
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
        if progress.improves(val.top1, val.loss):
            kept = (f"best.pt (epoch {progress.best_epoch}) and last.pt (epoch {epoch}) are as "
                    "they were" if epoch > 0 else "no epoch was saved")
            progress.best, progress.best_epoch = (val.top1, -val.loss), epoch + 1
            with _writing(run_dir / "best.pt", kept):
                save_checkpoint(run_dir / "best.pt", model, spec, data.class_names,
                                metrics=record, epoch=epoch + 1, **saved_extra)
        kept = (f"last.pt (epoch {epoch}) is as it was, best.pt holds epoch "
                f"{progress.best_epoch}" if epoch > 0 else
                f"only best.pt (epoch {progress.best_epoch}) was saved")
        with _writing(run_dir / "last.pt", kept):
            save_checkpoint(run_dir / "last.pt", model, spec, data.class_names, metrics=record,
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict(), rng_state=torch.get_rng_state(),
                            **progress.saved(), **saved_extra)
        with _writing(log_path, f"last.pt holds epoch {epoch + 1}; --resume rewrites the log"):
            with open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")
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


class Monitor:
    """Watches a run for the two ways it can fail quietly: diverging, or learning nothing.

    A diverging run (training loss not finite, or far above the loss of a guess, or validation
    loss not finite) stops with one line. A run whose validation accuracy stays near chance gets
    one warning line during training and one in the summary, instead of a checkpoint that looks
    like any other; not a run cut short by ``--max-steps`` (a smoke test is not meant to learn).
    """

    def __init__(self, num_classes: int, val_labels: np.ndarray, config: TrainConfig):
        self.guess_loss = math.log(max(num_classes, 2))  # cross-entropy of a uniform guess
        counts = np.bincount(np.asarray(val_labels, dtype=np.int64), minlength=num_classes)
        self.chance = float(counts.max() / max(counts.sum(), 1))  # always the commonest class
        self.check_from = min(3, config.epochs)
        self.judge = config.max_steps is None
        self.fine_tuning = bool(config.init_weights)
        self.warnings: list[str] = []

    def near_chance(self, top1: float, chance: float | None = None) -> bool:
        """Below the lower of twice chance and a quarter of the way from chance to perfect."""
        chance = self.chance if chance is None else chance
        return self.judge and top1 < min(2 * chance, chance + (1 - chance) / 4)

    def check_training(self, loss: float, epoch: int, config: TrainConfig) -> None:
        limit = max(3 * self.guess_loss, self.guess_loss + 3)
        if not math.isfinite(loss) or loss > limit:
            what = "is not finite" if not math.isfinite(loss) else (
                f"is {loss:.3g}, far above the {self.guess_loss:.2f} of a uniform guess")
            raise UserError(f"training diverged in epoch {epoch}: the training loss {what}; "
                            f"lower --lr (now {config.lr:g}) or raise --warmup-epochs")

    def check_validation(self, loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            raise UserError(f"training diverged in epoch {epoch}: the validation loss is not "
                            "finite; lower --lr or raise --warmup-epochs")

    def after_epoch(self, best_top1: float, epoch: int) -> str | None:
        if epoch < self.check_from or self.warnings or not self.near_chance(best_top1):
            return None
        self.warnings.append(
            f"validation accuracy is still near chance after {epoch} epoch"
            f"{'s' if epoch != 1 else ''} (best {best_top1:.1%}; always answering the commonest "
            f"class gives {self.chance:.1%}): the model is not learning. Check the labels, "
            "lower --lr, train longer with --epochs"
            + ("" if self.fine_tuning else ", or start from --init-weights"))
        return self.warnings[-1]


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
    say(f"wrote {best_path}, {last_path}, {run_dir / 'summary.json'} in "
        f"{summary['wall_time_s']:.1f}s")
    return TrainResult(run_dir, summary, model.eval())


__all__ = ["TrainResult", "run_training"]
