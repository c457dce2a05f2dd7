"""A small texture dataset drawn by the tests: five classes of RGB images.

Horizontal stripes, vertical stripes, diagonal stripes, a checkerboard and dots, each at a random
frequency, phase, contrast and pair of colours, with noise: the classes differ in structure, not
in colour, so a model must look at the pattern. ``write_texture_folder(root, 60)`` gives the
folder of issue 19 (300 64x64 PNGs, 60 a class) in the layout ``resnet-train --data`` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("hstripes", "vstripes", "diagonal", "checker", "dots")


def draw_texture(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One uint8 size x size x 3 image of ``kind``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5, 12)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    wy, wx = 2 * np.pi * yy / period + phase[0], 2 * np.pi * xx / period + phase[1]
    if kind == "hstripes":
        wave = np.sin(wy)
    elif kind == "vstripes":
        wave = np.sin(wx)
    elif kind == "diagonal":
        wave = np.sin((wy + wx) / np.sqrt(2))
    elif kind == "checker":
        wave = np.sign(np.sin(wy)) * np.sign(np.sin(wx))
    elif kind == "dots":
        wave = np.cos(wy) * np.cos(wx)
        wave = np.where(wave > 0.5, 1.0, -1.0)
    else:
        raise ValueError(kind)
    a, b = rng.uniform(0, 255, size=(2, 3))
    mix = (wave[..., None] * rng.uniform(0.5, 1.0) + 1) / 2
    image = a * mix + b * (1 - mix) + rng.normal(0, 20, size=(size, size, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_texture_folder(root: Path, per_class: int = 60, seed: int = 0, size: int = 64) -> Path:
    """``root/<class>/NNN.png``: ``per_class`` images of each of the five classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(per_class * len(CLASSES)):
        kind = CLASSES[label % len(CLASSES)]
        folder = Path(root) / kind
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw_texture(kind, rng, size)).save(folder / f"{label:04d}.png")
    return Path(root)
