"""Labelled folders and candidates for the release gate: real digits written as PNG files, and
a checkpoint made measurably less accurate than its release.

``write_digits_folder(root, count)`` writes ``count`` of the 1,797 embedded digits (a seeded
choice, 8x8 grayscale as the dataset holds them) into one sub-folder per class, named as the
checkpoints name their classes. ``worse_checkpoint(release, out, folder, lost)`` writes a copy of
a checkpoint whose classifier bias favours one class just enough that ``lost`` more images of
``folder`` go wrong (and none goes right that went wrong before): a real checkpoint, exactly
``lost`` images less accurate there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_digits_folder(root: Path, count: int = 1000, seed: int = 0,
                        labelled_by: Path | None = None) -> Path:
    """``labelled_by``: a checkpoint whose predictions are the labels (a folder it classifies
    perfectly) instead of the digits' own."""
    from export.core.checkpoint import load_checkpoint, model_from_checkpoint
    from export.data import describe_source, preprocess, scan

    scanned = scan(describe_source(None))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(scanned.labels))[:count])
    pixels = scanned.decode(chosen, 8)
    labels = scanned.labels[chosen]
    if labelled_by is not None:
        ckpt = load_checkpoint(labelled_by)
        with torch.no_grad():
            logits = model_from_checkpoint(ckpt).eval()(
                torch.from_numpy(preprocess(pixels, ckpt.spec)))
        labels = logits.numpy().argmax(1)
    for i, (label, image) in enumerate(zip(labels, pixels)):
        folder = root / scanned.class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i:05d}.png")
    return root


def _folder_batch(folder: Path, spec) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from export.data import image_files, preprocess, read_image

    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, c) for c in names for f in image_files(folder / c)]
    x = np.concatenate([preprocess(read_image(f)[None], spec) for f, _ in files])
    return x, np.asarray([c for _, c in files]), names


def worse_checkpoint(release: Path, out: Path, folder: Path, lost: int) -> Path:
    """``release`` with one class's bias raised until exactly ``lost`` images of ``folder``
    that it classified right go wrong."""
    from export.core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

    ckpt = load_checkpoint(release)
    model = model_from_checkpoint(ckpt).eval()
    x, folders, _ = _folder_batch(folder, ckpt.spec)
    names = ckpt.class_names or [str(i) for i in range(ckpt.spec.num_classes)]
    labels = np.asarray([names.index(f) for f in folders])
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    right = logits.argmax(1) == labels
    target = int(np.bincount(labels).argmin())  # a class whose own images are few
    # the margin each rightly classified image has over the target class
    margins = np.sort(logits[right].max(1) - logits[right, target])
    margins = margins[margins > 0]
    shift = float((margins[lost - 1] + margins[lost]) / 2)
    with torch.no_grad():
        model.fc.bias[target] += shift
    worse = model(torch.from_numpy(x)).detach().numpy().argmax(1) == labels
    assert int((right & ~worse).sum()) == lost and not (worse & ~right).any()
    return save_checkpoint(out, model, ckpt.spec, ckpt.class_names)
