"""A harder generated image folder: ten texture classes at 32x32, for measuring own-data training.

Stripes in four orientations (horizontal, vertical, and the two diagonals: a horizontal flip
turns one diagonal class into the other, so flips are not safe here), checkerboard, dots, rings,
grid lines, zigzags and blobs, each at a random period, phase, contrast and pair of colours,
with strong noise. ``write_textures10(root, 200)`` gives 2,000 PNGs in the layout
``resnet-train --data`` reads; docs/training.md compares the defaults with a plain CNN on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("hstripes", "vstripes", "diagonal", "antidiagonal", "checker", "dots", "rings",
           "grid", "zigzag", "blobs")


def _wave(kind: str, wy: np.ndarray, wx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind in ("hstripes", "vstripes", "diagonal", "antidiagonal"):
        arg = {"hstripes": wy, "vstripes": wx, "diagonal": (wy + wx) / np.sqrt(2),
               "antidiagonal": (wy - wx) / np.sqrt(2)}[kind]
        return np.sin(arg)
    if kind == "checker":
        return np.sign(np.sin(wy)) * np.sign(np.sin(wx))
    if kind == "dots":
        return np.where(np.cos(wy) * np.cos(wx) > 0.5, 1.0, -1.0)
    if kind == "rings":
        return np.sin(np.hypot(wy - wy.mean(), wx - wx.mean()))
    if kind == "grid":
        return np.where((np.cos(wy) > 0.8) | (np.cos(wx) > 0.8), 1.0, -1.0)
    if kind == "zigzag":
        return np.sin(wy + 1.5 * np.abs(((wx / np.pi) % 2) - 1) * np.pi)
    if kind == "blobs":
        field = rng.normal(size=(6, 6))
        up = np.kron(field, np.ones((wy.shape[0] // 6 + 1,) * 2))[:wy.shape[0], :wy.shape[1]]
        return np.tanh(2 * up)
    raise ValueError(kind)


def draw_texture10(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One uint8 size x size x 3 image of ``kind``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(4, 10)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    wave = _wave(kind, 2 * np.pi * yy / period + phase[0], 2 * np.pi * xx / period + phase[1],
                 rng)
    a, b = rng.uniform(0, 255, size=(2, 3))
    mix = (wave[..., None] * rng.uniform(0.3, 1.0) + 1) / 2
    image = a * mix + b * (1 - mix) + rng.normal(0, 45, size=(size, size, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_textures10(root: Path, per_class: int = 200, seed: int = 0, size: int = 32) -> Path:
    """``root/<class>/NNNN.png``: ``per_class`` images of each of the ten classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(per_class * len(CLASSES)):
        kind = CLASSES[label % len(CLASSES)]
        folder = Path(root) / kind
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw_texture10(kind, rng, size)).save(folder / f"{label:05d}.png")
    return Path(root)
