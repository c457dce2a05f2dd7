"""A small, learnable image-folder dataset drawn by the tests: four classes of 32x32 shapes.

Each class is a shape in a colour of its own (red circles, green crosses, blue squares, yellow
triangles), each image one shape of a random size, position, shade (hue +-20 degrees, random
saturation and brightness) on a random greyish background, with a little noise.
``write_shapes_folder(root, 163)`` gives the size of the dataset in issue 12: one sub-folder of
PNG files per class, as ``resnet-train --data`` reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("circle", "cross", "square", "triangle")
HUES = {"circle": 0.0, "cross": 120.0, "square": 230.0, "triangle": 55.0}  # degrees


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """h in degrees, s and v in 0..1 -> RGB 0..255."""
    h = (h % 360) / 60
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.array([r, g, b]) + (v - c)) * 255


def draw_shape(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One uint8 size x size x 3 image of ``kind``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = rng.uniform(0.2, 0.35) * size  # half the shape's extent
    cy, cx = rng.uniform(r + 1, size - r - 1, size=2)
    dy, dx = (yy - cy) / r, (xx - cx) / r
    if kind == "circle":
        mask = dy ** 2 + dx ** 2 <= 1.0
    elif kind == "square":
        mask = (np.abs(dy) <= 0.8) & (np.abs(dx) <= 0.8)
    elif kind == "triangle":  # apex up
        mask = (dy <= 0.8) & (dy >= -0.9) & (np.abs(dx) <= (dy + 0.9) / 1.7 * 0.9)
    elif kind == "cross":
        mask = ((np.abs(dy) <= 0.25) | (np.abs(dx) <= 0.25)) & (np.abs(dy) <= 1) & \
            (np.abs(dx) <= 1)
    else:
        raise ValueError(kind)
    grey = rng.uniform(20, 235)
    background = grey + rng.uniform(-20, 20, size=3)
    foreground = _hsv_to_rgb(HUES[kind] + rng.uniform(-20, 20), rng.uniform(0.6, 1.0),
                             rng.uniform(0.55, 1.0))
    image = np.where(mask[..., None], foreground, background)
    image = image + rng.normal(0, 12, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def shapes(count: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images N x size x size x 3 and their labels, the classes in turn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(CLASSES)
    images = np.stack([draw_shape(CLASSES[y], rng, size) for y in labels])
    return images, labels


def write_shapes_folder(root: Path, count: int = 163, seed: int = 0, size: int = 32) -> Path:
    """``root/<class>/NNN.png``: ``count`` images over the four classes."""
    from PIL import Image

    images, labels = shapes(count, seed, size)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = Path(root) / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return Path(root)
