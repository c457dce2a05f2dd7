"""scripts/make_textures.py: the generated folders docs/training.md measures own-data training
on are the same images for the same seed, in resnet-train's layout."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_textures.py"


def make(out, *args):
    return subprocess.run([sys.executable, SCRIPT, str(out), *args], capture_output=True,
                          text=True, timeout=120)


def pixels(root):
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p))
            for p in sorted(Path(root).rglob("*.png"))}


def test_a_seed_draws_the_same_folder_and_another_seed_another(tmp_path):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        done = make(tmp_path / name, "--set", "ten", "--per-class", "3", "--seed", seed)
        assert done.returncode == 0, done.stderr
    a, b, c = (pixels(tmp_path / n) for n in "abc")
    assert len(a) == 30 and {k.split("/")[0] for k in a} >= {"diagonal", "antidiagonal"}
    assert all(v.shape == (32, 32, 3) and v.dtype == np.uint8 for v in a.values())
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in a)


def test_the_five_class_set_and_a_folder_that_is_not_empty(tmp_path):
    done = make(tmp_path / "five", "--set", "five", "--per-class", "2", "--size", "16")
    assert done.returncode == 0, done.stderr
    images = pixels(tmp_path / "five")
    assert len(images) == 10 and all(v.shape == (16, 16, 3) for v in images.values())
    again = make(tmp_path / "five", "--set", "five", "--per-class", "2")
    assert again.returncode == 2 and "is not empty" in again.stderr
    assert pixels(tmp_path / "five").keys() == images.keys()
