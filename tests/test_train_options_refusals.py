"""resnet-train's numbers (export.train.config, export.train.cli): NaN, inf, huge and negative
options are bad options (exit 2 with the reason), also with --resume and in a saved
configuration."""


import pytest

from export.train.cli import main as train_cli

from cli_helpers import only_error_line as error_line
from train_fixtures import edited_checkpoint, invoke

# --- numbers out of range are bad options: exit status 2 -----------------------------------------


@pytest.mark.parametrize("args,expected", [
    (["--seed", "-1"], "--seed"),
    (["--seed", "99999999999999999999"], "32-bit seeds"),
    (["--seed", "4294967296"], "32-bit seeds"),
    (["--warmup-epochs", "inf"], "finite"),
    (["--warmup-epochs", "nan"], "finite"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--lr", "nan"], "finite"),
    (["--lr", "inf"], "finite"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--weight-decay", "nan"], "finite"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--label-smoothing", "nan"], "finite"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "99999999999999999999"], "--epochs"),
    (["--batch-size", "1"], "BatchNorm"),
    (["--batch-size", "100000000000"], "does not fit in memory"),
    (["--input-size", "100000"], "a side over 2048"),
    (["--input-size", "99999999999999999999"], "a side over 2048"),
    (["--input-size", "4"], "--input-size"),
    (["--val-fraction", "0"], "--val-fraction"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--test-fraction", "nan"], "finite"),
    (["--val-fraction", "0.5", "--test-fraction", "0.45"], "sum below 0.9"),
    (["--workers", "-1"], "--workers"),
    (["--threads", "-1"], "--threads"),
    (["--threads", "99999999999999999999"], "--threads"),
    (["--max-steps", "0"], "--max-steps"),
    (["--epochs", "ten"], "--epochs"),
    (["--depth", "99999999999999999999"], "unknown model"),
])
def test_bad_numbers_are_bad_options(tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke(train_cli, *args), 2)
    assert expected in line
    assert not (tmp_path / "artifacts").exists()


def test_a_bad_number_given_with_resume_is_a_bad_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--epochs" in error_line(invoke(train_cli, "--resume", "run", "--epochs", "0"), 2)
    assert "finite" not in error_line(invoke(train_cli, "--resume", "run", "--max-steps", "-3"),
                                      2)


@pytest.mark.parametrize("changes,expected", [
    ({"lr": float("nan")}, "--lr must be a finite number"),
    ({"seed": -1}, "--seed must be in the range"),
    ({"epochs": "3"}, "--epochs must be an integer"),
    ({"batch_size": True}, "--batch-size must be an integer"),
    ({"warmup_epochs": float("inf")}, "--warmup-epochs must be a finite number"),
    ({"input_size": 10**30}, "--input-size must be in the range"),
    ({"data": 3}, "--data must be a path"),
])
def test_train_config_checks_types_and_ranges(changes, expected):
    from export.core.errors import BadOption
    from export.train import TrainConfig

    with pytest.raises(BadOption, match=expected):
        TrainConfig(**changes).resolved()


def test_a_path_in_the_config_is_stored_as_text(tmp_path):
    from export.train import TrainConfig

    config = TrainConfig(data=tmp_path / "x.npz", init_weights=tmp_path / "w.pt").resolved()
    assert config.data == str(tmp_path / "x.npz") and isinstance(config.init_weights, str)


def test_a_bad_saved_configuration_is_the_files_fault(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    edited_checkpoint(run, "last.pt", optimizer={}, train_config={"lr": float("nan")})
    line = error_line(invoke(train_cli, "--resume", run), 1)
    assert "last.pt holds a bad training configuration: --lr must be a finite number" in line
