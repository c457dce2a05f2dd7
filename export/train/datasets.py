"""Serving decoded images to the training loop: normalised tensors with seeded jitter."""

from __future__ import annotations

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
    """Light, safe jitter: a random shift of up to ``max_shift`` of the side (the image padded
    with the mean colour, then cropped back), and horizontal flips only when asked for (a
    mirrored digit or letter is not the same class)."""

    max_shift: float = 0.125  # of the side: 4 px at 32, as in the ResNet paper's CIFAR runs
    hflip: bool = False


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
        x = (self.images[i].float().div_(255.0) - self.mean) / self.std
        if self.augment is not None:
            x = self._jitter(x, np.random.default_rng((self.seed, self.epoch, int(i))))
        return x, self.labels[i]

    def _jitter(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Shift (zero-padded: the mean once normalised) and maybe flip one C x H x W image."""
        a = self.augment
        assert a is not None  # __getitem__ jitters only with an Augment
        height, width = x.shape[-2:]
        pad = int(round(a.max_shift * min(height, width)))
        if pad:
            dy, dx = rng.integers(0, 2 * pad + 1, size=2)
            x = F.pad(x, (pad, pad, pad, pad))[:, dy:dy + height, dx:dx + width]
        if a.hflip and rng.random() < 0.5:
            x = x.flip(-1)
        return x
