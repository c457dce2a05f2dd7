"""Training's run folder (export.train.rundir, export.train.loop): a folder that cannot be written,
a run that fails or diverges, a kill while finishing, damaged resume state, two trainings at
once and a really full disk all leave a usable folder and one line."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from export.core.checkpoint import load_checkpoint
from export.train.cli import main as train_cli

from cli_helpers import only_error_line as error_line
from train_fixtures import TINY, edited_checkpoint, epoch_lines, invoke

# --- the run folder cannot be written: a file in the way, read-only, full ------------------------


def test_out_under_a_file_or_on_a_fifo_is_refused_before_anything(tmp_path, monkeypatch, images,
                                                                  no_hang):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("in the way")
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "file" / "run",
                             *TINY), 1)
    assert "file is a file, not a folder" in line
    os.mkfifo(tmp_path / "pipe")
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "pipe", *TINY), 1)
    assert "exists and is not a folder" in line
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / ("r" * 300),
                             *TINY), 1)
    assert "longer than the 255 bytes" in line
    assert (tmp_path / "file").read_text() == "in the way"


def test_a_read_only_run_folder_fails_before_training(tmp_path, monkeypatch, images):
    import errno
    import tempfile

    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(tmp_path / "run") in str(dir):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.chdir(tmp_path)
    result = invoke(train_cli, "--data", images, "--out", tmp_path / "run", *TINY)
    line = error_line(result, 1)
    assert "run: Read-only file system; nothing was trained" in line
    assert not epoch_lines(result.output)


def test_a_read_only_parent_is_refused_before_the_data_is_read(tmp_path, monkeypatch, images):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(tmp_path)
                        else real(p, mode, **k))
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "run", *TINY), 1)
    assert f"{tmp_path} is not writable" in line


def test_a_full_disk_mid_run_keeps_the_last_good_checkpoints(tmp_path, monkeypatch, images):
    import errno

    real, calls = torch.save, []

    def fill_up(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 3:  # epoch 1 wrote best.pt and last.pt; the disk is full in epoch 2
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_up)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = invoke(train_cli, "--data", images, "--out", out, "--epochs", "2", "--input-size",
                    "16", "--batch-size", "4", "--threads", "1")
    line = error_line(result, 1)
    assert "No space left on device" in line
    assert "last.pt (epoch 1)" in line and "best.pt" in line
    monkeypatch.setattr(torch, "save", real)
    assert load_checkpoint(out / "best.pt").meta["epoch"] == 1
    assert load_checkpoint(out / "last.pt").meta["epoch"] == 1
    assert not list(out.glob(".*partial"))


@pytest.mark.parametrize("target", ["write_json", "plot_curves"])
def test_a_full_disk_while_finishing_is_one_line(tmp_path, monkeypatch, images, target):
    import errno

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(f"export.train.loop.{target}", full)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "run", *TINY), 1)
    assert "No space left on device" in line and "redoes only the test" in line


# --- a run that fails leaves its folder usable; divergence stops the run -------------------------


def test_a_diverged_run_stops_and_its_folder_can_be_used_again(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    result = invoke(train_cli, "--data", images, "--out", out, "--lr", "1e30", *TINY)
    line = error_line(result, 1)
    assert "training diverged: the loss is not finite" in line and "--lr" in line
    assert not epoch_lines(result.output)  # nothing was recorded as an epoch
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()

    line = error_line(invoke(train_cli, "--resume", out), 1)
    assert "nothing to resume" in line and f"--out {out}" in line  # offers what works
    again = invoke(train_cli, "--data", images, "--out", out, *TINY)  # no --overwrite needed
    assert again.exit_code == 0, again.output
    assert load_checkpoint(out / "last.pt").meta["epoch"] == 1


def test_a_folder_with_best_but_no_last_says_what_works(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    assert invoke(train_cli, "--data", images, "--out", out, *TINY).exit_code == 0
    (out / "last.pt").unlink()  # killed between the two saves of the first epoch
    line = error_line(invoke(train_cli, "--resume", out), 1)
    assert "no last.pt" in line and "--overwrite" in line
    line = error_line(invoke(train_cli, "--data", images, "--out", out, *TINY), 1)
    assert "already holds a training run" in line and "--overwrite" in line


def test_one_non_finite_loss_stops_the_epoch_at_that_step():
    from export.train.steps import train_one_epoch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    batches = [(torch.randn(2, 1, 2, 2), torch.tensor([0, 1])) for _ in range(6)]
    batches[2] = (torch.full((2, 1, 2, 2), float("nan")), torch.tensor([0, 1]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    stats = train_one_epoch(model, batches, optimizer, scheduler, torch.nn.CrossEntropyLoss(),
                            torch.device("cpu"), torch.amp.GradScaler("cuda", enabled=False))
    assert stats.steps == 3 and not np.isfinite(stats.loss)


def test_a_diverged_validation_saves_nothing(tmp_path, monkeypatch, images):
    """Weights that the last step broke give a finite training loss but a NaN validation."""
    from export.train import loop

    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate",
                        lambda *a, **k: dataclasses.replace(real(*a, **k), loss=float("nan")))
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "r", *TINY), 1)
    assert "validation loss is not finite" in line
    assert not (tmp_path / "r" / "best.pt").exists()


def test_overwrite_removes_the_replaced_runs_results_at_once(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    assert invoke(train_cli, "--data", images, "--out", out, *TINY).exit_code == 0
    assert (out / "summary.json").exists() and (out / "curves.png").exists()
    result = invoke(train_cli, "--data", images, "--out", out, "--overwrite", "--lr", "1e30",
                    *TINY)
    assert "diverged" in error_line(result, 1)
    # The old summary would describe a run that is no longer there.
    assert not (out / "summary.json").exists() and not (out / "curves.png").exists()


def test_a_run_diverging_later_keeps_its_last_good_epoch(tmp_path, monkeypatch, images):
    from export.train import loop

    real, calls = loop.evaluate, []

    def nan_in_epoch_2(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        return result if len(calls) == 1 else dataclasses.replace(result, loss=float("nan"))

    monkeypatch.setattr(loop, "evaluate", nan_in_epoch_2)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    line = error_line(invoke(train_cli, "--data", images, "--out", out, "--epochs", "2",
                             "--input-size", "16", "--batch-size", "4", "--threads", "1"), 1)
    assert "after epoch 2" in line and "last.pt still holds epoch 1" in line
    assert "start again with --overwrite" in line
    assert load_checkpoint(out / "last.pt").meta["epoch"] == 1


# --- a kill while finishing: --resume redoes only the finishing steps ----------------------------


@pytest.mark.parametrize("kill", ["interrupt", "full-disk"])
def test_resume_redoes_only_the_finishing_steps(tmp_path, monkeypatch, images, kill):
    import errno

    from export.core.fileio import sha256_file
    from export.train import loop

    def killed(*_args, **_kwargs):
        if kill == "interrupt":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "write_json", killed)
        result = invoke(train_cli, "--data", images, "--out", out, *TINY)
    assert result.exit_code == (130 if kill == "interrupt" else 1), result.output
    assert not (out / "summary.json").exists()
    last = sha256_file(out / "last.pt")

    again = invoke(train_cli, "--resume", out)
    assert again.exit_code == 0, again.output
    assert "finishing" in again.output and not epoch_lines(again.output)
    assert sha256_file(out / "last.pt") == last  # no step was trained again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["steps"] == 2
    assert (out / "curves.png").exists()
    assert "test_top1" in load_checkpoint(out / "best.pt").meta["metrics"]

    line = error_line(invoke(train_cli, "--resume", out), 1)
    assert "already finished 1 of 1 epochs" in line


def test_a_summary_of_an_earlier_segment_does_not_count_as_finished(tmp_path, monkeypatch,
                                                                    images):
    from export.train import loop

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    assert invoke(train_cli, "--data", images, "--out", out, *TINY).exit_code == 0
    with monkeypatch.context() as patch:  # the second segment is killed while finishing
        patch.setattr(loop, "write_json", lambda *_a, **_k: (_ for _ in ()).throw(
            KeyboardInterrupt))
        assert invoke(train_cli, "--resume", out, "--epochs", "2").exit_code == 130
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1  # the old one
    again = invoke(train_cli, "--resume", out)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


# --- siblings: the rest of what a run reads from files and the environment -----------------------


@pytest.mark.parametrize("damage", [
    {"optimizer": {"junk": 1}},
    {"scheduler": {"last_epoch": "three"}},
    {"scheduler": {"base_lrs": [float("nan")]}},
    {"step": "two"},
    {"history": 5},
    {"rng_state": torch.zeros(3)},
])
def test_a_damaged_resume_state_is_one_line(tmp_path, monkeypatch, images, damage):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    assert invoke(train_cli, "--data", images, "--out", out, "--epochs", "2", "--max-steps",
                  "1", "--input-size", "16", "--batch-size", "4", "--threads", "1"
                  ).exit_code == 0
    payload = torch.load(out / "last.pt", weights_only=True)
    for key, value in damage.items():
        payload[key] = ({**payload[key], **value} if isinstance(value, dict)
                        and key == "scheduler" else value)
    torch.save(payload, out / "last.pt")
    rng = torch.get_rng_state()
    line = error_line(invoke(train_cli, "--resume", out), 1)
    torch.set_rng_state(rng)
    assert "last.pt: its resume state is damaged" in line, line


def test_a_saved_configuration_naming_an_unknown_model_is_the_files_fault(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    edited_checkpoint(run, "last.pt", optimizer={}, train_config={"model": "resnet7"})
    line = error_line(invoke(train_cli, "--resume", run), 1)
    assert "bad training configuration" in line and "resnet7" in line


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "two"}, {"RANK": "3", "WORLD_SIZE": "2"},
                                 {"LOCAL_RANK": "-1"}])
def test_a_broken_torchrun_environment_is_one_line(tmp_path, monkeypatch, images, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, "--data", images, *TINY), 1)
    assert "torchrun" in line


def test_momentum_is_checked_too():
    from export.core.errors import BadOption
    from export.train import TrainConfig

    with pytest.raises(BadOption, match="momentum"):
        TrainConfig(momentum=float("nan")).resolved()


def test_files_in_a_folder_that_holds_no_run_are_left_alone(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "curves.png").write_bytes(b"my own plot")
    (out / "notes.txt").write_text("keep me")
    assert invoke(train_cli, "--data", images, "--out", out, "--lr", "1e30", *TINY
                  ).exit_code == 1  # a failed run...
    assert (out / "curves.png").read_bytes() == b"my own plot"  # ...deletes nothing
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text('{"epoch": 1}\n')  # a log with an epoch: a run
    line = error_line(invoke(train_cli, "--data", images, "--out", other, *TINY), 1)
    assert "already holds a training run" in line
    assert (out / "notes.txt").read_text() == "keep me"


# --- two trainings at once: the run folder is claimed when the run starts ------------------------


def test_a_run_started_during_anothers_first_epoch_gets_its_own_folder(tmp_path, monkeypatch,
                                                                       images):
    """The second run starts while the first is inside its first epoch (nothing saved yet)."""
    from export.train import loop

    real, second = loop.train_one_epoch, []

    def epoch_with_a_second_run(*args, **kwargs):
        if not second:
            second.append(None)  # the second run's own epochs go straight on
            second[0] = invoke(train_cli, "--data", images, *TINY, "--seed", "1")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", epoch_with_a_second_run)
    monkeypatch.chdir(tmp_path)
    first = invoke(train_cli, "--data", images, *TINY)
    assert first.exit_code == 0 and second[0].exit_code == 0, first.output + second[0].output
    runs = tmp_path / "artifacts" / "train"
    assert sorted(p.name for p in runs.iterdir()) == ["resnet8-imgs", "resnet8-imgs-2"]
    for folder, seed in (("resnet8-imgs", 0), ("resnet8-imgs-2", 1)):
        summary = json.loads((runs / folder / "summary.json").read_text())
        assert summary["train_config"]["seed"] == seed
        assert load_checkpoint(runs / folder / "best.pt").meta["train_config"]["seed"] == seed
        log = (runs / folder / "metrics.jsonl").read_text().splitlines()
        assert len(log) == 1  # one epoch each, not interleaved
        assert not list((runs / folder).glob(".*lock"))  # the claim is let go at the end


def test_an_out_folder_held_by_a_running_training_is_refused(tmp_path, monkeypatch, images):
    from export.train.rundir import RunClaim

    monkeypatch.chdir(tmp_path)
    held = RunClaim.take(tmp_path / "run")  # as a run in its first epoch holds it
    try:
        for extra in ((), ("--overwrite",)):
            line = error_line(invoke(train_cli, "--data", images, "--out", tmp_path / "run",
                                     *TINY, *extra), 1)
            assert "in use by another training run" in line and f"process {os.getpid()}" in line
    finally:
        held.release()
    assert not (tmp_path / "run").exists()  # the claim made it, and took it back empty
    assert invoke(train_cli, "--data", images, "--out", tmp_path / "run", *TINY).exit_code == 0


def test_a_run_being_resumed_cannot_be_resumed_twice(tmp_path, monkeypatch, images):
    from export.train.rundir import RunClaim

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert invoke(train_cli, "--data", images, "--out", out, "--epochs", "2", "--max-steps",
                  "1", "--input-size", "16", "--batch-size", "4", "--threads", "1"
                  ).exit_code == 0
    held = RunClaim.take(out)
    try:
        line = error_line(invoke(train_cli, "--resume", out), 1)
        assert "being trained by another run" in line
    finally:
        held.release()
    assert (out / "last.pt").exists() and not (out / ".resnet-train.lock").exists()


def test_a_claim_left_by_a_killed_run_does_not_block(tmp_path, monkeypatch, images):
    """kill -9 leaves the lock file; the kernel has let go of its lock, so the folder is free."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".resnet-train.lock").write_text("99999999\n")
    assert invoke(train_cli, "--data", images, "--out", out, *TINY).exit_code == 0


# --- a really full disk: the checkpoint writer's own error ---------------------------------------


_FSIZE_RUN = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from export.train.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize("limit, kept", [
    (300_000, "no epoch was saved"),  # resnet20 (asked below): best.pt (1.1 MB) cannot be written
    (1_600_000, "only best.pt (epoch 1) was saved"),  # best.pt fits, last.pt (2.2 MB) not
])
def test_a_file_the_disk_cannot_hold_is_one_line_naming_what_is_intact(tmp_path, images, limit,
                                                                      kept):
    """A real failed write inside torch.save (a file size limit stands in for a full disk:
    torch reports both as a RuntimeError about stream positions)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", _FSIZE_RUN, str(limit), "--data", str(images), "--out", str(out),
         "--model", "resnet20", *TINY], capture_output=True, text=True, cwd=tmp_path, timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             os.environ.get("PYTHONPATH", "")])})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("Error: cannot write") and "File too large" in lines[0]
    assert kept in lines[0]
    assert not list(out.glob(".*partial"))
    if "best.pt" in kept:
        assert load_checkpoint(out / "best.pt").meta["epoch"] == 1
