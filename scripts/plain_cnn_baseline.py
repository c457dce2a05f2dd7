#!/usr/bin/env python3
"""The yardstick for own-data training (docs/training.md): a plain CNN trained for a fixed
wall time, counted from process start, on every image of TRAIN_DIR (one sub-folder per class,
same-sized images), then scored on TEST_DIR. No augmentation unless --flip.

    python scripts/plain_cnn_baseline.py TRAIN_DIR TEST_DIR --seconds 120 [--flip]
"""
import time

STARTED = time.perf_counter()  # before the imports: resnet-train's wall time counts its own

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402


def read(root: str, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((Path(root) / c).iterdir())]
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in files])
    return torch.tensor(x).permute(0, 3, 1, 2).float() / 255, torch.tensor([i for _, i in files])


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


@click.command()
@click.argument("train_dir")
@click.argument("test_dir")
@click.option("--seconds", type=float, required=True, help="Wall time from start to stop.")
@click.option("--flip", is_flag=True, help="Random horizontal flips.")
def main(train_dir: str, test_dir: str, seconds: float, flip: bool) -> None:
    torch.manual_seed(0)
    classes = sorted(p.name for p in Path(train_dir).iterdir() if p.is_dir())
    (x, y), (tx, ty) = read(train_dir, classes), read(test_dir, classes)
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    x, tx = (x - mean) / std, (tx - mean) / std
    model = nn.Sequential(block(3, 32), block(32, 32), nn.MaxPool2d(2), block(32, 64),
                          block(64, 64), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(64, len(classes)))
    opt, steps = torch.optim.Adam(model.parameters(), 1e-3), 0
    model.train()
    while time.perf_counter() - STARTED < seconds:
        for idx in torch.randperm(len(y)).split(64):
            if time.perf_counter() - STARTED >= seconds:
                break
            xb = x[idx]
            if flip:
                xb = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, xb.flip(3), xb)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    model.eval()
    with torch.no_grad():
        top1 = (model(tx).argmax(1) == ty).float().mean().item()
    print(f"plain CNN: test top-1 {top1:.2%} ({len(ty)} images) after "
          f"{steps * 64 / len(y):.1f} epochs in {time.perf_counter() - STARTED:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
