"""Checkpoints and weights files (export.core.checkpoint, export.core.weights): a file that is
not weights is one clear line in every command, and every field of a checkpoint's metadata is
checked on load."""

import os
import zipfile

import numpy as np
import pytest

from export.cli import main as export_cli
from export.core.checkpoint import load_checkpoint
from export.core.errors import UserError
from export.train.cli import main as train_cli

from cli_helpers import only_error_line as error_line
from train_fixtures import TINY, edited_checkpoint, invoke

# --- weights files that are not weights files ----------------------------------------------------


def _not_weights(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "passwd":
        path.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/sh\n")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "not a torch file")
    elif kind == "zip-folder":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/notes.txt", "not a torch file either")
    else:
        path.write_bytes(np.random.default_rng(int(kind.split("-")[1])).bytes(4096))
    return path


NOT_WEIGHTS = ["text", "empty", "passwd", "zip", "zip-folder",
               *(f"random-{seed}" for seed in range(8))]


@pytest.mark.parametrize("kind", NOT_WEIGHTS)
def test_a_file_that_is_not_weights_is_one_clear_error(tmp_path, kind):
    with pytest.raises(UserError, match="not a valid PyTorch weights file"):
        load_checkpoint(_not_weights(tmp_path, kind))


def test_etc_passwd_is_not_weights():
    with pytest.raises(UserError, match="not a valid PyTorch weights file"):
        load_checkpoint("/etc/passwd")


@pytest.mark.parametrize("kind", ["text", "random-1", "zip"])
def test_every_command_refuses_a_non_weights_file_in_one_line(tmp_path, monkeypatch, images,
                                                              kind):
    monkeypatch.chdir(tmp_path)
    bad = _not_weights(tmp_path, kind)
    line = error_line(invoke(export_cli, "--checkpoint", bad, "--fmt", "onnx"), 1)
    assert "not a valid PyTorch weights file" in line
    line = error_line(invoke(train_cli, "--data", images, "--init-weights", bad, *TINY), 1)
    assert "not a valid PyTorch weights file" in line
    line = error_line(invoke(train_cli, "--resume", bad), 1)
    assert "not a valid PyTorch weights file" in line
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(bad.read_bytes())
    line = error_line(invoke(train_cli, "--resume", run), 1)
    assert "not a valid PyTorch weights file" in line


def test_weights_paths_that_are_not_regular_files(tmp_path, no_hang):
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        load_checkpoint(fifo)  # opening it would wait for a writer forever
    with pytest.raises(UserError, match="not a regular file"):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / ("w" * 300 + ".pt"))  # too long a name to exist


# --- checkpoint metadata is checked on load ------------------------------------------------------


def test_a_valid_checkpoint_still_loads(tmp_path):
    ckpt = load_checkpoint(edited_checkpoint(tmp_path))
    assert ckpt.class_names == ["a", "b", "c"] and ckpt.spec.num_classes == 3
    assert ckpt.meta["dataset"]["kind"] == "digits"


@pytest.mark.parametrize("changes,expected", [
    ({"class_names": ["a", "b"]}, "2 class names but the model has 3 classes"),
    ({"class_names": ["a", "b", "c", "d"]}, "4 class names but the model has 3 classes"),
    ({"class_names": "abc"}, "class_names must be a list of strings"),
    ({"class_names": ["a", 2, "c"]}, "class_names must be a list of strings"),
    ({"class_names": ["a", "a", "c"]}, "repeats the class name 'a'"),
    ({"dataset": "digits"}, "dataset must be a dict"),
    ({"dataset": ["digits"]}, "dataset must be a dict"),
    ({"dataset.kind": 3}, "dataset 'kind' must be"),
    ({"dataset.path": 5}, "dataset 'path' must be"),
    ({"dataset.seed": "0"}, "dataset 'seed' must be"),
    ({"dataset.seed": True}, "dataset 'seed' must be"),
    ({"dataset.val_fraction": "0.1"}, "dataset 'val_fraction' must be"),
    ({"dataset.test_fraction": 1.5}, "dataset 'test_fraction' must be"),
    ({"dataset.num_images": -1}, "dataset 'num_images' must be"),
    ({"dataset": {"kind": "digits"}}, "dataset lacks"),
    ({"model.num_classes": "3"}, "num_classes must be an integer"),
    ({"model.num_classes": 3.0}, "num_classes must be an integer"),
    ({"model.input_size": True}, "input_size must be an integer"),
    ({"model.name": 20}, "name must be a string"),
    ({"model.shortcut": "C"}, "shortcut"),
    ({"model.mean": ["0.5"]}, "mean must be a list of numbers"),
    ({"model.mean": 0.5}, "mean must be a list of numbers"),
    ({"model.mean": [float("nan")]}, "finite"),
    ({"model.std": [0.0]}, "std must be positive"),
    ({"model.std": [float("inf")]}, "finite"),
    ({"model": "resnet20"}, "model description must be a dict"),
    ({"model.num_classes": 5}, "fc.weight"),
    ({"model.in_chans": 3, "model.mean": [0.5] * 3, "model.std": [0.5] * 3}, "conv1.weight"),
    ({"epoch": "1"}, "epoch must be"),
    ({"metrics": [1]}, "metrics must be a dict"),
    ({"train_config": "sgd"}, "train_config must be a dict"),
])
def test_checkpoint_metadata_is_checked_on_load(tmp_path, changes, expected):
    with pytest.raises(UserError, match="bad.pt") as info:
        load_checkpoint(edited_checkpoint(tmp_path, "bad.pt", **changes))
    assert expected in str(info.value)


@pytest.mark.parametrize("changes", [{"class_names": ["a", "b"]}, {"dataset": "digits"},
                                     {"dataset.seed": "zero"}])
def test_export_refuses_a_checkpoint_with_bad_metadata(tmp_path, monkeypatch, changes):
    monkeypatch.chdir(tmp_path)
    bad = edited_checkpoint(tmp_path, "bad.pt", **changes)
    line = error_line(invoke(export_cli, "--checkpoint", bad, "--fmt", "onnx"), 1)
    assert "bad.pt" in line
    assert not (tmp_path / "artifacts").exists()
