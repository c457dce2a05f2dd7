"""Serving decoded images to the training loop: normalised tensors with seeded jitter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Serving batches
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Small random affine jitter (rotation, shift and scale, the border pixels extended), or
    with ``whole_pixels`` shifts by whole pixels only (pad by replicating the border, crop back:
    every pixel keeps its value, where resampling would smooth the noise); horizontal flips only
    when asked for: a mirrored digit or letter is not the same class."""

    max_rotate_deg: float = 10.0
    max_shift: float = 0.1  # of the image side
    max_scale: float = 0.1  # +- relative
    hflip: bool = False
    whole_pixels: bool = False

    @classmethod
    def for_mode(cls, mode: str, hflip: bool) -> Augment:
        """"affine" (the jitter above) or "shift": whole-pixel shifts of up to 1/8 of the side
        (the paper's 4 px at 32)."""
        if mode == "shift":
            return cls(0.0, 0.125, 0.0, hflip, whole_pixels=True)
        if mode == "affine":
            return cls(hflip=hflip)
        raise ValueError(f"unknown jitter {mode!r}")


class ImageDataset(torch.utils.data.Dataset):
    """Decoded uint8 images -> normalised float tensors, with optional seeded augmentation.

    The jitter of image ``i`` in epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)``,
    so it does not depend on worker count, rank or whether the run was resumed.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float],
                 std: Sequence[float], augment: Augment | None = None, seed: int = 0):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div_(255.0)
        if self.augment is not None:
            x = self._jitter(x, np.random.default_rng((self.seed, self.epoch, int(i))))
        return (x - self.mean) / self.std, self.labels[i]

    def _jitter(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        a = self.augment
        assert a is not None  # __getitem__ jitters only with an Augment
        angle = math.radians(rng.uniform(-a.max_rotate_deg, a.max_rotate_deg))
        scale = 1.0 + rng.uniform(-a.max_scale, a.max_scale)
        tx, ty = rng.uniform(-a.max_shift, a.max_shift, size=2) * 2.0  # grid units span 2
        if a.hflip and rng.random() < 0.5:
            x = x.flip(-1)
        if a.whole_pixels:
            return _shift_whole_pixels(x, a.max_shift, rng)
        if not (angle or tx or ty or scale != 1.0):
            return x
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[0]


def _shift_whole_pixels(x: torch.Tensor, max_shift: float, rng: np.random.Generator
                        ) -> torch.Tensor:
    """``x`` (C, H, W) moved by up to ``max_shift`` of each side in whole pixels, the border
    replicated into the space it leaves."""
    h, w = x.shape[-2:]
    py, px = round(max_shift * h), round(max_shift * w)
    if not (py or px):
        return x
    dy, dx = int(rng.integers(0, 2 * py + 1)), int(rng.integers(0, 2 * px + 1))
    padded = F.pad(x[None], (px, px, py, py), mode="replicate")[0]
    return padded[:, dy:dy + h, dx:dx + w]
