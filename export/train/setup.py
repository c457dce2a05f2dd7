"""Setting a run up: the model it trains (its description from the data and the options), the
state a resumed run restores, the memory one batch needs, the model's place on the devices, and
the data loaders."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..core.checkpoint import Checkpoint, load_state_into
from ..core.errors import UserError, first_line
from ..core.hardware import available_memory, format_bytes
from ..core.models import ModelSpec
from ..data import TrainingData, channel_stats
from .config import TrainConfig
from .datasets import Augment, ImageDataset
from .devices import Processes
from .steps import activation_bytes


@dataclass
class Progress:
    """Where a run stands between epochs; last.pt carries it so --resume can go on."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    epoch_step: int = 0  # steps already taken in epoch ``epoch`` (a run stopped within it)
    best: tuple[float, float] = (-1.0, -math.inf)  # (val top-1, -val loss) of best.pt
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch

    def improves(self, top1: float, loss: float) -> bool:
        """Better validation accuracy; on a tie, lower validation loss."""
        return (top1, -loss) > self.best

    def saved(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "epoch_step": self.epoch_step,
                "best_val_top1": self.best[0],
                "best_val_loss": -self.best[1], "best_epoch": self.best_epoch,
                "history": self.history}

    @classmethod
    def from_saved(cls, meta: dict[str, Any]) -> Progress:
        # the record of a partial epoch goes: the epoch's full record replaces it
        history = [h for h in meta.get("history", []) if not h.get("partial")]
        return cls(int(meta["epoch"]), int(meta.get("step", 0)), int(meta.get("epoch_step", 0)),
                   (float(meta["best_val_top1"]), -float(meta["best_val_loss"])),
                   int(meta["best_epoch"]), history)


def model_spec(config: TrainConfig, data: TrainingData, resumed: Checkpoint | None
                ) -> ModelSpec:
    """The resumed run's spec, or a new one with the training split's mean and std."""
    if resumed is None:
        mean, std = channel_stats(data.images["train"])
        return ModelSpec.create(config.model, data.num_classes, data.in_chans, config.input_size,
                                mean=mean, std=std, stem=config.stem,
                                downsample=config.downsample)
    spec = resumed.spec
    if spec.in_chans != data.in_chans or spec.num_classes != data.num_classes:
        raise UserError(f"the data no longer matches {resumed.path}'s model "
                        f"({data.in_chans} channels / {data.num_classes} classes now)")
    return spec


def restore(resumed: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
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


def check_batch_memory(model: nn.Module, spec: ModelSpec, config: TrainConfig,
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


def place_model(model: nn.Module, procs: Processes,
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


class ResumableSampler(DistributedSampler[int]):
    """A DistributedSampler that can leave out the first ``start`` indices of an epoch's order:
    a run stopped within an epoch goes on with the batches it had not yet seen."""

    start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start)


def loaders(data: TrainingData, spec: ModelSpec, config: TrainConfig, procs: Processes,
             device: torch.device) -> tuple[DataLoader, dict[str, DataLoader]]:
    """A sharded, seeded, augmented training loader and plain validation / test loaders."""
    jitter = Augment.for_mode(config.jitter or "affine", config.hflip) if config.augment else \
        Augment(0.0, 0.0, 0.0, hflip=config.hflip)
    train_set = ImageDataset(data.images["train"], data.labels["train"], spec.mean, spec.std,
                             jitter if config.augment or config.hflip else None, config.seed)
    # DistributedSampler even for one process: its order depends only on (seed, epoch), so a
    # resumed run sees the batches an uninterrupted one would have.
    sampler = ResumableSampler(
        train_set, num_replicas=procs.world_size, rank=procs.rank, shuffle=True, seed=config.seed)
    common: dict[str, Any] = dict(num_workers=config.workers, pin_memory=device.type == "cuda")
    batch_size, drop_last = train_batching(len(train_set), config.batch_size, procs.world_size)
    train = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                       **common)
    evals = {part: DataLoader(ImageDataset(data.images[part], data.labels[part], spec.mean,
                                           spec.std), batch_size=256, **common)
             for part in ("val", "test")}
    return train, evals
