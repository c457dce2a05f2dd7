"""Data sources: the digits split, user folders and .npz files, bad data, reference images."""

import numpy as np
import pytest
import torch
from PIL import Image

from export.core.errors import UserError
from export.core.models import ModelSpec
from export.data import (
    channel_stats,
    describe_source,
    load_training_data,
    normalise,
    reference_images,
    split_indices,
)
from export.train.datasets import Augment, ImageDataset


def write_pngs(root, classes, per_class=4, size=12, mode="L", seed=0):
    """A class-per-folder image tree of small random PNGs; returns the root."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.png")
    return root


def write_npz(path, x, y):
    np.savez(path, x=x, y=y)
    return path


def digits_subset(n=200):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] * (255 / 16)).round().astype(np.uint8), d.target[:n]


# --- the embedded digits ----------------------------------------------------------------------


def test_digits_split_is_stratified_disjoint_and_seeded():
    data = load_training_data(describe_source(None, seed=3), input_size=16)
    counts = data.counts()
    assert sum(counts.values()) == 1797
    assert counts["test"] == round(0.2 * 1797) and counts["val"] == round(0.1 * 1797)
    for part in ("train", "val", "test"):
        assert data.images[part].shape[1:] == (1, 16, 16)
        assert data.images[part].dtype == np.uint8
        shares = np.bincount(data.labels[part], minlength=10) / counts[part]
        assert np.all(np.abs(shares - 0.1) < 0.02), part  # every class, in proportion
    assert data.class_names == [str(d) for d in range(10)]
    assert data.dataset["num_images"] == 1797

    labels = np.repeat(np.arange(10), 30)
    a = split_indices(labels, seed=3, val_fraction=0.1, test_fraction=0.2)
    b = split_indices(labels, seed=3, val_fraction=0.1, test_fraction=0.2)
    c = split_indices(labels, seed=4, val_fraction=0.1, test_fraction=0.2)
    everything = np.concatenate([a.train, a.val, a.test])
    assert sorted(everything) == list(range(300))  # a partition
    assert np.array_equal(a.test, b.test) and not np.array_equal(a.test, c.test)


def test_channel_stats_are_those_of_the_pixels():
    images = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    images[0] = 255
    (mean,), (std,) = channel_stats(images)
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.5)


# --- user folders and .npz files --------------------------------------------------------------


def test_folder_of_grayscale_pngs(tmp_path):
    root = write_pngs(tmp_path / "imgs", ["cat", "dog", "eel"], per_class=5)
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored
    data = load_training_data(describe_source(root), input_size=20)
    assert data.class_names == ["cat", "dog", "eel"]
    assert data.in_chans == 1
    assert data.images["train"].shape[1:] == (1, 20, 20)
    assert sum(data.counts().values()) == 15


def test_folder_with_a_colour_image_is_rgb(tmp_path):
    root = write_pngs(tmp_path / "imgs", ["a", "b"], per_class=4)
    Image.fromarray(np.full((9, 7, 3), (200, 10, 10), np.uint8), "RGB").save(root / "a" / "red.jpg")
    data = load_training_data(describe_source(root), input_size=8)
    assert data.in_chans == 3
    everything = np.concatenate([data.images[p] for p in ("train", "val", "test")])
    reds = [img for img in everything if img[0].mean() > 150 and img[1].mean() < 50]
    assert len(reds) == 1  # the JPEG kept its colour; grey images got three equal channels
    grey = [img for img in everything if not (img[0].mean() > 150 and img[1].mean() < 50)]
    assert all(np.array_equal(g[0], g[1]) and np.array_equal(g[1], g[2]) for g in grey)


def test_npz_grayscale_and_rgb(tmp_path):
    x, y = digits_subset(100)
    data = load_training_data(describe_source(write_npz(tmp_path / "d.npz", x, y)), 16)
    assert data.in_chans == 1 and data.num_classes == 10

    rgb = np.random.default_rng(0).random((30, 10, 10, 3), dtype=np.float32)
    labels = np.array(["ant", "bee", "cow"] * 10)
    data = load_training_data(describe_source(write_npz(tmp_path / "c.npz", rgb, labels)), 12)
    assert data.in_chans == 3 and data.class_names == ["ant", "bee", "cow"]
    assert data.images["train"].shape[1:] == (3, 12, 12)


BAD_NPZ = {
    "length mismatch": (np.zeros((10, 8, 8), np.uint8), np.arange(9) % 2, "9 labels"),
    "int64 images": (np.zeros((10, 8, 8), np.int64), np.arange(10) % 2, "uint8"),
    "float labels": (np.zeros((10, 8, 8), np.uint8), np.arange(10) / 2.0, "integer or string"),
    "2-D images": (np.zeros((10, 64), np.uint8), np.arange(10) % 2, "N x H x W"),
    "5 channels": (np.zeros((10, 8, 8, 5), np.uint8), np.arange(10) % 2, "C = 1 or 3"),
    "2-D labels": (np.zeros((10, 8, 8), np.uint8), np.zeros((10, 2), np.int64), "shape N"),
    "floats above 1": (np.full((10, 8, 8), 255.0), np.arange(10) % 2, "0..1"),
    "one class": (np.zeros((10, 8, 8), np.uint8), np.zeros(10, np.int64), "single class"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_npz_gives_one_clear_error(tmp_path, case):
    x, y, expected = BAD_NPZ[case]
    path = write_npz(tmp_path / "bad.npz", x, y)
    with pytest.raises(UserError, match=expected) as info:
        load_training_data(describe_source(path), 16)
    assert "\n" not in str(info.value)


def test_npz_without_the_arrays(tmp_path):
    np.savez(tmp_path / "other.npz", images=np.zeros((4, 8, 8)))
    with pytest.raises(UserError, match="'x' .* 'y'"):
        load_training_data(describe_source(tmp_path / "other.npz"), 16)


def test_missing_path_and_unsupported_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        describe_source(tmp_path / "nowhere")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(UserError, match="unsupported data file"):
        describe_source(tmp_path / "data.csv")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "cats").mkdir()  # a class folder without images does not count
    with pytest.raises(UserError, match="no images found"):
        load_training_data(describe_source(tmp_path / "empty"), 16)


def test_folder_with_a_single_class(tmp_path):
    root = write_pngs(tmp_path / "imgs", ["only"], per_class=6)
    with pytest.raises(UserError, match="single class"):
        load_training_data(describe_source(root), 16)


def test_unreadable_image_is_named(tmp_path):
    root = write_pngs(tmp_path / "imgs", ["a", "b"], per_class=4)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        load_training_data(describe_source(root), 16)


def test_truncated_image_is_named(tmp_path):
    root = write_pngs(tmp_path / "imgs", ["a", "b"], per_class=4, size=64)
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="cut.png"):
        load_training_data(describe_source(root), 16)


def test_class_with_too_few_images(tmp_path):
    root = write_pngs(tmp_path / "imgs", ["a", "b"], per_class=5)
    for f in sorted((root / "b").iterdir())[2:]:
        f.unlink()
    with pytest.raises(UserError, match="class 'b' has 2 image"):
        load_training_data(describe_source(root), 16)


def test_fractions_are_checked():
    with pytest.raises(UserError, match="between 0 and 1"):
        describe_source(None, test_fraction=1.5)
    with pytest.raises(UserError, match="too little to train"):
        describe_source(None, val_fraction=0.45, test_fraction=0.45)


# --- reference_images: the contract with the exporter -----------------------------------------


def test_reference_images_are_the_normalised_test_split():
    dataset = describe_source(None, seed=5)
    spec = ModelSpec.create("resnet20", 10, in_chans=1, input_size=16, mean=(0.3,), std=(0.4,))
    everything = reference_images(dataset, spec, limit=10_000)
    data = load_training_data(dataset, 16)
    assert everything.dtype == np.float32 and everything.flags.c_contiguous
    assert np.array_equal(everything, normalise(data.images["test"], (0.3,), (0.4,)))
    pixels = everything * 0.4 + 0.3  # undo the normalisation: back to 0..1 in steps of 1/255
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    np.testing.assert_allclose(pixels * 255, np.round(pixels * 255), atol=1e-3)


def test_reference_images_are_deterministic_and_seeded():
    spec = ModelSpec.create("resnet20", 10, in_chans=1, input_size=32)
    a = reference_images(None, spec)
    assert a.shape == (64, 1, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, reference_images(None, spec))
    assert not np.array_equal(a, reference_images(None, spec, seed=1))
    assert reference_images(None, spec, limit=5).shape == (5, 1, 32, 32)
    test_part = load_training_data(describe_source(None), 32).images["test"]
    flat = {img.tobytes() for img in normalise(test_part, spec.mean, spec.std)}
    assert all(img.tobytes() in flat for img in a)  # only test-split images


def test_reference_images_convert_channels(tmp_path):
    rgb_spec = ModelSpec.create("resnet18", 10, in_chans=3, input_size=24)
    x = reference_images(None, rgb_spec, limit=4)
    assert x.shape == (4, 3, 24, 24)
    pixels = x * np.array(rgb_spec.std, np.float32)[:, None, None] \
        + np.array(rgb_spec.mean, np.float32)[:, None, None]
    np.testing.assert_allclose(pixels[:, 0], pixels[:, 2], atol=1e-5)  # grey replicated

    colours = np.zeros((12, 6, 6, 3), np.uint8)
    colours[..., 1] = 200  # pure green
    path = write_npz(tmp_path / "green.npz", colours, np.arange(12) % 2)
    grey_spec = ModelSpec.create("resnet20", 2, in_chans=1, input_size=6, mean=(0.0,), std=(1.0,))
    grey = reference_images(describe_source(path), grey_spec)
    assert grey.shape[1] == 1
    np.testing.assert_allclose(grey * 255, round(0.587 * 200), atol=1e-3)  # luma of the green


def test_reference_images_for_a_moved_or_changed_dataset(tmp_path):
    x, y = digits_subset(60)
    path = write_npz(tmp_path / "d.npz", x, y)
    dataset = load_training_data(describe_source(path), 16).dataset  # as a checkpoint has it
    spec = ModelSpec.create("resnet20", 10, in_chans=1, input_size=16)
    assert reference_images(dataset, spec).shape[1:] == (1, 16, 16)
    write_npz(path, x[:50], y[:50])
    with pytest.raises(UserError, match="changed since training"):
        reference_images(dataset, spec)
    path.unlink()
    with pytest.raises(UserError, match="no longer at .*d.npz"):
        reference_images(dataset, spec)


def test_reference_images_for_digits_is_fast():
    import time

    spec = ModelSpec.create("resnet20", 10, in_chans=1, input_size=32)
    reference_images(None, spec)  # first call reads the bundled file
    started = time.perf_counter()
    reference_images(None, spec)
    assert time.perf_counter() - started < 1.0


# --- the training-time dataset ----------------------------------------------------------------


def test_augmentation_is_seeded_per_epoch_and_stays_small():
    x, y = digits_subset(8)
    images = np.ascontiguousarray(
        torch.nn.functional.interpolate(torch.from_numpy(x[:, None]).float(), size=16)
        .round().to(torch.uint8).numpy())
    plain = ImageDataset(images, y, (0.0,), (1.0,))
    jitter = ImageDataset(images, y, (0.0,), (1.0,), Augment(), seed=7)
    same = ImageDataset(images, y, (0.0,), (1.0,), Augment(), seed=7)
    first = jitter[3][0]
    assert torch.equal(first, same[3][0])
    jitter.set_epoch(1)
    assert not torch.equal(first, jitter[3][0])
    original = plain[3][0]
    assert not torch.equal(first, original)
    assert plain[3][1].item() == y[3]

    # No jitter is the identity; the default jitter moves the digit by a pixel or two, no more.
    still = ImageDataset(images, y, (0.0,), (1.0,), Augment(0.0, 0.0, 0.0), seed=7)
    torch.testing.assert_close(still[3][0], original, atol=1e-5, rtol=0)

    def centroid(img):
        grid = torch.arange(16, dtype=torch.float32)
        mass = img[0] / img[0].sum()
        return torch.stack([(mass.sum(1) * grid).sum(), (mass.sum(0) * grid).sum()])

    moves = []
    for epoch in range(20):
        jitter.set_epoch(epoch)
        moves.append((centroid(jitter[3][0]) - centroid(original)).norm().item())
    assert max(moves) < 0.25 * 16 and np.mean(moves) > 0.2
