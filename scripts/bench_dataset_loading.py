#!/usr/bin/env python3
"""How fast ``load_layout`` reads full-size MNIST and CIFAR-10, and how much memory they take.

No dataset can be downloaded here, so it writes stand-ins of the real sizes in the real formats
into a temporary folder: a 60,000 + 10,000 image 28 x 28 MNIST in torchvision's idx layout
(``MNIST/raw/``, the digits upscaled from 8 x 8 and repeated) and a 50,000 + 10,000 image
CIFAR-10 python version (``cifar-10-batches-py``, the same digits as 32 x 32 colour, dicts with
bytes keys like the originals; pickled at protocol 4, which stores the pixels as raw bytes the way
the Python 2 originals do, where protocol 2 from Python 3 would store them as latin-1 text). Each
is loaded ``--repeats`` times; the output gives the seconds and images per second of each load
and the size of the arrays it returned.

    PYTHONPATH=. python3 scripts/bench_dataset_loading.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import pickle
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from export.data.layouts import LayoutDataset, load_layout


def digits(size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 digits, nearest-neighbour upscaled to size x size, repeated as needed."""
    data = load_digits()
    gray = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    idx = np.arange(size) * 8 // size
    gray = gray[:, idx][:, :, idx]
    return np.resize(gray, (count, size, size)), np.resize(data.target.astype(np.uint8), count)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
    with open(path, "wb") as f:
        f.write(header)
        f.write(array.tobytes())


def write_mnist(root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x, y = digits(28, 70_000)
    write_idx(raw / "train-images-idx3-ubyte", x[:60_000])
    write_idx(raw / "train-labels-idx1-ubyte", y[:60_000])
    write_idx(raw / "t10k-images-idx3-ubyte", x[60_000:])
    write_idx(raw / "t10k-labels-idx1-ubyte", y[60_000:])
    return root / "MNIST"


def write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    gray, y = digits(32, 60_000)
    x = np.stack([gray, 255 - gray, gray // 2], axis=1).reshape(60_000, -1)  # planar R, G, B
    batches = [(f"data_batch_{i + 1}", slice(i * 10_000, (i + 1) * 10_000)) for i in range(5)]
    for name, part in batches + [("test_batch", slice(50_000, 60_000))]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [int(v) for v in y[part]],
                         b"data": x[part]}, f, protocol=4)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                                      b"dog", b"frog", b"horse", b"ship", b"truck"]}, f, 4)
    return folder


def bench(path: Path, repeats: int) -> None:
    times, ds = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        ds = load_layout(path)
        times.append(time.perf_counter() - start)
    assert isinstance(ds, LayoutDataset)
    images = len(ds.x_train) + len(ds.x_test)
    on_disk = sum(f.stat().st_size for f in ds.files)
    arrays = sum(a.nbytes for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    print(f"{ds.name} ({ds.layout}): {len(ds.x_train)} train + {len(ds.x_test)} test images of "
          f"{' x '.join(map(str, ds.x_train.shape[1:]))}, {len(ds.files)} files, "
          f"{on_disk / 2**20:.1f} MiB on disk")
    for i, seconds in enumerate(times, start=1):
        print(f"  load {i}: {seconds:.3f} s  {images / seconds:,.0f} images/s")
    print(f"  best {min(times):.3f} s; arrays in memory: {arrays / 2**20:.1f} MiB "
          f"(images {(ds.x_train.nbytes + ds.x_test.nbytes) / 2**20:.1f} MiB uint8, "
          f"labels {(ds.y_train.nbytes + ds.y_test.nbytes) / 2**20:.1f} MiB int64)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="loads per dataset [3]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="layouts-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        mnist, cifar = write_mnist(root), write_cifar10(root)
        print(f"stand-ins written in {time.perf_counter() - start:.1f} s")
        bench(mnist, args.repeats)
        bench(cifar, args.repeats)


if __name__ == "__main__":
    main()
