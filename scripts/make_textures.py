#!/usr/bin/env python3
"""Write a generated texture folder in the layout ``resnet-train --data`` reads, for measuring
own-data training against a plain CNN (docs/training.md).

Two sets. ``five``: horizontal, vertical and diagonal stripes, checkerboard and dots, moderate
noise (sigma 20), 64 px by default (issue 19's folder). ``ten``: those classes plus
anti-diagonal stripes (the mirror image of the diagonal class, so flips are not safe), rings,
grid lines, zigzags and blobs, lower contrast and strong noise (sigma 45), 32 px. Each image has
a random period, phase, contrast and pair of colours: the classes differ in structure, not in
colour. The same seed always draws the same images.

    python scripts/make_textures.py tex/train --set ten --per-class 200 --seed 1
    python scripts/make_textures.py tex/test --set ten --per-class 100 --seed 2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class TextureSet:
    classes: tuple[str, ...]
    periods: tuple[float, float]  # px
    contrast: tuple[float, float]  # share of the colour pair's difference the pattern shows
    noise: float  # sigma of the Gaussian pixel noise, on 0..255
    size: int


SETS = {
    "five": TextureSet(("hstripes", "vstripes", "diagonal", "checker", "dots"), (5, 12),
                       (0.5, 1.0), 20, 64),
    "ten": TextureSet(("hstripes", "vstripes", "diagonal", "antidiagonal", "checker", "dots",
                       "rings", "grid", "zigzag", "blobs"), (4, 10), (0.3, 1.0), 45, 32),
}


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


def draw(kind: str, rng: np.random.Generator, style: TextureSet, size: int) -> np.ndarray:
    """One uint8 size x size x 3 image of ``kind``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(*style.periods)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    wave = _wave(kind, 2 * np.pi * yy / period + phase[0], 2 * np.pi * xx / period + phase[1],
                 rng)
    a, b = rng.uniform(0, 255, size=(2, 3))
    mix = (wave[..., None] * rng.uniform(*style.contrast) + 1) / 2
    image = a * mix + b * (1 - mix) + rng.normal(0, style.noise, size=(size, size, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_textures(root: Path, style: TextureSet, per_class: int, seed: int,
                   size: int | None = None) -> Path:
    """``root/<class>/NNNNN.png``: ``per_class`` images of each class, classes interleaved."""
    rng = np.random.default_rng(seed)
    for label in range(per_class * len(style.classes)):
        kind = style.classes[label % len(style.classes)]
        folder = Path(root) / kind
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw(kind, rng, style, size or style.size)).save(
            folder / f"{label:05d}.png")
    return Path(root)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--set", "name", type=click.Choice(sorted(SETS)), default="ten", show_default=True)
@click.option("--per-class", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--size", type=click.IntRange(min=8, max=1024), default=None,
              help="Image side in px. [default: 64 for five, 32 for ten]")
def main(out: Path, name: str, per_class: int, seed: int, size: int | None) -> None:
    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} is not empty: pick a new folder")
    style = SETS[name]
    write_textures(out, style, per_class, seed, size)
    click.echo(f"wrote {per_class * len(style.classes)} images of {len(style.classes)} classes "
               f"to {out}")


if __name__ == "__main__":
    main()
