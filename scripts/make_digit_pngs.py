#!/usr/bin/env python3
"""Write COUNT small PNGs in class folders for resnet-batch's measurements: the embedded digits
(8x8 grayscale, scikit-learn's copy), cycled, as OUT/<digit>/<index>.png.

    python3 scripts/make_digit_pngs.py 100000 d100k
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from PIL import Image


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("count", type=click.IntRange(min=1))
@click.argument("out", type=click.Path(path_type=Path))
def main(count: int, out: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    for c in range(10):
        (out / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        j = i % len(pixels)
        Image.fromarray(pixels[j]).save(out / str(digits.target[j]) / f"{i:07d}.png")


if __name__ == "__main__":
    main()
