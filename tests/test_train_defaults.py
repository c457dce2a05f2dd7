"""Own data with the defaults (issue 12): small datasets, small images, fine-tuning, bad runs.

The README's own-data line, ``resnet-train --data my_images/ --depth 18``, on a folder of 163
32x32 images in four classes once gave chance-level accuracy without a word: one step of 64
images per epoch (50 images dropped each time), 32x32 upscaled to 224, and a training loss that
diverged. These tests hold the defaults to a good model on such a folder, and every quiet
failure to one clear line.
"""

import json
import math

import numpy as np
import pytest
import torch

from export.core.errors import UserError
from export.core.models import build_model
from export.train import TrainConfig, run_training
from export.train.adapt import adapt_init_weights
from export.train.cli import main as train_cli
from export.train.monitor import Monitor
from export.train.notes import default_notes
from export.train.setup import train_batching

from cli_helpers import command
from small_images import CLASSES, write_shapes_folder


@pytest.fixture(scope="module")
def shapes163(tmp_path_factory):
    """163 32x32 colour images in four classes, one sub-folder each, as in issue 12."""
    return write_shapes_folder(tmp_path_factory.mktemp("data") / "my_images", 163)


invoke = command(train_cli)


# --- defaults that follow the data ------------------------------------------------------------


def test_input_size_and_stem_follow_the_images():
    mnist = TrainConfig(model="resnet18", data="d").resolved(image_size=28, train_images=54_000)
    assert (mnist.input_size, mnist.stem) == (28, "small")
    assert (mnist.epochs, mnist.warmup_epochs, mnist.batch_size, mnist.lr) == (2, 0.2, 64, 0.1)
    photos = TrainConfig(model="resnet50", data="d").resolved(image_size=500, train_images=900)
    assert (photos.input_size, photos.stem, photos.epochs) == (224, "imagenet", 30)  # small data
    digits = TrainConfig(model="resnet18").resolved()  # the embedded 8x8 digits
    assert (digits.input_size, digits.stem) == (16, "small")
    default = TrainConfig().resolved()  # plain resnet-train: unchanged
    assert (default.model, default.input_size, default.epochs, default.batch_size,
            default.lr, default.warmup_epochs) == ("resnet20", 16, 15, 64, 0.1, 1.0)
    cifar = TrainConfig(model="resnet20", data="d").resolved(image_size=28, train_images=500)
    assert (cifar.input_size, cifar.stem) == (28, "small")
    # what is asked for wins, and the stem follows an explicit input size
    big = TrainConfig(model="resnet18", data="d", input_size=224).resolved(28, 54_000)
    assert (big.input_size, big.stem) == (224, "imagenet")
    asked = TrainConfig(model="resnet18", data="d", stem="imagenet").resolved(28, 54_000)
    assert (asked.input_size, asked.stem) == (28, "imagenet")
    with pytest.raises(UserError, match="small-image ResNet"):
        TrainConfig(model="resnet20", stem="imagenet").resolved()


def test_a_small_training_split_gets_a_smaller_batch_and_rate():
    small = TrainConfig(model="resnet18", data="d", optimizer="sgd").resolved(32, 114)
    assert (small.batch_size, small.lr) == (16, 0.025)
    assert TrainConfig(data="d").resolved(32, 300).batch_size == 37  # 8 steps per epoch
    assert TrainConfig(data="d").resolved(32, 5000).batch_size == 64
    assert TrainConfig(data="d", batch_size=64).resolved(32, 114).batch_size == 64  # as asked
    assert TrainConfig(data="d", optimizer="adamw").resolved(32, 114).lr == 1e-3


def test_fine_tuning_starts_ten_times_slower():
    assert TrainConfig(init_weights="w.pth").resolved().lr == pytest.approx(0.01)
    assert TrainConfig(init_weights="w.pth", optimizer="adamw").resolved().lr == \
        pytest.approx(1e-4)
    assert TrainConfig(init_weights="w.pth", lr=0.05).resolved().lr == 0.05
    small = TrainConfig(data="d", init_weights="w.pth").resolved(32, 114)
    assert small.lr == pytest.approx(0.0025)


def test_one_line_names_what_the_data_chose():
    asked = TrainConfig(model="resnet18", data="d", init_weights="w.pth")
    chosen = asked.resolved(image_size=32, train_images=114)
    phrases = dict((option, phrase) for phrase, option in default_notes(asked, chosen, 32, 114))
    assert phrases["--input-size"] == "input size 32 (the images are 32 px)"
    assert phrases["--stem"].startswith("small stem")
    assert phrases["--batch-size"] == "batch 16 (at least 8 steps per epoch)"
    assert phrases["--lr"] == ("lr 0.0025 (for batch 16, 10x lower for fine-tuning from "
                               "--init-weights)")
    assert "--epochs" not in phrases
    plain = TrainConfig()
    assert default_notes(plain, plain.resolved(), 8, 1258) == [
        ("input size 16 (the images are 8 px, upscaled)", "--input-size")]


def test_imagenet_weights_fine_tune_a_small_stem_with_a_fresh_conv1():
    torch.manual_seed(0)
    imagenet = build_model("resnet18").state_dict()
    model = build_model("resnet18", num_classes=4, stem="small")
    fresh = model.conv1.weight.detach().clone()
    notes = adapt_init_weights(model, imagenet, "resnet18.pth")
    assert any("conv1 is 7x7" in n and "starts fresh" in n for n in notes)
    assert torch.equal(model.conv1.weight, fresh)
    assert torch.equal(model.layer1[0].conv1.weight, imagenet["layer1.0.conv1.weight"])


# --- no data silently dropped -----------------------------------------------------------------


def test_the_last_partial_batch_is_kept_unless_it_is_tiny():
    assert train_batching(114, 64) == (64, False)  # was: one step, 50 images dropped
    assert train_batching(114, 16) == (16, True)  # 2 of 114 left over (1.8 %)
    assert train_batching(1258, 64) == (64, True)  # the digits: 42 of 1258 (3.3 %), as before
    assert train_batching(65, 64) == (64, True)  # a batch of one cannot be normalised
    assert train_batching(30, 64) == (30, False)  # never more than the split
    assert train_batching(114, 64, world_size=2) == (57, False)
    for images, batch in ((114, 64), (163, 16), (1000, 64), (70, 32)):
        size, drop = train_batching(images, batch)
        assert not drop or images % size <= max(1, 0.05 * images)


# --- runs that fail quietly -------------------------------------------------------------------


def test_monitor_stops_divergence_and_warns_near_chance():
    config = TrainConfig().resolved()
    monitor = Monitor(4, np.array([0, 1, 2, 3] * 4), config)
    monitor.check_training(1.5, 1, config)  # about a guess (ln 4 = 1.39): fine
    with pytest.raises(UserError, match="training diverged in epoch 2.*4.96"):
        monitor.check_training(4.96, 2, config)  # the second epoch
    with pytest.raises(UserError, match="not finite"):
        monitor.check_training(math.nan, 1, config)
    with pytest.raises(UserError, match="validation loss is not finite"):
        monitor.check_validation(math.inf, 3)
    assert monitor.after_epoch(0.25, 4) is None  # too early to say: a third of 15 epochs is 5
    warning = monitor.after_epoch(0.25, 5)
    assert "near chance after 5 epochs" in warning and "25.0%" in warning
    assert monitor.after_epoch(0.25, 6) is None  # said once
    assert Monitor(4, np.array([0, 1, 2, 3]), config).after_epoch(0.75, 5) is None
    # 30 epochs on a few hundred images: still near chance at epoch 3 says nothing yet
    long = Monitor(4, np.array([0, 1, 2, 3]), TrainConfig(epochs=30).resolved())
    assert long.after_epoch(0.25, 3) is None and long.after_epoch(0.25, 10) is not None
    assert Monitor(2, np.array([0, 1]), config).near_chance(0.6)
    assert not Monitor(10, np.arange(10), config).near_chance(0.4)
    # a smoke run cut short by --max-steps is not expected to have learned anything
    smoke = TrainConfig(max_steps=3).resolved()
    assert not Monitor(4, np.array([0, 1, 2, 3]), smoke).near_chance(0.25)
    fine = Monitor(4, np.array([0, 1, 2, 3]), TrainConfig(init_weights="w.pt").resolved())
    assert "--init-weights" not in fine.after_epoch(0.25, 5)


def test_small_data_defaults_make_resnet18_worth_typing():
    """Issue 19: 300 64x64 images, ResNet-18 at 64 px with the small stem and SGD reached 58% in
    501 s; at 32 px with AdamW for 30 epochs 92% in 258 s."""
    asked = TrainConfig(model="resnet18", data="d")
    chosen = asked.resolved(image_size=64, train_images=240)
    assert (chosen.input_size, chosen.stem, chosen.optimizer, chosen.epochs, chosen.lr,
            chosen.weight_decay) == (32, "small", "adamw", 30, 1e-3, 0.05)
    phrases = dict((option, phrase) for phrase, option in default_notes(asked, chosen, 64, 240))
    assert phrases["--input-size"].startswith("input size 32 (the images are 64 px, downscaled")
    assert phrases["--optimizer"] == "adamw (small data: 240 training images)"
    assert phrases["--epochs"] == "30 epochs (small data)"
    # what is asked for wins; large data, fine-tuning and the small-image models are unchanged
    assert TrainConfig(model="resnet18", data="d", input_size=64, optimizer="sgd",
                       epochs=15).resolved(64, 240).optimizer == "sgd"
    large = TrainConfig(model="resnet18", data="d").resolved(64, 20_000)
    assert (large.input_size, large.optimizer, large.epochs) == (64, "sgd", 5)
    tune = TrainConfig(model="resnet18", data="d", init_weights="w.pth").resolved(64, 240)
    assert (tune.input_size, tune.optimizer, tune.epochs) == (64, "sgd", 15)
    ours = TrainConfig(data="d").resolved(64, 240)
    assert (ours.model, ours.downsample, ours.input_size, ours.optimizer, ours.epochs) == (
        "resnet8", "avgpool", 32, "sgd", 15)


def test_a_run_still_improving_at_its_last_epoch_says_to_train_longer(tmp_path):
    from export.train.monitor import train_longer
    from export.train.setup import Progress

    config = TrainConfig(epochs=15).resolved()
    rising = Progress(epoch=15, best=(0.58, -1.0), best_epoch=15)
    hint = train_longer(rising, config, tmp_path)
    assert "came in the last epoch (15)" in hint and f"--resume {tmp_path} --epochs 30" in hint
    assert train_longer(Progress(epoch=15, best=(0.9, -1.0), best_epoch=11), config,
                        tmp_path) is None
    assert train_longer(Progress(epoch=15, best=(1.0, -0.1), best_epoch=15), config,
                        tmp_path) is None


def test_a_diverging_run_stops_with_one_line(tmp_path, shapes163):
    result = invoke(["--data", shapes163, "--lr", "20", "--epochs", "3", "--input-size", "16",
                     "--out", tmp_path / "run"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: training diverged in epoch") and "lower --lr" in last


def test_progress_bars_only_on_a_terminal(tmp_path, shapes163):
    common = ["--data", shapes163, "--epochs", "1", "--max-steps", "2", "--input-size", "16"]
    quiet = invoke(common + ["--out", tmp_path / "a"])
    assert quiet.exit_code == 0, quiet.output
    # (2 of the epoch's 8 steps: a partial epoch, which --resume would finish)
    assert "batch/s" not in quiet.output and "epoch 1/1 (steps 1..2 of 8)  train loss" in \
        quiet.output
    shown = invoke(common + ["--out", tmp_path / "b", "--progress"])
    assert shown.exit_code == 0 and "batch/s" in shown.output


# --- the README's own-data lines, with their defaults ------------------------------------------


def check_good_model(run, shapes163):
    summary = json.loads((run / "summary.json").read_text())
    assert summary["class_names"] == list(CLASSES)
    assert summary["counts"] == {"train": 131, "val": 16, "test": 16}  # 80 / 10 / 10 %
    assert summary["spec"]["input_size"] == 32
    assert summary["train_config"]["batch_size"] == 16
    assert summary["steps"] == 15 * 8  # 131 images in 8 steps of 16, 3 left over per epoch
    assert summary["warnings"] == []
    # chance is 27 % (9 of 33 in the largest class); a good model is far above it
    assert summary["test_top1"] >= 0.85, summary["test_top1"]
    return summary


def test_default_run_on_a_small_folder_learns_and_exports(tmp_path, shapes163):
    """``resnet-train --data my_images/`` (resnet8, average-pool downsampling: 5 to 20 s here),
    then its best.pt through ``resnet-export`` to FP32 and INT8 ONNX: both gates pass and the
    graph pools where the paper's network strides."""
    import onnx

    from export.cli import main as export_cli

    result = invoke(["--data", shapes163, "--out", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    assert "defaults for this data: resnet8 with avgpool downsampling (your data); whole-pixel " \
           "shifts (the images are not upscaled); batch 16" in result.output
    assert "input size 32" not in result.output  # the images' own size
    summary = check_good_model(tmp_path / "run", shapes163)
    assert (summary["spec"]["name"], summary["spec"]["downsample"]) == ("resnet8", "avgpool")
    exported = command(export_cli)(["--checkpoint", tmp_path / "run" / "best.pt", "--fmt",
                                    "onnx", "--fmt", "onnx-int8", "--out-dir", tmp_path / "art"])
    assert exported.exit_code == 0, exported.output
    for fmt in ("onnx", "onnx-int8"):
        folder = tmp_path / "art" / f"resnet8-run-{fmt}"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["parity"]["passed"] is True, (fmt, manifest["parity"])
        assert manifest["model"]["downsample"] == "avgpool"
    graph = onnx.load(str(tmp_path / "art" / "resnet8-run-onnx" / "resnet8.onnx")).graph
    assert sum(node.op_type == "AveragePool" for node in graph.node) == 2


@pytest.mark.slow
def test_readme_own_data_line_with_resnet18_learns(tmp_path, shapes163):
    """``resnet-train --data my_images/ --depth 18``: 4 to 17 minutes on a shared 2-core CPU."""
    result = invoke(["--data", shapes163, "--depth", "18", "--out", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    assert "input size 32 (the images are 32 px); small stem" in result.output
    summary = check_good_model(tmp_path / "run", shapes163)
    assert summary["spec"]["stem"] == "small"


def test_resume_keeps_the_chosen_defaults(tmp_path, shapes163):
    run = tmp_path / "run"
    first = run_training(TrainConfig(data=str(shapes163), epochs=1, input_size=16, threads=1),
                         out=run, echo=lambda *a, **k: None)
    assert first.summary["train_config"]["batch_size"] == 16
    again = run_training(None, resume=run, changes={"epochs": 2}, echo=lambda *a, **k: None)
    assert again.summary["train_config"]["batch_size"] == 16
    assert again.summary["train_config"]["lr"] == pytest.approx(0.025)
