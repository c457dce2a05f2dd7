#!/usr/bin/env python3
"""Training on an MNIST-sized dataset in torchvision's layout: loading, data pipeline and a run.

No dataset can be downloaded here, so this writes an honest stand-in in MNIST's real format and
size: ``<workdir>/MNIST/raw/`` with ``train-images-idx3-ubyte`` (``--train`` images, default
60,000) and ``t10k-images-idx3-ubyte`` (``--test`` images, default 10,000), 28 x 28 grey, with
their label files. The images are scikit-learn's 1,797 handwritten 8 x 8 digits, upscaled
(bilinear) to 28 x 28 and jittered (seeded rotation +-15 degrees, shift +-2 px, scale +-10 %,
stroke contrast): the training images are jittered copies of the first 1,500 digits and the test
images jittered copies of the other 297, so no test digit is ever seen in training. It is a
stand-in for MNIST's size and format, not for its difficulty.

Then it measures, each on its own (so the figures can be compared):

1. ``describe_source`` + ``load_training_data``: the dataset read, split and decoded (seconds,
   images/s, bytes held);
2. the training DataLoader alone, in the main process and with 1 and 2 worker processes
   (augmented images/s, ``--loader-batches`` batches);
3. training steps alone on ready batches (images/s, ``--train-batches`` batches) for ``--model``
   with the defaults ``resnet-train`` would choose for this data (input size, stem);

and, with ``--run``, the real command ``resnet-train --data <stand-in> --model ...`` (plus any
options after ``--``), timed from outside, with its ``summary.json`` figures.

    PYTHONPATH=. python scripts/bench_train_layout.py [--train 60000 --test 10000] [--run] \
        [--workdir DIR] [-- extra resnet-train options]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from export.core.models import ModelSpec
    from export.data import TrainingData
    from export.train.config import TrainConfig


def jittered_digits(indices: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 28 x 28 uint8 images: seeded jittered copies of the digits at ``indices``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    base = torch.from_numpy(digits.images[indices].astype(np.float32) / 16.0)[:, None]
    base = F.interpolate(base, size=(20, 20), mode="bilinear", align_corners=False)
    base = F.pad(base, (4, 4, 4, 4))  # MNIST's digits sit in a 20 x 20 box in a 28 x 28 frame
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(indices), size=count)
    images = np.empty((count, 28, 28), dtype=np.uint8)
    for start in range(0, count, 4096):
        chosen = pick[start:start + 4096]
        n = len(chosen)
        angle = np.radians(rng.uniform(-15, 15, n))
        scale = 1 + rng.uniform(-0.1, 0.1, n)
        shift = rng.uniform(-2 / 14, 2 / 14, (n, 2))  # +-2 px in grid units (28 px span 2)
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        theta = torch.tensor(np.stack([np.stack([cos, -sin, shift[:, 0]], 1),
                                       np.stack([sin, cos, shift[:, 1]], 1)], 1),
                             dtype=torch.float32)
        grid = F.affine_grid(theta, [n, 1, 28, 28], align_corners=False)
        x = F.grid_sample(base[chosen], grid, align_corners=False)[:, 0]
        gain = torch.from_numpy(rng.uniform(0.8, 1.3, (n, 1, 1)).astype(np.float32))
        images[start:start + n] = (x * gain).clamp(0, 1).mul(255).round().to(torch.uint8)
    return images, digits.target[indices][pick].astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_standin(root: Path, train: int, test: int) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    x, y = jittered_digits(np.arange(1500), train, seed=1)
    write_idx(raw / "train-images-idx3-ubyte", x)
    write_idx(raw / "train-labels-idx1-ubyte", y)
    x, y = jittered_digits(np.arange(1500, 1797), test, seed=2)
    write_idx(raw / "t10k-images-idx3-ubyte", x)
    write_idx(raw / "t10k-labels-idx1-ubyte", y)
    return root


def loader_rate(data: TrainingData, spec: ModelSpec, config: TrainConfig, workers: int,
                batches: int) -> float:
    """Augmented training batches per second, as the training loop gets them (images/s)."""
    from export.train.datasets import Augment, ImageDataset
    from export.train.setup import train_batching

    assert config.batch_size is not None  # a resolved configuration
    train_set = ImageDataset(data.images["train"], data.labels["train"], spec.mean, spec.std,
                             Augment(), config.seed)
    batch, drop = train_batching(len(train_set), config.batch_size)
    sampler = torch.utils.data.RandomSampler(train_set, generator=torch.Generator()
                                             .manual_seed(0))
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch, sampler=sampler,
                                         drop_last=drop, num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up is not the steady state
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        images, _ = next(it)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def train_rate(spec: ModelSpec, config: TrainConfig, batches: int) -> float:
    """Optimiser steps on one ready batch, forward + backward + step (images/s)."""
    from export.train.steps import build_optimizer

    assert config.batch_size is not None  # a resolved configuration
    torch.manual_seed(0)
    model = spec.build().train()
    optimizer = build_optimizer(model, config)
    x = torch.randn(config.batch_size, spec.in_chans, spec.input_size, spec.input_size)
    y = torch.randint(0, spec.num_classes, (config.batch_size,))
    times = []
    for i in range(batches + 1):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:  # the first step allocates
            times.append(time.perf_counter() - start)
    return config.batch_size / float(np.median(times))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--train", "n_train", type=int, default=60_000, help="training images [60000]")
@click.option("--test", "n_test", type=int, default=10_000, help="test images [10000]")
@click.option("--model", default="resnet18", help="model to time and train [resnet18]")
@click.option("--threads", type=int, default=1, help="torch threads for the timings [1]")
@click.option("--loader-batches", type=int, default=40, help="batches per loader timing [40]")
@click.option("--train-batches", type=int, default=5, help="steps per training timing [5]")
@click.option("--run", "do_run", is_flag=True, help="also run resnet-train on the stand-in")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write the stand-in (and the run) here and keep it [default: a temporary "
                   "folder, removed]")
@click.argument("extra", nargs=-1)
def main(n_train: int, n_test: int, model: str, threads: int, loader_batches: int,
         train_batches: int, do_run: bool, workdir: Path | None, extra: tuple[str, ...]) -> None:
    """Stand-in MNIST in torchvision's layout: load, pipeline and training throughput."""
    from export.core.models import ModelSpec
    from export.data import channel_stats, describe_source, load_training_data, scan, split_of
    from export.train.config import TrainConfig

    torch.set_num_threads(threads)
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="standin-")
        workdir = Path(tmp)
    try:
        start = time.perf_counter()
        root = write_standin(workdir, n_train, n_test)
        print(f"stand-in: {n_train:,} + {n_test:,} images of 28 x 28 written to "
              f"{root / 'MNIST' / 'raw'} in {time.perf_counter() - start:.1f} s")
        print(f"machine: {os.cpu_count()} cores, load average "
              f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} (shared: figures are noisy); "
              f"torch {torch.__version__}, {threads} thread(s)")

        start = time.perf_counter()
        dataset = describe_source(root)
        scanned = scan(dataset)
        train_images = len(split_of(scanned, dataset).train)
        config = TrainConfig(model=model, data=str(root)).resolved(scanned.image_size,
                                                                   train_images)
        assert config.input_size is not None and config.batch_size is not None  # resolved
        assert config.epochs is not None
        data = load_training_data(dataset, config.input_size, scanned)
        seconds = time.perf_counter() - start
        total = sum(data.counts().values())
        held = sum(v.nbytes for v in data.images.values())
        print(f"load: {dataset['name']} ({dataset['layout']}) read, split and decoded in "
              f"{seconds:.2f} s ({total / seconds:,.0f} images/s); {data.counts()}; "
              f"{held / 2**20:.1f} MiB uint8 held at {config.input_size} x {config.input_size}")
        mean, std = channel_stats(data.images["train"])
        spec = ModelSpec.create(model, data.num_classes, data.in_chans,
                                config.input_size, mean=mean, std=std, stem=config.stem,
                                downsample=config.downsample)
        print(f"defaults for this data: input size {config.input_size}, stem {config.stem}, "
              f"epochs {config.epochs}, warm-up {config.warmup_epochs} epochs, batch "
              f"{config.batch_size}, lr {config.lr}")
        for workers in (0, 1, 2):
            rate = loader_rate(data, spec, config, workers, loader_batches)
            print(f"loader: {workers} worker(s): {rate:,.0f} augmented images/s")
        rate = train_rate(spec, config, train_batches)
        steps = math.ceil(len(data.labels["train"]) / config.batch_size) * config.epochs
        print(f"training steps alone: {rate:,.1f} images/s for {spec.name} ({spec.stem} stem, "
              f"{spec.input_size} px); the default {config.epochs} epochs ({steps:,} steps) "
              f"would take about {steps * config.batch_size / rate / 60:,.0f} min of steps")
        if do_run:
            run_dir = workdir / "run"
            command = [sys.executable, "-m", "export.train.cli", "--data", str(root),
                       "--model", model, "--out", str(run_dir), "--no-progress", *extra]
            print("run:", " ".join(command[1:]), flush=True)
            start = time.perf_counter()
            done = subprocess.run(command)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(done.returncode)
            summary = json.loads((run_dir / "summary.json").read_text())
            print(json.dumps({"test_top1": summary["test_top1"], "wall_time_s": round(wall, 1),
                              "epochs": summary["epochs"], "steps": summary["steps"],
                              "best_val_top1": summary["best_val_top1"],
                              "counts": summary["counts"], "threads": summary["threads"],
                              "load_average_after": os.getloadavg()}))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
