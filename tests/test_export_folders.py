"""resnet-export's output folders (export.core.folders, export.pipeline): only a folder that is
provably our artifact is replaced, the old artifact or the new one is under the name whatever
happens, and no artifact is written inside another."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import export.core.folders as folders_mod
import export.pipeline as pipeline
from export.core.artifact import owned_artifact, read_manifest, verify_files
from export.core.folders import recover_interrupted
from export.runtime import load_artifact

from artifact_fixtures import (
    REPO,
    SMALL,
    dead_pid,
    edit_manifest,
    run,
    snapshot,
    trained_checkpoint,
    tree,
)
from cli_helpers import artifact_listing, error_line, no_traceback
from damage import scaled_weights

pytestmark = pytest.mark.usefixtures("one_dynamo_export_per_weights")


# ---------------------------------------------------------------------------------------------
# The output folder: only a folder that is provably our artifact is ever replaced
# ---------------------------------------------------------------------------------------------


def test_a_folder_with_someone_elses_manifest_json_is_refused_and_untouched(cwd):
    app = cwd / "app"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "pwa"}')
    (app / "src" / "main.js").write_text("code")
    before = snapshot(app)
    line = error_line(run(*SMALL, "--out", "app"))
    assert "--out app exists and is not an artifact folder" in line
    assert "not a resnet-deploy artifact manifest" in line
    assert snapshot(app) == before
    assert sorted(p.name for p in cwd.iterdir()) == ["app"]  # no staging folder left either


@pytest.mark.parametrize("extra", ["file", "folder", "link"])
def test_our_artifact_with_anything_else_in_it_is_refused_and_untouched(cwd, art, extra):
    out = cwd / "out"
    shutil.copytree(art, out)
    if extra == "file":
        (out / "notes.txt").write_text("mine")
    elif extra == "folder":
        (out / "src").mkdir()
        (out / "src" / "main.js").write_text("code")
    else:
        (out / "elsewhere").symlink_to(cwd)
    before = snapshot(out)
    line = error_line(run(*SMALL, "--out", "out"))
    assert "exists and is not an artifact folder" in line
    assert "is not one of its manifest's files" in line
    assert snapshot(out) == before


def test_a_listed_file_that_is_a_link_makes_the_folder_not_ours(cwd, art):
    out = cwd / "out"
    shutil.copytree(art, out)
    (cwd / "model.onnx").write_bytes((out / "resnet20.onnx").read_bytes())
    (out / "resnet20.onnx").unlink()
    (out / "resnet20.onnx").symlink_to(cwd / "model.onnx")
    line = error_line(run(*SMALL, "--out", "out"))
    assert "resnet20.onnx is not a plain file" in line
    assert (cwd / "model.onnx").exists() and (out / "resnet20.onnx").is_symlink()


def test_an_artifact_of_a_newer_schema_is_not_replaced(cwd, art):
    out = cwd / "out"
    shutil.copytree(art, out)
    edit_manifest(out, lambda m: m.update(schema_version=2))
    before = snapshot(out)
    line = error_line(run(*SMALL, "--out", "out"))
    assert "schema_version 2" in line and snapshot(out) == before


def test_reexporting_the_same_weights_replaces_freely_and_says_so(cwd, art):
    out = cwd / "out"
    shutil.copytree(art, out)
    created = read_manifest(out)["created"]
    result = run(*SMALL, "--out", "out")
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert f"replacing out (previous onnx artifact from {created})" in result.stderr
    assert tree(out) == artifact_listing(out, "resnet20.onnx")
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]


def test_an_empty_folder_is_used_without_a_word(cwd):
    (cwd / "out").mkdir()
    result = run(*SMALL, "--out", "out")
    assert result.exit_code == 0, result.output
    assert "replacing" not in result.output
    assert tree(cwd / "out") == artifact_listing(cwd / "out", "resnet20.onnx")


def test_fresh_weights_never_silently_replace_a_trained_artifact(cwd):
    """The case met in practice: a trained artifact, then an untrained export to its folder
    (default names now differ: artifacts/resnet20-best-onnx and artifacts/resnet20-onnx)."""
    trained_checkpoint(cwd / "best.pt")
    first = run("--checkpoint", "best.pt", "--input-size", "16", "--batch-range", "1:1:2")
    assert first.exit_code == 0, first.output
    folder = cwd / "artifacts" / "resnet20-best-onnx"
    out = ("--out", "artifacts/resnet20-best-onnx")
    before = snapshot(folder)
    line = error_line(run(*SMALL, *out))
    assert "holds a resnet20 onnx artifact exported from the checkpoint" in line
    assert "best.pt" in line
    assert "this export is from UNTRAINED seeded weights (seed 0, resnet20)" in line
    assert "pass --overwrite" in line
    assert snapshot(folder) == before
    again = run("--checkpoint", "best.pt", "--input-size", "16", "--batch-range", "1:1:1")
    assert again.exit_code == 0, again.output  # the same weights: replaced freely
    assert "replacing artifacts/resnet20-best-onnx" in again.stderr
    forced = run(*SMALL, *out, "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert read_manifest(folder)["source"]["kind"] == "seed"


def test_other_weights_need_overwrite(cwd, art):
    out = cwd / "out"
    shutil.copytree(art, out)
    line = error_line(run(*SMALL, "--seed", "7", "--out", "out"))
    assert "seed 0" in line and "seed 7" in line and "--overwrite" in line
    trained_checkpoint(cwd / "a.pt", seed=1)
    line = error_line(run("--checkpoint", "a.pt", "--input-size", "16", "--batch-range", "1:1:2",
                          "--out", "out"))
    assert "this export is from the checkpoint" in line
    result = run(*SMALL, "--seed", "7", "--out", "out", "--overwrite")
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["source"]["seed"] == 7


def test_overwrite_never_replaces_a_folder_that_is_not_an_artifact(cwd):
    (cwd / "mine").mkdir()
    (cwd / "mine" / "thesis.tex").write_text("years of work")
    line = error_line(run(*SMALL, "--out", "mine", "--overwrite"))
    assert "is not an artifact folder" in line
    assert (cwd / "mine" / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("out", [".", "..", "/"])
def test_out_must_name_a_folder(cwd, out):
    line = error_line(run(*SMALL, "--out", out))
    assert "must name a folder (not . or ..)" in line


def test_out_that_is_a_link_is_refused(cwd, art):
    (cwd / "real").mkdir()
    (cwd / "link").symlink_to(cwd / "real")
    line = error_line(run(*SMALL, "--out", "link"))
    assert "--out link is a symbolic link" in line
    assert (cwd / "link").is_symlink() and list((cwd / "real").iterdir()) == []


def test_keep_failed_never_deletes_a_failed_folder_that_is_not_ours(cwd, monkeypatch):
    failed = cwd / "out.FAILED"
    failed.mkdir()
    (failed / "notes.txt").write_text("my notes on why it failed")
    monkeypatch.setattr(pipeline, "save_onnx", scaled_weights(pipeline.save_onnx))
    line = error_line(run(*SMALL, "--out", "out", "--keep-failed"))
    assert "--keep-failed would replace out.FAILED" in line and "not an artifact folder" in line
    assert tree(failed) == ["notes.txt"]
    assert sorted(p.name for p in cwd.iterdir()) == ["out.FAILED"]  # refused before exporting


def test_keep_failed_replaces_its_own_previous_failure(cwd, monkeypatch):
    monkeypatch.setattr(pipeline, "save_onnx", scaled_weights(pipeline.save_onnx))
    assert run(*SMALL, "--out", "out", "--keep-failed").exit_code == 1
    created = read_manifest(cwd / "out.FAILED")["created"]
    second = run(*SMALL, "--out", "out", "--keep-failed")
    assert "kept for inspection in out.FAILED" in error_line(second)
    assert f"replacing out.FAILED (previous onnx artifact from {created})" in second.stderr
    assert read_manifest(cwd / "out.FAILED")["parity"]["passed"] is False
    assert sorted(p.name for p in cwd.iterdir()) == ["out.FAILED"]


def test_an_out_folder_that_cannot_be_made_half_way_leaves_nothing(cwd, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "c":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = error_line(run(*SMALL, "--out", "a/b/c/out"))
    assert "cannot write a/b/c/out: Permission denied" in line
    assert list(cwd.iterdir()) == []  # a/ and a/b/ are taken back


def test_a_staging_folder_that_cannot_be_made_leaves_nothing(cwd, monkeypatch):
    import tempfile

    def mkdtemp(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    line = error_line(run(*SMALL, "--out", "a/out"))
    assert "cannot write a/out: No space left on device" in line
    assert list(cwd.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Replacing an artifact: the old one or the new one under the name, whatever happens
# ---------------------------------------------------------------------------------------------


def test_replacement_swaps_the_folders_in_one_step(cwd, art, monkeypatch):
    """Where the system can (Linux renameat2 RENAME_EXCHANGE), no moment without the name."""
    out = cwd / "out"
    shutil.copytree(art, out)
    swaps, renames = [], []
    real_exchange, real_replace = folders_mod.exchange_paths, os.replace

    def exchange(a, b):
        ok = real_exchange(a, b)
        swaps.append((Path(a).name, Path(b).name, ok))
        return ok

    def replace(a, b):
        renames.append((Path(a).name, Path(b).name))
        return real_replace(a, b)

    monkeypatch.setattr(folders_mod, "exchange_paths", exchange)
    monkeypatch.setattr(os, "replace", replace)
    result = run(*SMALL, "--out", "out")
    assert result.exit_code == 0, result.output
    (swap,) = swaps
    if not swap[2]:
        pytest.skip("this file system cannot swap two folders in one step")
    assert swap[0].startswith(".out.") and swap[0].endswith(".partial") and swap[1] == "out"
    assert not any(b == "out" for _, b in renames)  # out itself was never renamed away
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]


def test_a_failure_between_the_two_renames_puts_the_old_artifact_back(cwd, art, monkeypatch):
    """Without the one-step swap: out -> .out.replaced-PID, staging -> out; the second fails."""
    out = cwd / "out"
    shutil.copytree(art, out)
    before = snapshot(out)
    monkeypatch.setattr(folders_mod, "exchange_paths", lambda a, b: False)
    real_replace = os.replace

    def replace(a, b):
        if Path(a).name.endswith(".partial") and Path(b).name == "out":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    line = error_line(run(*SMALL, "--out", "out"))
    assert "cannot write out: No space left on device" in line
    assert snapshot(out) == before
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]


KILL_AT_SECOND_RENAME = """
import os, sys
from pathlib import Path
import export.core.folders as artifact
artifact.exchange_paths = lambda a, b: False  # the two-rename path
real = os.replace
def replace(a, b):
    if Path(a).name.endswith(".partial") and Path(b).name == "out":
        os._exit(9)  # killed between the two renames
    return real(a, b)
os.replace = replace
from export.cli import main
sys.argv = ["resnet-export", "--depth", "20", "--input-size", "16", "--batch-range", "1:1:2",
            "--out", "out"]
main()
"""

KILL_AFTER_SWAP = """
import os, sys
import export.core.folders as artifact
real = artifact.exchange_paths
def exchange(a, b):
    ok = real(a, b)
    os._exit(9 if ok else 3)  # killed right after the swap, before the old one is deleted
artifact.exchange_paths = exchange
from export.cli import main
sys.argv = ["resnet-export", "--depth", "20", "--input-size", "16", "--batch-range", "1:1:2",
            "--out", "out"]
main()
"""


def _run_script(code, cwd, timeout=180):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_kill_between_the_two_renames_is_put_right_by_the_next_load(cwd, art):
    out = cwd / "out"
    shutil.copytree(art, out)
    before = snapshot(out)
    proc = _run_script(KILL_AT_SECOND_RENAME, cwd)
    assert proc.returncode == 9, proc.stderr
    leftovers = sorted(p.name for p in cwd.iterdir())
    assert not out.exists() and any(".replaced-" in n for n in leftovers), leftovers
    runner = load_artifact(out)  # the next load restores the previous artifact first
    assert runner is not None and snapshot(out) == before
    result = run(*SMALL, "--out", "out")  # and the next export cleans what is left
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]


def test_a_kill_right_after_the_swap_leaves_the_new_artifact_and_a_leftover_that_goes(cwd, art):
    out = cwd / "out"
    shutil.copytree(art, out)
    proc = _run_script(KILL_AFTER_SWAP, cwd)
    if proc.returncode == 3:
        pytest.skip("this file system cannot swap two folders in one step")
    assert proc.returncode == 9, proc.stderr
    verify_files(out, owned_artifact(out))  # a complete artifact under the name
    assert any(p.name.endswith(".partial") for p in cwd.iterdir())
    result = run(*SMALL, "--out", "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]


def test_leftovers_of_dead_exports_are_cleaned_and_live_ones_left_alone(cwd, art):
    dead, alive = dead_pid(), os.getpid()
    shutil.copytree(art, cwd / f".out.{dead}-abc123.partial")
    shutil.copytree(art, cwd / f".out.{alive}-def456.partial")
    shutil.copytree(art, cwd / f".out.replaced-{dead}")  # out is missing: restored
    notes = recover_interrupted(cwd / "out")
    assert any(n.startswith(f"restored {cwd / 'out'}") for n in notes), notes
    assert sorted(p.name for p in cwd.iterdir()) == [f".out.{alive}-def456.partial", "out"]
    verify_files(cwd / "out", read_manifest(cwd / "out"))
    shutil.copytree(art, cwd / f".out.replaced-{dead}")  # out is there: deleted
    recover_interrupted(cwd / "out")
    assert sorted(p.name for p in cwd.iterdir()) == [f".out.{alive}-def456.partial", "out"]


def test_a_leftover_that_is_not_an_artifact_is_never_deleted(cwd, art):
    shutil.copytree(art, cwd / "out")
    odd = cwd / f".out.replaced-{dead_pid()}"
    odd.mkdir()
    (odd / "keep.txt").write_text("not ours")
    recover_interrupted(cwd / "out")
    assert (odd / "keep.txt").exists()


def test_verify_recovers_an_interrupted_replacement_first(cwd, art):
    os.rename(art, cwd / f".art.replaced-{dead_pid()}")
    result = run("verify", "art")
    assert result.exit_code == 0, result.output
    assert "note: restored art" in result.output and (cwd / "art" / "manifest.json").exists()


def test_bench_never_measures_staging_folders_or_leftovers(tmp_path, art):
    from bench.matrix import find_manifests

    shutil.copytree(art, tmp_path / "resnet20-onnx")
    shutil.copytree(art, tmp_path / f".resnet20-onnx.{dead_pid()}-abc.partial")
    shutil.copytree(art, tmp_path / ".resnet20-onnx.replaced-1")
    (tmp_path / ".hidden" / "x").mkdir(parents=True)
    shutil.copy(art / "manifest.json", tmp_path / ".hidden" / "x" / "manifest.json")
    assert find_manifests(tmp_path) == [tmp_path / "resnet20-onnx" / "manifest.json"]


# ---------------------------------------------------------------------------------------------
# No artifact inside another
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inner", ["sub", "sub/deeper"])
def test_out_inside_an_artifact_is_refused(cwd, art, inner):
    before = snapshot(art)
    line = error_line(run(*SMALL, "--out", art / inner))
    assert f"is inside the artifact folder {art}" in line
    assert snapshot(art) == before


def test_out_inside_an_artifact_through_a_link_is_refused(cwd, art):
    (cwd / "alias").symlink_to(art)
    line = error_line(run(*SMALL, "--out", "alias/sub"))
    assert "is inside the artifact folder" in line
    assert tree(art) == artifact_listing(art, "resnet20.onnx")
