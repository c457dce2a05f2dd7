"""The training loop: data in, a self-describing checkpoint and a run folder out.

A run folder holds ``last.pt`` (everything needed to resume), ``best.pt`` (best validation
accuracy, what ``resnet-export --checkpoint`` takes), ``metrics.jsonl`` (one line per epoch),
``curves.png`` and ``summary.json`` (test-set figures). Under ``torchrun`` the same code runs with
DistributedDataParallel; only rank 0 writes files, shows progress and evaluates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..core.checkpoint import Checkpoint, load_checkpoint, load_state_into, save_checkpoint
from ..core.errors import UnknownModelError, UserError, printable
from ..core.fileio import atomic_path, write_json
from ..data import (
    describe_source,
    load_training_data,
    scan,
    source_name,
    split_of,
)
from .adapt import load_init_weights
from .config import RESUME_CHANGES, TrainConfig, split_fractions
from .datasets import ImageDataset
from .devices import Processes, cpu_thread_count, cpu_threads, pick_device, process_group
from .interrupt import StopRequest, stop_after_step
from .monitor import Monitor, train_longer
from .notes import default_notes
from .plots import format_confusion, plot_curves
from .reporting import Estimate, run_summary, say_setup, stopped_line
from .rundir import claim_resumed, claim_run_dir, holds_run, resolve_run_dir, resume_checkpoint_path
from .runstate import FitRun, Trainer, TrainResult, writing
from .setup import (
    Progress,
    ResumableSampler,
    check_batch_memory,
    loaders,
    model_spec,
    place_model,
    restore,
)
from .steps import (
    EpochOptions,
    EpochStats,
    build_optimizer,
    evaluate,
    train_one_epoch,
    warmup_cosine,
)


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
    checked = config.resolved()  # bad options fail here, before the data is read
    if resumed is not None and resumed.meta.get("epoch", 0) >= checked.epochs \
            and _summarised(run_dir, resumed.meta):
        raise UserError(f"{resumed.path} already finished {resumed.meta['epoch']} of "
                        f"{checked.epochs} epochs: pass a larger --epochs to train longer")
    # (Trained but not summarised, e.g. killed while testing: _fit goes straight to _finish.)
    dataset = (resumed.meta["dataset"] if resumed is not None else
               describe_source(config.data, config.seed, *split_fractions(config)))
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
        return _prepare_and_fit(config, dataset, run_dir, resumed, procs, started, echo,
                                progress)
    finally:
        if claim is not None:
            claim.release()


def _prepare_and_fit(config: TrainConfig, dataset: dict[str, Any], run_dir: Path,
                     resumed: Checkpoint | None, procs: Processes, started: float,
                     echo: Callable[..., Any], progress: bool | None) -> TrainResult:
    """Read the data, then train: everything a run does while it holds its folder. ``config``
    is as asked (defaults not filled in): the defaults line compares the two."""
    asked = config
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
        return _fit(FitRun(config, data, run_dir, resumed, procs, device, threads, started,
                           echo, notes, show))


def _summarised(run_dir: Path, meta: dict[str, Any]) -> bool:
    """Whether summary.json describes the run as last.pt has it (the finishing steps ran)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(summary, dict) and summary.get("epochs") == meta.get("epoch")
            and summary.get("steps") == meta.get("step"))


def _fit(run: FitRun) -> TrainResult:
    """Train the epochs left, then (rank 0) test best.pt and write the summary."""
    trainer = _build(run)
    if run.procs.is_main:  # also the check that the run folder can be written, before training
        _open_run_dir(run, trainer.progress)
    say_setup(run, trainer)
    _train_epochs(run, trainer)
    if run.procs.distributed:
        dist.barrier()
    if not run.procs.is_main:
        return TrainResult(run.run_dir)
    return _finish(run, trainer)


def _build(run: FitRun) -> Trainer:
    """The model (restored when resuming), optimiser, schedule, loaders and monitor."""
    config, data, device, main = run.config, run.data, run.device, run.procs.is_main
    # Everything shown is escaped, newlines included: class names, data and folder names come
    # from the user's files and may hold terminal control characters, or a newline that would
    # forge a line of results. (Text of several lines is said one line at a time.)
    say = (lambda text: run.echo(printable(text))) if main else (lambda *a, **k: None)
    tell = (tqdm.write if run.show_progress else say) if main else say
    spec = model_spec(config, data, run.resumed)
    torch.manual_seed(config.seed)
    model = spec.build()
    if run.resumed is None and config.init_weights:
        for note in load_init_weights(model, config):
            say(f"init weights: {note}")
    check_batch_memory(model, spec, config, data, run.procs, device)
    model, train_model = place_model(model, run.procs, device)
    train_loader, eval_loaders = loaders(data, spec, config, run.procs, device)
    optimizer = build_optimizer(model, config)
    steps_per_epoch = len(train_loader)
    scheduler = warmup_cosine(optimizer, round(config.warmup_epochs * steps_per_epoch),
                              config.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    progress = Progress()
    if run.resumed is not None:
        progress = restore(run.resumed, model, optimizer, scheduler, scaler)
    return Trainer(spec, model, train_model, optimizer, scheduler, scaler,
                   nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), train_loader,
                   steps_per_epoch, eval_loaders, progress,
                   Monitor(data.num_classes, data.labels["val"], config), say, tell)


def _open_run_dir(run: FitRun, progress: Progress) -> None:
    """Create the run folder and write its log: fresh, or the resumed run's epochs so far."""
    run_dir = run.run_dir
    with writing(run_dir, "nothing was trained"):
        run_dir.mkdir(parents=True, exist_ok=True)
        if run.resumed is None and holds_run(run_dir):  # --overwrite: the replaced run's
            for stale in ("summary.json", "curves.png"):  # results go now, its
                (run_dir / stale).unlink(missing_ok=True)  # checkpoints at epoch 1
        with atomic_path(run_dir / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(h) + "\n" for h in progress.history))


def _train_epochs(run: FitRun, trainer: Trainer) -> None:
    """The epochs left (or --max-steps of them). A stop signal ends the step in flight, saves
    last.pt where the run stands and says the command that goes on; then KeyboardInterrupt."""
    steps_left = run.config.max_steps  # per invocation
    estimate = Estimate(run, trainer)
    saved = False
    with stop_after_step(enabled=not run.procs.distributed) as stop:
        try:
            for epoch in range(trainer.progress.epoch, run.config.epochs):
                if (steps_left is not None and steps_left <= 0) or stop():
                    break
                taken = _train_epoch(run, trainer, epoch, steps_left, stop, estimate)
                if steps_left is not None:
                    steps_left -= taken
            if not stop() and trainer.progress.epoch_step:  # --max-steps within an epoch
                trainer.say(stopped_line(run, trainer, True).replace("stopped:", "--max-steps:"))
            if stop():
                if trainer.progress.epoch_step and run.procs.is_main:
                    _save_last(run, trainer, {})  # the partial epoch, not validated
                saved = True
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            trainer.say(stopped_line(run, trainer, saved))
            raise


def _train_epoch(run: FitRun, trainer: Trainer, epoch: int, steps_left: int | None,
                 stop: StopRequest, estimate: Estimate) -> int:
    """Train (the rest of) one epoch, or as many steps as are left; validate and save unless a
    stop signal cut it short. Returns the steps taken."""
    config, progress, loader = run.config, trainer.progress, trainer.train_loader
    started = time.perf_counter()
    sampler, dataset = loader.sampler, loader.dataset
    assert isinstance(sampler, ResumableSampler) and isinstance(dataset, ImageDataset)
    skip = progress.epoch_step if epoch == progress.epoch else 0
    sampler.set_epoch(epoch)
    sampler.start = skip * (loader.batch_size or 1)  # a stopped epoch goes on where it was
    dataset.set_epoch(epoch)
    show = run.procs.is_main and run.show_progress
    stats = train_one_epoch(trainer.train_model, loader, trainer.optimizer, trainer.scheduler,
                            trainer.criterion, run.device, trainer.scaler,
                            EpochOptions(steps_left, show, f"epoch {epoch + 1}/{config.epochs}",
                                         stop, estimate.on_step))
    sampler.start = 0
    estimate.say()  # an epoch shorter than the timed steps: from what it has
    done = skip + stats.steps
    progress.step += stats.steps
    progress.epoch, progress.epoch_step = ((epoch + 1, 0) if done >= trainer.steps_per_epoch
                                           else (epoch, done))
    if not math.isfinite(stats.loss):
        raise _diverged(f"the loss is not finite ({stats.loss}) by step {progress.step} "
                        f"in epoch {epoch + 1}", config, run.run_dir, epoch)
    trainer.monitor.check_training(stats.loss, epoch + 1, config)  # same on every rank
    if run.procs.is_main and not (stop() and progress.epoch_step):
        _validate_and_save(run, trainer, epoch, stats, started)
    return stats.steps


def _validate_and_save(run: FitRun, trainer: Trainer, epoch: int, stats: EpochStats,
                       started: float) -> None:
    """Rank 0 after an epoch (or the part --max-steps allowed): validate, save, say the line."""
    progress, model = trainer.progress, trainer.model
    val = evaluate(model, trainer.eval_loaders["val"], run.device, run.data.num_classes)
    if not math.isfinite(val.loss):  # the last step broke the weights
        raise _diverged(f"the validation loss is not finite ({val.loss}) after epoch "
                        f"{epoch + 1}", run.config, run.run_dir, epoch)
    trainer.monitor.check_validation(val.loss, epoch + 1)
    record = {"epoch": epoch + 1, "step": progress.step,
              "lr": trainer.optimizer.param_groups[0]["lr"],
              "train_loss": round(stats.loss, 6), "train_top1": round(stats.top1, 6),
              "val_loss": round(val.loss, 6), "val_top1": round(val.top1, 6),
              "epoch_time_s": round(time.perf_counter() - started, 3)}
    part = ""
    if progress.epoch_step:  # stopped by --max-steps within the epoch: resumed from here
        record.update(partial=True, epoch_steps=progress.epoch_step)
        part = f" (steps 1..{progress.epoch_step} of {trainer.steps_per_epoch})"
    progress.history.append(record)
    if progress.improves(val.top1, val.loss):
        kept = (f"best.pt (epoch {progress.best_epoch}) and last.pt (epoch {epoch}) are as "
                "they were" if epoch > 0 else "no epoch was saved")
        progress.best, progress.best_epoch = (val.top1, -val.loss), epoch + 1
        with writing(run.run_dir / "best.pt", kept):
            save_checkpoint(run.run_dir / "best.pt", model, trainer.spec,
                            run.data.class_names, metrics=record, epoch=epoch + 1,
                            dataset=run.data.dataset, train_config=run.config.to_dict())
    _save_last(run, trainer, record)
    trainer.tell(f"epoch {epoch + 1}/{run.config.epochs}{part}  train loss {stats.loss:.4f} "
                 f"acc {stats.top1:.2%}  val loss {val.loss:.4f} acc {val.top1:.2%}  "
                 f"lr {record['lr']:.4g}  {record['epoch_time_s']:.1f}s")
    warning = trainer.monitor.after_epoch(progress.best[0], epoch + 1)
    if warning:
        trainer.say(f"warning: {warning}")


def _save_last(run: FitRun, trainer: Trainer, record: dict[str, Any]) -> None:
    """last.pt (with the optimiser's state) and, for a validated epoch, its log line; a failed
    write says which checkpoints are intact."""
    run_dir, progress, epoch = run.run_dir, trainer.progress, record.get("epoch", 0) - 1
    kept = (f"last.pt (epoch {epoch}) is as it was, best.pt holds epoch "
            f"{progress.best_epoch}" if epoch > 0 else
            f"only best.pt (epoch {progress.best_epoch}) was saved")
    with writing(run_dir / "last.pt", kept):
        save_checkpoint(run_dir / "last.pt", trainer.model, trainer.spec, run.data.class_names,
                        metrics=record, **trainer.resume_state(), **progress.saved(),
                        dataset=run.data.dataset, train_config=run.config.to_dict())
    if record:
        log_path = run_dir / "metrics.jsonl"
        with writing(log_path, f"last.pt holds epoch {epoch + 1}; --resume rewrites the log"):
            with open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")


def _diverged(what: str, config: TrainConfig, run_dir: Path, epochs_saved: int) -> UserError:
    """The line that stops a diverged run: nothing of the diverged epoch is saved."""
    if epochs_saved:
        again = (f"last.pt still holds epoch {epochs_saved}, but resuming repeats the same "
                 f"steps: start again with --overwrite")
    else:
        again = f"nothing was saved, so --out {run_dir} can be used again as it is"
    return UserError(f"training diverged: {what}; lower --lr (it was {config.lr:g}) or raise "
                     f"--warmup-epochs (it was {config.warmup_epochs:g}); {again}")


def _finish(run: FitRun, trainer: Trainer) -> TrainResult:
    """Test the best checkpoint, record the figures in it, and write curves and summary."""
    config, data, run_dir, say = run.config, run.data, run.run_dir, trainer.say
    best_path = run_dir / "best.pt"
    best = load_checkpoint(best_path)
    model = trainer.spec.build()
    load_state_into(model, best.state_dict, str(best_path))
    model.to(run.device)
    test = evaluate(model, trainer.eval_loaders["test"], run.device, data.num_classes)
    metrics = {**best.meta["metrics"], "test_loss": round(test.loss, 6),
               "test_top1": round(test.top1, 6)}
    kept = (f"the trained epochs are safe in last.pt and best.pt: once the folder can be "
            f"written, resnet-train --resume {run_dir} redoes only the test, curves and "
            "summary")
    with writing(best_path, kept):
        save_checkpoint(best_path, model, trainer.spec, data.class_names, metrics=metrics,
                        epoch=best.meta["epoch"], dataset=best.meta["dataset"],
                        train_config=best.meta["train_config"])
    if trainer.progress.history:
        extras = [name for name, on in (("label smoothing", config.label_smoothing > 0),
                                        ("augmented", config.augment or config.hflip)) if on]
        with writing(run_dir / "curves.png", kept):
            plot_curves(trainer.progress.history, run_dir / "curves.png",
                        "train" + (f" ({', '.join(extras)})" if extras else ""))
    summary = run_summary(run, trainer, test)
    with writing(run_dir / "summary.json", kept):
        write_json(run_dir / "summary.json", summary)
    say(f"test top-1 {test.top1:.2%} ({len(data.labels['test'])} images, best epoch "
        f"{trainer.progress.best_epoch}); per class: "
        + ", ".join(f"{n} {v:.1%}" for n, v in zip(data.class_names, test.per_class_top1)))
    if data.num_classes <= 20:
        for line in format_confusion(test.confusion, data.class_names).split("\n"):
            say(line)
    if summary["warnings"] and summary["warnings"][-1] not in trainer.monitor.warnings:
        say(f"warning: {summary['warnings'][-1]}")
    longer = train_longer(trainer.progress, config, run_dir) if trainer.monitor.judge else None
    if longer:
        summary["hints"] = [longer]
        with writing(run_dir / "summary.json", kept):
            write_json(run_dir / "summary.json", summary)
        say(f"note: {longer}")
    say(f"wrote {best_path}, {run_dir / 'last.pt'}, {run_dir / 'summary.json'} in "
        f"{summary['wall_time_s']:.1f}s")
    return TrainResult(run_dir, summary, model.eval())


__all__ = ["TrainResult", "run_training"]
