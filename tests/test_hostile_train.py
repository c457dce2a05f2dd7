"""Hostile inputs to training: crafted files, bad numbers, kills, full disks.

Every case ends in one ``Error: ...`` line and exit status 2 (a bad option) or 1 (anything
else), never a traceback, and never destroys what the user already has. The data is tiny (a
few generated images per class) and the runs are one or two steps, so the suite stays fast.
"""

import os
import signal
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from export.cli import main as export_cli
from export.core.checkpoint import load_checkpoint, save_checkpoint
from export.core.errors import UserError
from export.core.models import ModelSpec
from export.train.cli import main as train_cli


# --- helpers ----------------------------------------------------------------------------------


def write_pngs(root, classes=("a", "b"), per_class=6, size=12, seed=0):
    """A class-per-folder tree of small random 8-bit grayscale PNGs; returns the root."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(
                root / name / f"{i}.png")
    return root


def invoke(cli, *args):
    """Run a command in-process; an exception that escapes it fails the test."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result, code):
    """The single ``Error: ...`` line a failed command printed, after checking its exit status."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


TINY = ("--epochs", "1", "--max-steps", "2", "--input-size", "16", "--batch-size", "4",
        "--threads", "1")


@pytest.fixture
def images(tmp_path):
    return write_pngs(tmp_path / "imgs")


@pytest.fixture
def no_hang():
    """Turn a blocking open() (a FIFO without a writer) into a test failure after 20 s."""
    def expire(_signum, _frame):
        raise TimeoutError("blocked: something opened a FIFO")

    before = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, before)


# --- weights files that are not weights files (item 8) ----------------------------------------


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
