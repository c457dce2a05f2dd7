"""resnet-bench's output folders (bench.outdir): checked before the first measurement, never
overwriting what is not its own (--overwrite only for its own runs), default names unique."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import bench.cli as bench_cli
from bench import report
from bench.cli import main

from bench_fixtures import FAST, NULL, invoke, never_measure
from cli_helpers import error_line

# ---------------------------------------------------------------------------------------------
# The output folder is checked before anything is measured
# ---------------------------------------------------------------------------------------------


def test_an_out_folder_that_cannot_be_created_is_one_line_before_measuring(tmp_path,
                                                                           monkeypatch):
    never_measure(monkeypatch)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "out":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = error_line(invoke([*NULL, "--out", tmp_path / "made" / "out"]))
    assert line == (f"Error: cannot write to --out {tmp_path / 'made' / 'out'}: Permission "
                    "denied; nothing was measured")
    assert list(tmp_path.iterdir()) == []  # the parent it made is taken back


@pytest.mark.parametrize("code,text", [(errno.EROFS, "Read-only file system"),
                                       (errno.ENOSPC, "No space left on device"),
                                       (errno.EACCES, "Permission denied")])
def test_a_read_only_full_or_unwritable_out_is_one_line_before_measuring(tmp_path, monkeypatch,
                                                                         code, text):
    never_measure(monkeypatch)
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if str(kwargs.get("dir", "")) == str(tmp_path / "out"):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    line = error_line(invoke([*NULL, "--out", tmp_path / "out"]))
    assert f"cannot write to --out {tmp_path / 'out'}: {text}" in line
    assert not (tmp_path / "out").exists()


def test_an_existing_empty_out_folder_is_probed_without_leaving_a_trace(tmp_path):
    result = invoke([*NULL, "--batch-sizes", "1", "--out", tmp_path])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv", "bench.json", "bench.md",
                                                          "bench.png"]


def test_a_disk_that_fills_up_during_the_run_keeps_the_results(tmp_path, monkeypatch):
    def full(doc, out_dir):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "write_all", full)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    result = invoke([*NULL, "--batch-sizes", "1,2", "--out", tmp_path / "out"])
    line = error_line(result)
    assert f"cannot write the report to {tmp_path / 'out'}: No space left on device" in line
    assert "the 2 result(s) are printed above and saved in" in line
    # the tables reached the terminal: the summary's one line and the two rows
    assert result.stdout.count("| null") == 3
    (saved,) = (tmp_path / "tmp").glob("resnet-bench-*.json")
    assert str(saved) in line
    doc = json.loads(saved.read_text())
    assert [r["batch_size"] for r in doc["results"]] == [1, 2]


def test_report_out_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert invoke([*NULL, "--batch-sizes", "1", "--out", run_dir]).exit_code == 0
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if str(kwargs.get("dir", "")) == str(tmp_path / "merged"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result = CliRunner().invoke(main, ["report", str(run_dir), "--out", str(tmp_path / "merged")])
    assert "cannot write to --out" in error_line(result)


def test_out_inside_an_artifact_is_refused(tmp_path, monkeypatch):
    never_measure(monkeypatch)
    folder = tmp_path / "resnet20-onnx"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"kind": "resnet-deploy-artifact"}))
    line = error_line(invoke([*NULL, "--out", folder / "bench"]))
    assert f"--out {folder / 'bench'} is inside the artifact folder {folder}" in line
    line = error_line(invoke([*NULL, "--out", folder]))
    assert f"--out {folder} is inside the artifact folder {folder}" in line
    line = error_line(invoke([*FAST, "--backends", "onnxruntime", "--cache-dir", folder,
                              "--out", tmp_path / "out"]))
    assert f"--cache-dir {folder} is inside the artifact folder" in line
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


# ---------------------------------------------------------------------------------------------
# Results are never overwritten: only a new, empty or own earlier folder, --overwrite to replace
# ---------------------------------------------------------------------------------------------


def _measured(folder):
    """A real earlier run in ``folder``; returns its bench.json bytes."""
    assert invoke([*NULL, "--batch-sizes", "1", "--out", folder]).exit_code == 0
    return (folder / "bench.json").read_bytes()


@pytest.mark.parametrize("name", ["bench.md", "bench.csv", "notes.txt"])
def test_run_out_holding_the_users_own_files_is_refused_and_untouched(tmp_path, monkeypatch,
                                                                      name):
    never_measure(monkeypatch)
    (tmp_path / name).write_text("mine")
    line = error_line(invoke([*NULL, "--out", tmp_path, "--overwrite"]))
    assert f"holds '{name}', which resnet-bench did not write" in line
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_text() == "mine"


def test_an_earlier_run_is_replaced_only_with_overwrite(tmp_path, monkeypatch):
    before = _measured(tmp_path / "run")
    with monkeypatch.context() as patch:
        patch.setattr(bench_cli, "sweep", lambda *a, **k: pytest.fail("measured anyway"))
        line = error_line(invoke([*NULL, "--out", tmp_path / "run"]))
    assert "holds an earlier resnet-bench run; give --overwrite" in line
    assert (tmp_path / "run" / "bench.json").read_bytes() == before
    assert invoke([*NULL, "--batch-sizes", "1", "--out", tmp_path / "run",
                   "--overwrite"]).exit_code == 0
    assert (tmp_path / "run" / "bench.json").read_bytes() != before


def test_a_folder_of_bench_files_without_our_bench_json_is_not_ours(tmp_path, monkeypatch):
    never_measure(monkeypatch)
    (tmp_path / "bench.json").write_text('{"my": "own"}')
    line = error_line(invoke([*NULL, "--out", tmp_path, "--overwrite"]))
    assert "no readable bench.json of ours" in line
    assert (tmp_path / "bench.json").read_text() == '{"my": "own"}'


def test_report_out_follows_the_same_rule(tmp_path):
    _measured(tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "bench.md").write_text("my notes")
    line = error_line(CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--out",
                                                str(mine)]))
    assert "holds 'bench.md', which resnet-bench did not write" in line
    assert (mine / "bench.md").read_text() == "my notes"
    before = (tmp_path / "run" / "bench.json").read_bytes()
    line = error_line(CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--out",
                                                str(tmp_path / "run")]))
    assert "holds an earlier resnet-bench run" in line
    assert (tmp_path / "run" / "bench.json").read_bytes() == before
    again = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--out",
                                      str(tmp_path / "run"), "--overwrite"])
    assert again.exit_code == 0, again.output


def test_default_names_are_unique_within_one_second(tmp_path, monkeypatch):
    from datetime import datetime

    import bench.outdir as outdir

    class Frozen(datetime):  # every run starts in the same second
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(outdir, "datetime", Frozen)
    monkeypatch.setattr(bench_cli, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert invoke([*NULL, "--batch-sizes", "1"]).exit_code == 0
    root = tmp_path / "artifacts" / "bench"
    first = sorted(root.iterdir())[0]
    for _ in range(2):
        assert CliRunner().invoke(main, ["report", str(first)]).exit_code == 0
    names = sorted(p.name for p in root.iterdir())
    assert len(names) == 4, names
    assert all(str(os.getpid()) in name for name in names)
    assert all((root / name / "bench.json").is_file() for name in names)
