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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .checkpoint import load_checkpoint, load_state_into, save_checkpoint
from .data import Augment, ImageDataset, TrainingData, channel_stats, describe_source, \
    load_training_data, source_name
from .errors import UserError
from .fileio import atomic_path, write_json
from .models import ModelSpec, get_architecture

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


# ---------------------------------------------------------------------------------------------
# Devices and processes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    """Where this process sits in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "Processes":
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                   int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1)))


def pick_device(name: str, procs: Processes) -> torch.device:
    """``auto`` takes CUDA when present; asking for CUDA without it is a user error."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {name!r}: choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device cuda: no CUDA GPU is visible to PyTorch {torch.__version__}")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", procs.local_rank % torch.cuda.device_count())


def cpu_thread_count(procs: Processes, requested: int = 0) -> int:
    """Threads for this process: ``requested``, else OMP_NUM_THREADS, else the idle cores.

    The cores are shared among the processes torchrun started on this machine. Cores that other
    programs keep busy (by the 1-minute load average) are left out: an OpenMP thread that has to
    wait for a busy core stalls every layer, and on a shared 2-core machine we measured 2 threads
    running several times slower than 1.
    """
    if requested > 0:
        return requested
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cores or 1) // procs.local_world_size)
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(share, (cores or 1) - busy))


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[int]:
    """Use ``count`` intra-op threads for the block, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def process_group(procs: Processes, device: torch.device) -> Iterator[None]:
    """Join the torchrun job (gloo on CPU, NCCL on CUDA) for the duration of the block."""
    if not procs.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Pieces of the loop
# ---------------------------------------------------------------------------------------------


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW; no weight decay on BatchNorm parameters and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
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


@dataclass
class EpochStats:
    loss: float
    top1: float
    steps: int


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module,
                    device: torch.device, scaler: torch.amp.GradScaler,
                    max_steps: int | None = None, progress: bool = False,
                    desc: str = "") -> EpochStats:
    """One pass over ``loader`` (or ``max_steps`` batches); loss and accuracy summed over ranks."""
    model.train()
    amp = scaler.is_enabled()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen
    steps = 0
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True,
               unit="batch")
    for images, labels in bar:
        if max_steps is not None and steps >= max_steps:
            break
        images, labels = _to_device(images, labels, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        steps += 1
        totals += torch.tensor([loss.item() * len(labels),
                                (logits.argmax(1) == labels).sum().item(), len(labels)],
                               dtype=torch.float64)
        if progress and (steps % 5 == 0 or steps == len(loader)):
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}",
                            acc=f"{totals[1] / totals[2]:.2%}", refresh=False)
    bar.close()
    if dist.is_available() and dist.is_initialized():
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


def adapt_init_weights(model: nn.Module, state: dict[str, torch.Tensor],
                       source: str) -> list[str]:
    """Load fine-tuning weights, fitting the classifier and stem to this model; returns notes.

    A classifier (``fc``) of another size is replaced by the model's fresh one. A stem (``conv1``)
    for another channel count is converted: RGB -> grayscale sums the three kernels (the response
    to a grey image replicated to RGB), grayscale -> RGB spreads the kernel over three channels.
    """
    own = model.state_dict()
    state, notes = dict(state), []
    if "fc.weight" in state and state["fc.weight"].shape != own["fc.weight"].shape:
        notes.append(f"new classifier: {state['fc.weight'].shape[0]} -> "
                     f"{own['fc.weight'].shape[0]} classes")
        state["fc.weight"], state["fc.bias"] = own["fc.weight"], own["fc.bias"]
    stem = state.get("conv1.weight")
    want = own["conv1.weight"].shape
    if stem is not None and stem.ndim == 4 and stem.shape != want \
            and stem.shape[0] == want[0] and stem.shape[2:] == want[2:]:
        have, need = stem.shape[1], want[1]
        if have == 3 and need == 1:
            state["conv1.weight"] = stem.sum(dim=1, keepdim=True)
        elif have == 1 and need == 3:
            state["conv1.weight"] = stem.repeat(1, 3, 1, 1) / 3.0
        else:
            raise UserError(f"{source}: its first convolution takes {have} channels, the data "
                            f"has {need}; only 1 <-> 3 channel conversion is supported")
        notes.append(f"stem converted from {have} to {need} input channel(s)")
    load_state_into(model, state, source)
    return notes


# ---------------------------------------------------------------------------------------------
# Run folder
# ---------------------------------------------------------------------------------------------


def resolve_run_dir(out: str | os.PathLike | None, config: TrainConfig,
                    overwrite: bool = False) -> Path:
    """``--out`` as given (refusing to mix runs), or ``artifacts/train/<model>-<data>[-N]``."""
    if out is not None:
        path = Path(out)
        if _holds_run(path) and not overwrite:
            raise UserError(f"{path} already holds a training run: continue it with --resume "
                            f"{path}, start again with --overwrite, or pick another --out")
        return path
    data = "digits" if config.data is None else Path(config.data).stem
    base = Path("artifacts") / "train" / f"{config.model}-{data}"
    path, n = base, 1
    while _holds_run(path):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def resume_checkpoint_path(resume: str | os.PathLike) -> Path:
    """``--resume`` takes a run folder or its ``last.pt``."""
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise UserError(f"nothing to resume: {path} not found")
    return path


def plot_curves(history: list[dict[str, Any]], path: Path, train_label: str = "train") -> None:
    """Loss and accuracy per epoch, training and validation, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label=train_label)
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (log scale)", title="Loss",
                yscale="log")  # the first epoch's validation loss can dwarf the rest
    ax_acc.plot(epochs, [100 * h["train_top1"] for h in history], "o-", label=train_label)
    ax_acc.plot(epochs, [100 * h["val_top1"] for h in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def format_confusion(matrix: list[list[int]], class_names: list[str]) -> str:
    """The confusion matrix as text (rows: true class, columns: predicted)."""
    width = max(5, *(len(n) for n in class_names), *(len(str(v)) for r in matrix for v in r)) + 1
    corner = "true \\ predicted"
    label = max(len(corner), *(len(n) for n in class_names)) + 1
    lines = [corner.ljust(label) + "".join(n.rjust(width) for n in class_names)]
    lines += [name.ljust(label) + "".join(str(v).rjust(width) for v in row)
              for name, row in zip(class_names, matrix)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a run leaves behind (rank 0; other ranks get an empty summary and no model)."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None  # the best model, as evaluated on the test split


def run_training(config: TrainConfig | None, out: str | os.PathLike | None = None,
                 resume: str | os.PathLike | None = None, overwrite: bool = False,
                 echo: Callable[[str], Any] = print,
                 changes: dict[str, Any] | None = None) -> TrainResult:
    """Train a model from ``config``, or resume the run at ``resume`` with a few ``changes``.

    Under torchrun every process calls this with the same arguments. A resumed run keeps its
    saved configuration except for :data:`RESUME_CHANGES` given in ``changes``.
    """
    started = time.perf_counter()
    procs = Processes.from_env()
    resumed = None
    if resume is not None:
        resumed = load_checkpoint(resume_checkpoint_path(resume))
        if "optimizer" not in resumed.meta or "train_config" not in resumed.meta:
            raise UserError(f"{resumed.path} cannot be resumed: it has no optimiser state "
                            "(resume from a run's last.pt)")
        unknown = set(changes or {}) - set(RESUME_CHANGES)
        if unknown:
            raise UserError(f"a resumed run cannot change {', '.join(sorted(unknown))}")
        config = dataclasses.replace(TrainConfig.from_dict(resumed.meta["train_config"]),
                                     **{"max_steps": None, **(changes or {})})
        run_dir = resumed.path.parent
    elif config is None:
        raise ValueError("run_training needs a config or a run to resume")
    config = config.resolved()
    if resumed is not None and resumed.meta.get("epoch", 0) >= config.epochs:
        raise UserError(f"{resumed.path} already finished {resumed.meta['epoch']} of "
                        f"{config.epochs} epochs: pass a larger --epochs to train longer")
    if resumed is None:
        run_dir = resolve_run_dir(out, config, overwrite)
    device = pick_device(config.device, procs)
    threads = cpu_thread_count(procs, config.threads)
    dataset = (resumed.meta["dataset"] if resumed is not None else
               describe_source(config.data, config.seed, config.val_fraction,
                               config.test_fraction))
    data = load_training_data(dataset, config.input_size)
    with process_group(procs, device), cpu_threads(threads):
        if procs.distributed:
            dist.barrier()  # every rank has checked the run folder before rank 0 writes to it
        return _fit(config, data, run_dir, resumed, procs, device, threads, started, echo)


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
    def from_saved(cls, meta: dict[str, Any]) -> "Progress":
        return cls(int(meta["epoch"]), int(meta.get("step", 0)),
                   (float(meta["best_val_top1"]), -float(meta["best_val_loss"])),
                   int(meta["best_epoch"]), list(meta.get("history", [])))


def _model_spec(config: TrainConfig, data: TrainingData, resumed) -> ModelSpec:
    """The resumed run's spec, or a new one with the training split's mean and std."""
    if resumed is None:
        mean, std = channel_stats(data.images["train"])
        return ModelSpec.create(config.model, data.num_classes, data.in_chans, config.input_size,
                                mean=mean, std=std)
    spec = resumed.spec
    if spec.in_chans != data.in_chans or spec.num_classes != data.num_classes:
        raise UserError(f"the data no longer matches {resumed.path}'s model "
                        f"({data.in_chans} channels / {data.num_classes} classes now)")
    return spec


def _place_model(model: nn.Module, procs: Processes,
                 device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(the model, what the training step calls): channels_last and DDP where they apply."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        if procs.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not procs.distributed:
        return model, model
    # On CPU (no SyncBatchNorm there) each rank normalises its own batch, and DDP's
    # broadcast_buffers keeps every rank's running statistics equal to rank 0's.
    return model, nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def _loaders(data: TrainingData, spec: ModelSpec, config: TrainConfig, procs: Processes,
             device: torch.device) -> tuple[DataLoader, dict[str, DataLoader]]:
    """A sharded, seeded, augmented training loader and plain validation / test loaders."""
    train_set = ImageDataset(data.images["train"], data.labels["train"], spec.mean, spec.std,
                             Augment() if config.augment else None, config.seed)
    # DistributedSampler even for one process: its order depends only on (seed, epoch), so a
    # resumed run sees the batches an uninterrupted one would have.
    sampler = DistributedSampler(train_set, num_replicas=procs.world_size, rank=procs.rank,
                                 shuffle=True, seed=config.seed)
    common = dict(num_workers=config.workers, pin_memory=device.type == "cuda")
    batch_size = min(config.batch_size, math.ceil(len(train_set) / procs.world_size))
    train = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                       **common)
    evals = {part: DataLoader(ImageDataset(data.images[part], data.labels[part], spec.mean,
                                           spec.std), batch_size=256, **common)
             for part in ("val", "test")}
    return train, evals


def _fit(config: TrainConfig, data: TrainingData, run_dir: Path, resumed, procs: Processes,
         device: torch.device, threads: int, started: float, echo) -> TrainResult:
    main = procs.is_main
    say = echo if main else (lambda *a, **k: None)
    spec = _model_spec(config, data, resumed)
    torch.manual_seed(config.seed)
    model = spec.build()
    if resumed is None and config.init_weights:
        for note in _load_init_weights(model, config):
            say(f"init weights: {note}")
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
        meta = resumed.meta
        load_state_into(model, resumed.state_dict, str(resumed.path))
        optimizer.load_state_dict(meta["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        if isinstance(meta.get("rng_state"), torch.Tensor):
            torch.set_rng_state(meta["rng_state"])
        progress = Progress.from_saved(meta)

    log_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(log_path) as tmp:  # a fresh log, or the resumed run's epochs so far
            tmp.write_text("".join(json.dumps(h) + "\n" for h in progress.history))
    counts = data.counts()
    say(f"{'resuming' if resumed else 'training'} {spec.name} on {source_name(data.dataset)} "
        f"({counts['train']} train / {counts['val']} val / {counts['test']} test images, "
        f"{data.num_classes} classes, {spec.in_chans}x{spec.input_size}x{spec.input_size}) "
        f"on {device}" + (f" x{procs.world_size} processes" if procs.distributed else "")
        + f", {threads} thread{'s' if threads != 1 else ''}, "
        f"epochs {progress.epoch + 1}..{config.epochs} -> {run_dir}")

    saved_extra = dict(dataset=data.dataset, train_config=config.to_dict())
    steps_left = config.max_steps  # per invocation
    for epoch in range(progress.epoch, config.epochs):
        if steps_left is not None and steps_left <= 0:
            break
        epoch_started = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        train_loader.dataset.set_epoch(epoch)
        stats = train_one_epoch(train_model, train_loader, optimizer, scheduler, criterion, device,
                                scaler, steps_left, progress=main,
                                desc=f"epoch {epoch + 1}/{config.epochs}")
        progress.epoch, progress.step = epoch + 1, progress.step + stats.steps
        if steps_left is not None:
            steps_left -= stats.steps
        if not math.isfinite(stats.loss):
            raise UserError(f"training diverged (loss {stats.loss}) in epoch {epoch + 1}: "
                            "lower --lr or raise --warmup-epochs")
        if not main:
            continue  # rank 0 alone validates and writes; the others go on to the next epoch
        val = evaluate(model, eval_loaders["val"], device, data.num_classes)
        record = {"epoch": epoch + 1, "step": progress.step,
                  "lr": optimizer.param_groups[0]["lr"],
                  "train_loss": round(stats.loss, 6), "train_top1": round(stats.top1, 6),
                  "val_loss": round(val.loss, 6), "val_top1": round(val.top1, 6),
                  "epoch_time_s": round(time.perf_counter() - epoch_started, 3)}
        progress.history.append(record)
        if progress.improves(val.top1, val.loss):
            progress.best, progress.best_epoch = (val.top1, -val.loss), epoch + 1
            save_checkpoint(run_dir / "best.pt", model, spec, data.class_names, metrics=record,
                            epoch=epoch + 1, **saved_extra)
        save_checkpoint(run_dir / "last.pt", model, spec, data.class_names, metrics=record,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict(), rng_state=torch.get_rng_state(),
                        **progress.saved(), **saved_extra)
        with open(log_path, "a") as log:
            log.write(json.dumps(record) + "\n")
        tqdm.write(f"epoch {epoch + 1}/{config.epochs}  train loss {stats.loss:.4f} "
                   f"acc {stats.top1:.2%}  val loss {val.loss:.4f} acc {val.top1:.2%}  "
                   f"lr {record['lr']:.4g}  {record['epoch_time_s']:.1f}s")
    if procs.distributed:
        dist.barrier()
    if not main:
        return TrainResult(run_dir)
    return _finish(config, data, spec, run_dir, progress, eval_loaders["test"], device, threads,
                   procs, started, say)


def _load_init_weights(model: nn.Module, config: TrainConfig) -> list[str]:
    ckpt = load_checkpoint(config.init_weights)
    if ckpt.spec is not None and ckpt.spec.name != config.model:
        raise UserError(f"--init-weights {ckpt.path} holds a {ckpt.spec.name}, but this run "
                        f"trains a {config.model}: pass --model {ckpt.spec.name}")
    try:
        return adapt_init_weights(model, ckpt.state_dict, f"--init-weights {ckpt.path}")
    except UserError as exc:
        raise UserError(f"{exc} (training {config.model}: is --model right?)") from None


def _finish(config: TrainConfig, data: TrainingData, spec: ModelSpec, run_dir: Path,
            progress: Progress, test_loader: DataLoader, device: torch.device, threads: int,
            procs: Processes, started: float, say: Callable[[str], Any]) -> TrainResult:
    """Test the best checkpoint, record the figures in it, and write curves and summary."""
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    best = load_checkpoint(best_path)
    model = spec.build()
    load_state_into(model, best.state_dict, str(best_path))
    model.to(device)
    test = evaluate(model, test_loader, device, data.num_classes)
    metrics = {**best.meta["metrics"], "test_loss": round(test.loss, 6),
               "test_top1": round(test.top1, 6)}
    save_checkpoint(best_path, model, spec, data.class_names, metrics=metrics,
                    epoch=best.meta["epoch"], dataset=best.meta["dataset"],
                    train_config=best.meta["train_config"])
    history = progress.history
    if history:
        extras = [name for name, on in (("label smoothing", config.label_smoothing > 0),
                                        ("augmented", config.augment)) if on]
        plot_curves(history, run_dir / "curves.png",
                    "train" + (f" ({', '.join(extras)})" if extras else ""))
    summary = {
        "model": spec.name, "spec": spec.to_dict(), "dataset": data.dataset,
        "class_names": data.class_names, "counts": data.counts(),
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
    write_json(run_dir / "summary.json", summary)
    say(f"test top-1 {test.top1:.2%} ({len(test_loader.dataset)} images, best epoch "
        f"{progress.best_epoch}); per class: "
        + ", ".join(f"{n} {v:.1%}" for n, v in zip(data.class_names, test.per_class_top1)))
    if data.num_classes <= 20:
        say(format_confusion(test.confusion, data.class_names))
    say(f"wrote {best_path}, {last_path}, {run_dir / 'summary.json'} in "
        f"{summary['wall_time_s']:.1f}s")
    return TrainResult(run_dir, summary, model.eval())


__all__ = ["EpochStats", "Evaluation", "Processes", "Progress", "TrainConfig", "TrainResult",
           "adapt_init_weights", "build_optimizer", "cpu_thread_count", "cpu_threads", "evaluate",
           "format_confusion", "pick_device", "plot_curves", "resolve_run_dir", "run_training",
           "train_one_epoch", "warmup_cosine"]
