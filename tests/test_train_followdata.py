"""Own-data defaults and stopping (issue 27): shifts where safe, flips only when asked, small
folders kept mostly for training, a time estimate, and a stopped run resumed where it stopped
(a partial epoch included)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.core.checkpoint import load_checkpoint
from export.data import describe_source, scan, split_of
from export.train import TrainConfig, run_training
from export.train.cli import main as train_cli
from export.train.datasets import Augment, ImageDataset

from cli_helpers import command, error_line

invoke = command(train_cli)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """240 real 8x8 digits as a user's .npz file (upscaled to 16 px by the default)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits240.npz"
    np.savez(path, x=(d.images[:240] * (255 / 16)).round().astype(np.uint8), y=d.target[:240])
    return path


def tiny(data, **changes):
    base = dict(data=str(data), epochs=2, batch_size=16, input_size=16, seed=0, threads=1)
    return TrainConfig(**{**base, **changes})


def quiet(*_args, **_kwargs):
    pass


# --- defaults that follow the data ------------------------------------------------------------


def test_shifts_by_default_and_flips_only_when_asked_for():
    folder = TrainConfig(data="d").resolved(image_size=32, train_images=1600)
    assert folder.augment is True and folder.hflip is False
    digits = TrainConfig().resolved()  # the embedded digits: shifted, never flipped
    assert digits.augment is True and digits.hflip is False
    assert TrainConfig(data="d", hflip=True).resolved(32, 1600).hflip is True
    assert TrainConfig(data="d", augment=False).resolved(32, 1600).augment is False
    line = error_line(invoke(["--hflip", "--epochs", "1"]), 2)
    assert "--hflip" in line and "mirrored digit" in line


def _asymmetric(n=4, side=16):
    """Images whose left half is bright and right half dark: a flip is easy to see."""
    images = np.zeros((n, 1, side, side), np.uint8)
    images[:, :, :, : side // 2] = 255
    return images, np.arange(n) % 2


def test_the_default_jitter_moves_but_never_flips():
    images, labels = _asymmetric()
    plain = ImageDataset(images, labels, (0.5,), (0.5,))
    shifted = ImageDataset(images, labels, (0.5,), (0.5,), Augment(), seed=3)
    flipped = ImageDataset(images, labels, (0.5,), (0.5,), Augment(0.0, 0.0, 0.0, hflip=True),
                           seed=3)
    original = plain[1][0]
    moved = mirrored = 0
    for epoch in range(24):
        shifted.set_epoch(epoch)
        flipped.set_epoch(epoch)
        x = shifted[1][0]
        # 10 degrees, 10 % and 10 %: the left columns stay bright, the right ones dark
        assert (x[..., :3] > 0).all() and (x[..., 13:] < 0).all()
        moved += not torch.equal(x, original)
        y = flipped[1][0]
        assert torch.equal(y, original) or torch.equal(y, original.flip(-1))
        mirrored += torch.equal(y, original.flip(-1))
    assert moved == 24 and 4 <= mirrored <= 20
    again = ImageDataset(images, labels, (0.5,), (0.5,), Augment(), seed=3)
    again.set_epoch(23)
    assert torch.equal(again[1][0], shifted[1][0])  # seeded by (seed, epoch, index)


def test_the_model_and_the_jitter_follow_the_data(tmp_path):
    """Own data: resnet8 pooling between stages, whole-pixel shifts at the images' own size;
    the digits and MNIST / CIFAR as stored: the paper's resnet20 and the affine jitter they
    always had; own images that are upscaled: the affine jitter; a named model is the paper's
    network."""
    from layout_writers import gray28, write_torchvision

    write_torchvision(tmp_path, gray28())
    mnist = TrainConfig(data=str(tmp_path)).resolved(image_size=28, train_images=1000)
    assert (mnist.model, mnist.downsample, mnist.jitter) == ("resnet20", "stride", "affine")
    own = TrainConfig(data="d").resolved(image_size=32, train_images=1600)
    assert (own.model, own.downsample, own.jitter) == ("resnet8", "avgpool", "shift")
    digits = TrainConfig().resolved()
    assert (digits.model, digits.downsample, digits.jitter) == ("resnet20", "stride", "affine")
    named = TrainConfig(model="resnet20", data="d").resolved(32, 1600)
    assert (named.model, named.downsample) == ("resnet20", "stride")
    assert TrainConfig(data="d").resolved(8, 1600).jitter == "affine"  # upscaled to 16
    asked = TrainConfig(model="resnet56", data="d", downsample="avgpool", jitter="affine")
    assert (asked.resolved(32, 1600).downsample, asked.resolved(32, 1600).jitter) == (
        "avgpool", "affine")
    again = TrainConfig.from_dict(own.to_dict()).resolved(32, 1600)  # what a resume reads
    assert (again.model, again.downsample, again.jitter) == ("resnet8", "avgpool", "shift")
    before = {k: v for k, v in digits.to_dict().items() if k not in ("jitter", "downsample")}
    assert TrainConfig.from_dict(before).resolved().jitter == "affine"  # what older runs had


def test_downsample_and_jitter_refuse_what_cannot_be(tmp_path):
    line = error_line(invoke(["--depth", "18", "--downsample", "avgpool", "--epochs", "1",
                              "--out", tmp_path / "r"]), 2)
    assert "--downsample avgpool" in line and "small-image ResNets" in line
    assert "Invalid value for '--jitter'" in error_line(invoke(["--jitter", "blur"]), 2)
    assert not (tmp_path / "r").exists()


def test_whole_pixel_shifts_keep_every_pixel_value():
    """The shift jitter moves the image by whole pixels (at most 4 at 32 px), replicating the
    border: the moved image is the original's window, not a resampled (smoothed) copy."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(1, 3, 32, 32), dtype=np.uint8)
    plain = ImageDataset(images, np.zeros(1), (0.0,) * 3, (1.0,) * 3)
    shifted = ImageDataset(images, np.zeros(1), (0.0,) * 3, (1.0,) * 3,
                           Augment.for_mode("shift", hflip=False), seed=1)
    original = plain[0][0]
    padded = torch.nn.functional.pad(original[None], (4, 4, 4, 4), mode="replicate")[0]
    offsets = set()
    for epoch in range(30):
        shifted.set_epoch(epoch)
        x = shifted[0][0]
        found = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.equal(x, padded[:, dy:dy + 32, dx:dx + 32])]
        assert found, "not a whole-pixel shift of the image"
        offsets.add(found[0])
    assert len(offsets) >= 10  # 30 draws of 81 offsets
    # the affine jitter resamples: on pixel noise it lowers the spread the test images keep
    affine = ImageDataset(images, np.zeros(1), (0.0,) * 3, (1.0,) * 3, Augment(), seed=1)
    spreads = []
    for epoch in range(10):
        affine.set_epoch(epoch)
        spreads.append(float(torch.std(affine[0][0]) / torch.std(original)))
    assert max(spreads) < 0.95, spreads


def test_own_data_keeps_eighty_percent_for_training(tmp_path, digits_npz):
    config = TrainConfig(data="d").resolved(32, 1600)
    assert (config.val_fraction, config.test_fraction) == (0.1, 0.1)
    digits = TrainConfig().resolved()
    assert (digits.val_fraction, digits.test_fraction) == (0.1, 0.2)  # the reference split
    asked = TrainConfig(data="d", test_fraction=0.3).resolved(32, 1600)
    assert (asked.val_fraction, asked.test_fraction) == (0.1, 0.3)
    dataset = describe_source(digits_npz, 0, config.val_fraction, config.test_fraction)
    split = split_of(scan(dataset), dataset)
    assert (len(split.train), len(split.val), len(split.test)) == (192, 24, 24)


# --- a run that stops and goes on -------------------------------------------------------------


def test_max_steps_within_an_epoch_resumes_that_epoch(tmp_path, digits_npz):
    """--max-steps that stops inside epoch 1 leaves it unfinished; --resume trains its other
    steps, not a fresh epoch 2, and ends where an uninterrupted run ends."""
    straight = run_training(tiny(digits_npz), out=tmp_path / "straight", echo=quiet)
    assert straight.summary["steps"] == 24  # 192 training images in batches of 16, 2 epochs

    lines = []
    run_training(tiny(digits_npz, max_steps=5), out=tmp_path / "split", echo=lines.append)
    last = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (last.meta["epoch"], last.meta["step"], last.meta["epoch_step"]) == (0, 5, 0 + 5)
    assert any(line.startswith("epoch 1/2 (steps 1..5 of 12)") for line in lines), lines
    assert (f"--max-steps: `resnet-train --resume {tmp_path / 'split'}` goes on from epoch 1 at "
            "step 5 of 12") in lines, lines
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert (summary["epochs"], summary["steps"]) == (0, 5)

    lines.clear()
    resumed = run_training(None, resume=tmp_path / "split", echo=lines.append)
    assert any("epoch 1 from step 6 of 12" in line for line in lines), lines
    last = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (last.meta["epoch"], last.meta["step"], last.meta["epoch_step"]) == (2, 24, 0)
    assert last.meta["scheduler"]["last_epoch"] == 24
    log = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r.get("partial", False)) for r in log] == [(1, False), (2, False)]
    reference = load_checkpoint(tmp_path / "straight" / "last.pt")
    for key, value in reference.state_dict.items():
        torch.testing.assert_close(last.state_dict[key], value, msg=key)
    assert resumed.summary["test_top1"] == straight.summary["test_top1"]


def test_the_estimate_comes_before_the_first_epoch(tmp_path, digits_npz):
    result = invoke(["--data", digits_npz, "--out", tmp_path / "r", "--epochs", "1",
                     "--input-size", "16", "--batch-size", "16", "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    estimate = [i for i, line in enumerate(lines) if line.startswith("estimate: about ")]
    epoch = [i for i, line in enumerate(lines) if line.startswith("epoch 1/1")]
    assert len(estimate) == 1 and epoch and estimate[0] < epoch[0], result.output
    assert "for 1 epoch (12 steps) on this machine" in lines[estimate[0]]


def test_a_stop_ends_at_a_step_and_prints_the_resume_command(tmp_path, monkeypatch,
                                                             digits_npz):
    """What the loop does once a stop is asked for (the signal itself: the slow test below):
    the step in flight ends, last.pt holds it, the resume command is printed, exit 130."""
    from export.train import loop
    from export.train.interrupt import StopRequest

    class StopAfterThreeSteps(StopRequest):
        asked = 0

        def __call__(self) -> bool:  # asked before the epochs, then before every batch
            self.asked += 1
            return self.asked > 4

    @contextlib.contextmanager
    def stop_soon(enabled=True):
        yield StopAfterThreeSteps()

    monkeypatch.setattr(loop, "stop_after_step", stop_soon)
    out = tmp_path / "r"
    result = invoke(["--data", digits_npz, "--out", out, "--epochs", "2", "--input-size", "16",
                     "--batch-size", "16", "--threads", "1"])
    assert result.exit_code == 130, result.output
    assert (f"stopped: `resnet-train --resume {out}` goes on from epoch 1 at step 3 of 12"
            in result.output), result.output
    last = load_checkpoint(out / "last.pt")
    assert (last.meta["epoch"], last.meta["step"], last.meta["epoch_step"]) == (0, 3, 3)
    monkeypatch.undo()
    resumed = invoke(["--resume", out, "--epochs", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert "epoch 1 from step 4 of 12" in resumed.output
    assert load_checkpoint(out / "last.pt").meta["step"] == 12


@pytest.mark.slow
def test_a_stop_signal_saves_the_step_and_prints_the_resume_command(tmp_path, digits_npz):
    """SIGINT in the middle of epoch 1 (in a process of its own): the run ends at a step,
    last.pt holds that step, the exact --resume command is printed, and it goes on from there."""
    out = tmp_path / "run dir"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "export.train.cli", "--data", str(digits_npz), "--out", str(out),
         "--epochs", "40", "--input-size", "16", "--batch-size", "16", "--threads", "1",
         "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=tmp_path)
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("estimate: "):  # said after step 6 of epoch 1's 12
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    output = "".join(seen) + rest
    assert proc.returncode == 130, output
    assert "Traceback" not in output and output.rstrip().endswith("interrupted"), output
    last = load_checkpoint(out / "last.pt")  # the step in flight ended; nothing validated
    step = last.meta["step"]
    assert last.meta["epoch"] == 0 and 6 <= step < 12 and last.meta["epoch_step"] == step
    assert not (out / "best.pt").exists()
    assert (f"stopped: `resnet-train --resume '{out}'` goes on from epoch 1 at step {step} of "
            "12") in output, output
    resumed = invoke(["--resume", out, "--epochs", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert f"epoch 1 from step {step + 1} of 12" in resumed.output
    final = load_checkpoint(out / "last.pt")
    assert (final.meta["epoch"], final.meta["step"], final.meta["epoch_step"]) == (1, 12, 0)
