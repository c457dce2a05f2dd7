"""The pieces of the loop: optimiser, schedule, one epoch, evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW; no weight decay on BatchNorm parameters and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int,
                  total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base rate, then cosine decay to zero; stepped once per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def activation_bytes(model: nn.Module, in_chans: int, size: int, element_size: int = 4,
                     probe: int = 32) -> int:
    """At least how many bytes one image's activations take while training ``model``.

    Backward keeps the outputs of the convolutions, BatchNorms and the classifier; their sizes
    are taken from one forward pass on a ``probe`` x ``probe`` image (cheap at any input size)
    and scaled to ``size`` x ``size``. Rounding in strided layers only makes the real figure
    larger, so this is a lower bound. The model's state is left as it was.
    """
    total = 0.0
    scale = (size / probe) ** 2

    def count(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel() * (scale if output.ndim == 4 else 1.0)

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, in_chans, probe, probe, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return int(total * element_size)


@dataclass
class EpochStats:
    loss: float
    top1: float
    steps: int


@dataclass
class EpochOptions:
    """How far one call of :func:`train_one_epoch` goes and what it shows."""

    max_steps: int | None = None  # stop after this many batches
    progress: bool = False  # a progress bar
    desc: str = ""  # the bar's label
    should_stop: Callable[[], bool] | None = None  # asked before each batch (a stop signal)
    on_step: Callable[[int], None] | None = None  # told the steps taken after each step


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module,
                    device: torch.device, scaler: torch.amp.GradScaler,
                    options: EpochOptions | None = None) -> EpochStats:
    """One pass over ``loader`` (or ``options.max_steps`` batches, or until
    ``options.should_stop()``); loss and accuracy summed over ranks.

    A single process stops at the first step whose loss is not finite (the returned loss is
    then not finite either): the run has diverged, and every later step would only spread the
    NaN. Under DDP every rank finishes the epoch, so that none waits for the others in vain,
    and the summed loss shows the divergence to all of them at once.
    """
    opts = options or EpochOptions()
    max_steps, progress = opts.max_steps, opts.progress
    model.train()
    amp = scaler.is_enabled()
    distributed = dist.is_available() and dist.is_initialized()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen
    steps = 0
    bar = tqdm(loader, desc=opts.desc, disable=not progress, leave=False, dynamic_ncols=True,
               unit="batch")
    try:
        for images, labels in bar:
            if (max_steps is not None and steps >= max_steps) or \
                    (opts.should_stop is not None and opts.should_stop()):
                break
            images, labels = _to_device(images, labels, device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(images)
                loss = criterion(logits, labels)
            value = loss.item()
            if not math.isfinite(value) and not distributed:
                steps += 1
                totals += torch.tensor([value * len(labels), 0, len(labels)],
                                       dtype=torch.float64)
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            steps += 1
            totals += torch.tensor([value * len(labels),
                                    (logits.argmax(1) == labels).sum().item(), len(labels)],
                                   dtype=torch.float64)
            if opts.on_step is not None:
                opts.on_step(steps)
            if progress and (steps % 5 == 0 or steps == len(loader)):
                bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}",
                                acc=f"{totals[1] / totals[2]:.2%}", refresh=False)
    finally:
        bar.close()  # also on an error, so that it does not stay on the screen
    if distributed:
        dist.all_reduce(totals)
    seen = max(totals[2].item(), 1.0)
    return EpochStats(totals[0].item() / seen, totals[1].item() / seen, steps)


@dataclass
class Evaluation:
    loss: float
    top1: float
    per_class_top1: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             num_classes: int) -> Evaluation:
    """Plain cross-entropy, top-1, per-class accuracy and confusion matrix over ``loader``."""
    from sklearn.metrics import confusion_matrix

    model.eval()
    loss_sum, truth, predicted = 0.0, [], []
    for images, labels in loader:
        images, labels = _to_device(images, labels, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item()
        truth.append(labels.cpu())
        predicted.append(logits.argmax(1).cpu())
    y, p = torch.cat(truth).numpy(), torch.cat(predicted).numpy()
    matrix = confusion_matrix(y, p, labels=list(range(num_classes)))
    support = matrix.sum(axis=1)
    per_class = np.divide(np.diag(matrix), support, out=np.zeros(num_classes),
                          where=support > 0)
    return Evaluation(loss_sum / max(len(y), 1), float((y == p).mean()) if len(y) else 0.0,
                      [round(float(v), 6) for v in per_class], matrix.tolist())


def _to_device(images: torch.Tensor, labels: torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)
