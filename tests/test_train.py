"""Training: the loop learns, run folders and checkpoints, resume, fine-tuning, CLI, torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.core.checkpoint import load_checkpoint, model_from_checkpoint
from export.core.errors import UserError
from export.core.models import build_model
from export.data import describe_source, load_training_data, reference_images
from export.train import TrainConfig, run_training
from export.train.adapt import adapt_init_weights
from export.train.cli import main as train_cli
from export.train.datasets import ImageDataset
from export.train.devices import Processes, cpu_thread_count, cpu_threads, pick_device
from export.train.rundir import resolve_run_dir
from export.train.steps import (
    EpochOptions,
    build_optimizer,
    evaluate,
    train_one_epoch,
    warmup_cosine,
)

from cli_helpers import command

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """300 real digits as a user's .npz file: small enough for a run in a second or two."""
    from sklearn.datasets import load_digits

    d = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits300.npz"
    np.savez(path, x=(d.images[:300] * (255 / 16)).round().astype(np.uint8), y=d.target[:300])
    return path


def small_config(data, **changes):
    base = dict(data=str(data), epochs=2, batch_size=32, input_size=16, seed=0, threads=1)
    return TrainConfig(**{**base, **changes})


def quiet(*_args, **_kwargs):
    pass


# --- the loop ---------------------------------------------------------------------------------


def test_a_few_steps_lower_the_loss_on_digits():
    torch.manual_seed(0)
    data = load_training_data(describe_source(None), 16)
    model = build_model("resnet20", num_classes=10, in_chans=1)
    train = ImageDataset(data.images["train"], data.labels["train"], (0.3,), (0.3,))
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, drop_last=True)
    probe = torch.utils.data.DataLoader(train, batch_size=512)
    config = TrainConfig().resolved()
    optimizer = build_optimizer(model, config)
    scheduler = warmup_cosine(optimizer, warmup_steps=3, total_steps=100)
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def loss_on_training_images():
        images, labels = next(iter(probe))
        model.train()  # batch statistics: the running ones are still settling
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(images), labels).item()

    with cpu_threads(1):  # steady on a shared machine
        before = loss_on_training_images()
        stats = train_one_epoch(model, loader, optimizer, scheduler, torch.nn.CrossEntropyLoss(),
                                torch.device("cpu"), scaler, EpochOptions(max_steps=15))
        after = loss_on_training_images()
    assert stats.steps == 15
    assert after < 0.7 * before
    assert stats.top1 > 0.2  # well above chance (0.1) already
    assert scheduler.last_epoch == 15


def test_warmup_then_cosine():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # then only down
    assert lrs[12] == pytest.approx(0.5, abs=0.05) and lrs[-1] < 0.01


def test_evaluate_counts_per_class_and_confusion():
    class Fixed(torch.nn.Module):  # always predicts class 1
        def forward(self, x):
            return torch.tensor([[0.0, 5.0, 0.0]]).repeat(len(x), 1)

    labels = np.array([0, 1, 1, 2])
    loader = torch.utils.data.DataLoader(
        ImageDataset(np.zeros((4, 1, 4, 4), np.uint8), labels, (0.0,), (1.0,)), batch_size=3)
    result = evaluate(Fixed(), loader, torch.device("cpu"), num_classes=3)
    assert result.top1 == 0.5
    assert result.per_class_top1 == [0.0, 1.0, 0.0]
    assert result.confusion == [[0, 1, 0], [0, 2, 0], [0, 1, 0]]


# --- a run, its folder and its checkpoints ----------------------------------------------------


def test_run_folder_and_checkpoint_reload_to_identical_logits(tmp_path, digits_npz):
    result = run_training(small_config(digits_npz), out=tmp_path / "run", echo=quiet)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"best.pt", "last.pt", "metrics.jsonl",
                                                "curves.png", "summary.json"}
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(0 <= r["val_top1"] <= 1 and r["train_loss"] > 0 for r in log)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "resnet8" and summary["epochs"] == 2  # the own-data default
    assert 0.0 <= summary["test_top1"] <= 1.0 and summary["wall_time_s"] > 0
    matrix = np.array(summary["confusion_matrix"])
    assert matrix.sum() == summary["counts"]["test"] == 30  # own data: 10 % held out to test
    assert summary["test_top1"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-6)
    assert Path(summary["checkpoints"]["best"]) == run / "best.pt"

    # best.pt is all resnet-export needs: spec, classes, dataset, config, metrics.
    ckpt = load_checkpoint(run / "best.pt")
    data = load_training_data(ckpt.meta["dataset"], ckpt.spec.input_size)
    train_pixels = data.images["train"].astype(np.float64) / 255
    assert ckpt.spec.in_chans == 1 and ckpt.spec.input_size == 16
    assert ckpt.spec.mean[0] == pytest.approx(train_pixels.mean(), abs=1e-5)
    assert ckpt.spec.std[0] == pytest.approx(train_pixels.std(), abs=1e-5)
    assert ckpt.class_names == [str(d) for d in range(10)]
    assert ckpt.meta["dataset"]["kind"] == "npz" and ckpt.meta["dataset"]["num_images"] == 300
    assert ckpt.meta["train_config"]["epochs"] == 2
    assert ckpt.meta["metrics"]["test_top1"] == summary["test_top1"]
    assert ckpt.meta["epoch"] == summary["best_epoch"]

    model = model_from_checkpoint(ckpt)
    images = torch.from_numpy(reference_images(ckpt.meta["dataset"], ckpt.spec, limit=1000))
    with torch.no_grad():
        reloaded, trained = model(images), result.model(images)
    assert torch.equal(reloaded, trained)
    predicted = reloaded.argmax(1).numpy()
    # summary.json rounds to 6 decimals
    assert (predicted == data.labels["test"]).mean() == pytest.approx(summary["test_top1"],
                                                                      abs=1e-6)


def test_resume_continues_where_last_stopped(tmp_path, digits_npz):
    straight = run_training(small_config(digits_npz, epochs=3), out=tmp_path / "straight",
                            echo=quiet)
    first = run_training(small_config(digits_npz, epochs=1), out=tmp_path / "split", echo=quiet)
    assert load_checkpoint(tmp_path / "split" / "last.pt").meta["epoch"] == 1
    resumed = run_training(None, resume=tmp_path / "split", changes={"epochs": 3}, echo=quiet)

    last = load_checkpoint(tmp_path / "split" / "last.pt")
    assert last.meta["epoch"] == 3
    assert last.meta["step"] == 3 * first.summary["steps"]
    assert last.meta["scheduler"]["last_epoch"] == last.meta["step"]
    log = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    # Model, optimiser, schedule and data order all picked up where they were: the resumed run
    # ends where an uninterrupted one does.
    reference = load_checkpoint(tmp_path / "straight" / "last.pt")
    for key, value in reference.state_dict.items():
        torch.testing.assert_close(last.state_dict[key], value, msg=key)
    assert resumed.summary["test_top1"] == straight.summary["test_top1"]


def test_resume_of_a_finished_run_asks_for_more_epochs(tmp_path, digits_npz):
    run_training(small_config(digits_npz, epochs=1), out=tmp_path / "r", echo=quiet)
    with pytest.raises(UserError, match="already finished 1 of 1 epochs"):
        run_training(None, resume=tmp_path / "r", echo=quiet)
    with pytest.raises(UserError, match="nothing to resume"):
        run_training(None, resume=tmp_path / "elsewhere", echo=quiet)
    with pytest.raises(UserError, match="cannot be resumed"):
        run_training(None, resume=tmp_path / "r" / "best.pt", echo=quiet)


def test_run_folders_are_never_mixed(tmp_path, monkeypatch):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "last.pt").write_bytes(b"")
    config = TrainConfig().resolved()
    with pytest.raises(UserError, match="already holds a training run"):
        resolve_run_dir(taken, config)
    assert resolve_run_dir(taken, config, overwrite=True) == taken
    monkeypatch.chdir(tmp_path)
    default = Path("artifacts/train/resnet20-digits")
    assert resolve_run_dir(None, config) == default
    default.mkdir(parents=True)
    (default / "summary.json").write_text("{}")
    assert resolve_run_dir(None, config) == Path("artifacts/train/resnet20-digits-2")


def test_cuda_without_a_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(UserError, match="no CUDA GPU"):
        pick_device("cuda", Processes())
    assert pick_device("auto", Processes()).type == "cpu"


def test_cpu_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert cpu_thread_count(Processes()) == 8
    assert cpu_thread_count(Processes(local_world_size=4)) == 2
    assert cpu_thread_count(Processes(), requested=3) == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (5.6, 4.0, 3.0))
    assert cpu_thread_count(Processes()) == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (11.0, 9.0, 9.0))
    assert cpu_thread_count(Processes()) == 1

    before = torch.get_num_threads()
    with cpu_threads(1) as count:
        assert count == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# --- fine-tuning ------------------------------------------------------------------------------


def test_init_weights_replace_the_classifier_and_convert_the_stem():
    torch.manual_seed(1)
    source = build_model("resnet20", num_classes=5, in_chans=3).state_dict()
    model = build_model("resnet20", num_classes=10, in_chans=1)
    fresh_fc = model.fc.weight.detach().clone()
    notes = adapt_init_weights(model, source, "test weights")
    assert any("5 -> 10 classes" in n for n in notes) and any("3 to 1" in n for n in notes)
    assert torch.equal(model.layer2[1].conv2.weight, source["layer2.1.conv2.weight"])
    assert torch.equal(model.conv1.weight, source["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.fc.weight, fresh_fc)

    grey = build_model("resnet20", num_classes=10, in_chans=1).state_dict()
    rgb = build_model("resnet20", num_classes=10, in_chans=3)
    adapt_init_weights(rgb, grey, "grey weights")
    image = torch.rand(2, 1, 16, 16)
    plain = build_model("resnet20", num_classes=10, in_chans=1)
    plain.load_state_dict(grey)
    with torch.no_grad():  # a grey picture replicated to RGB gives the same first activation
        torch.testing.assert_close(rgb.conv1(image.repeat(1, 3, 1, 1)), plain.conv1(image))

    with pytest.raises(UserError, match="does not fit"):
        adapt_init_weights(build_model("resnet32", num_classes=10, in_chans=1), grey, "w")


def test_fine_tuning_from_a_torchvision_style_file(tmp_path, digits_npz):
    torch.manual_seed(2)
    source = build_model("resnet20", num_classes=100, in_chans=3).state_dict()
    torch.save(source, tmp_path / "weights.pth")
    result = run_training(small_config(digits_npz, model="resnet20", epochs=1, max_steps=1,
                                       init_weights=str(tmp_path / "weights.pth"), lr=1e-4,
                                       optimizer="adamw"),
                          out=tmp_path / "ft", echo=quiet)
    after = result.model.state_dict()
    # One tiny step away from the file's weights, not from a fresh initialisation.
    torch.testing.assert_close(after["layer3.2.conv2.weight"], source["layer3.2.conv2.weight"],
                               atol=2e-4, rtol=0)
    assert after["fc.weight"].shape == (10, 64)

    with pytest.raises(UserError, match="is --model right"):
        run_training(small_config(digits_npz, model="resnet32", epochs=1,
                                  init_weights=str(tmp_path / "weights.pth")),
                     out=tmp_path / "ft2", echo=quiet)


# --- the command line -------------------------------------------------------------------------


invoke = command(train_cli)


def test_cli_trains_and_resumes(tmp_path, digits_npz):
    out = tmp_path / "cli-run"
    result = invoke(["--data", digits_npz, "--out", out, "--epochs", "1", "--input-size", "16",
                     "--batch-size", "32", "--optimizer", "adamw", "--label-smoothing", "0"])
    assert result.exit_code == 0, result.output
    assert "test top-1" in result.output
    config = load_checkpoint(out / "best.pt").meta["train_config"]
    assert config["optimizer"] == "adamw" and config["lr"] == 1e-3
    assert config["label_smoothing"] == 0 and config["data"] == str(digits_npz)

    again = invoke(["--resume", out, "--epochs", "2"])
    assert again.exit_code == 0, again.output
    assert load_checkpoint(out / "last.pt").meta["epoch"] == 2


@pytest.mark.parametrize("args,expected,code", [
    (["--device", "cuda"], "CUDA", 1),
    (["--data", "/no/such/folder"], "not found", 1),
    (["--optimizer", "rmsprop"], "'rmsprop' is not one of", 2),
    (["--model", "resnet7"], "unknown model", 2),
    (["--epochs", "0"], "--epochs", 2),
    (["--resume", "somewhere", "--lr", "0.5"], "--lr cannot change", 2),
    (["--no-such-option"], "No such option", 2),
])
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, args, expected, code):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    monkeypatch.chdir(tmp_path)
    result = invoke(args)
    assert result.exit_code == code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0], lines
    assert not (tmp_path / "artifacts").exists()


def test_cli_help_lists_the_options():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for option in ("--data", "--epochs", "--optimizer", "--warmup-epochs", "--label-smoothing",
                   "--resume", "--init-weights", "--device", "--workers", "--max-steps"):
        assert option in result.output


# --- more than one process --------------------------------------------------------------------


def test_torchrun_two_processes_on_cpu(tmp_path, digits_npz):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "export.train.cli", "--data", str(digits_npz),
               "--out", str(out), "--epochs", "1", "--max-steps", "3", "--input-size", "16",
               "--batch-size", "16"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training resnet8") == 1  # only rank 0 talks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    ckpt = load_checkpoint(out / "best.pt")
    model = model_from_checkpoint(ckpt)
    assert not any(k.startswith("module.") for k in ckpt.state_dict)
    images = torch.from_numpy(reference_images(ckpt.meta["dataset"], ckpt.spec, limit=8))
    with torch.no_grad():
        assert torch.isfinite(model(images)).all()
    assert not list(out.glob("*.partial"))
