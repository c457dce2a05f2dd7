"""resnet-export, verify and the loaders against what users (and crashes) leave on disk.

Never destroy what the user has; after any crash the old artifact or the new one is under the
name; every bad input is one ``Error: ...`` line with the documented exit code, no traceback.

One class of defect per section (count = collected cases). Small models throughout (resnet20 at
16x16, batch 1:1:2); in-process exports reuse one dynamo export per set of weights.

| class | what it covers | count |
|---|---|---|
| 1. output folder | only a provably-ours artifact is replaced | 19 |
| 2. replacing | one-step swap, failures and kills between renames, leftovers | 8 |
| 3. links | listed files, the manifest, external data never lead out | 11 |
| 4. nesting | no artifact inside another (also through a link) | 3 |
| 8. malformed manifests | one line naming the key, in verify and the loaders | 64 |
| 10. bounds and memory | out-of-range options exit 2; memory checked first | 12 |
| 14. signals | SIGTERM and SIGHUP mid-export remove the staging folder | 2 |
| 15. manifest vs artifact | classes, size, I/O, mean/std, class names vs the ONNX file | 17 |
|   | and its metadata; the digest (not `deploy`); bench skips it | |
| 16. calibration leaks | raw folder, t10k file, dataset folder, link: refused | 7 |
| 17. INT8 calibration | memory estimated first; temporary files in the staging folder | 2 |
| 18. resnet-predict | no FIFO opened, --threads bounded, names escaped (JSON exact) | 4 |
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import export.core.artifact as artifact_mod
import export.core.folders as folders_mod
import export.pipeline as pipeline
from export.cli import main as export_cli
from export.core.artifact import check_onnx_file, owned_artifact, read_manifest, verify_files
from export.core.checkpoint import save_checkpoint
from export.core.errors import UserError
from export.core.fileio import sha256_file
from export.core.folders import recover_interrupted
from export.core.manifest import write_manifest
from export.core.models import ModelSpec
from export.core.shapes import BatchRange
from export.core.weights import state_digest
from export.pipeline import ExportRequest, export_artifact
from export.runtime import load_artifact

from cli_helpers import error_line, invoke, no_traceback
from damage import scaled_weights

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--depth", "20", "--input-size", "16", "--batch-range", "1:1:2"]
BATCH = BatchRange(1, 1, 2)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


_onnx_cache: dict = {}
_real_export_onnx = pipeline.export_onnx


def _cached_export_onnx(model, spec, opset):
    key = (state_digest(model), json.dumps(spec.to_dict()), opset)
    if key not in _onnx_cache:
        _onnx_cache[key] = _real_export_onnx(model, spec, opset)
    proto = onnx.ModelProto()
    proto.CopyFrom(_onnx_cache[key])
    return proto


@pytest.fixture(autouse=True)
def one_dynamo_export_per_weights(monkeypatch):
    """The dynamo export (5 s) is not what these tests are about: do it once per weights."""
    monkeypatch.setattr(pipeline, "export_onnx", _cached_export_onnx)


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    return invoke(export_cli, args, catch_exceptions=True)


def tree(folder):
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def snapshot(folder):
    """Every path with its bytes (files) or None (folders): 'untouched' means equal snapshots."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One small FP32 artifact from fresh weights (seed 0), shared by the module."""
    out = tmp_path_factory.mktemp("base") / "resnet20-onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "export_onnx", _cached_export_onnx)
        export_artifact(ExportRequest(model="resnet20", input_size=16, batch=BATCH, out=out),
                        echo=quiet, warn=quiet)
    return out


@pytest.fixture
def art(base, tmp_path_factory):
    """A private copy of the shared artifact (beside, not in, the test's own folder)."""
    dst = tmp_path_factory.mktemp("art") / "art"
    shutil.copytree(base, dst)
    return dst


def edit_manifest(folder, edit, seal=False):
    """Edit the manifest by hand; ``seal``: as a writer of ours would (its digest updated),
    for tests of what such a manifest holds rather than of the edit itself."""
    path = Path(folder) / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    if seal:
        write_manifest(folder, data)
    else:
        path.write_text(json.dumps(data))


def trained_checkpoint(path, seed=3):
    spec = ModelSpec.create("resnet20", num_classes=10, in_chans=1)
    import torch

    torch.manual_seed(seed)
    save_checkpoint(path, spec.build(), spec, class_names=[str(i) for i in range(10)], epoch=1)


def dead_pid():
    """The id of a process that has just ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------------------------
# 1. The output folder: only a folder that is provably our artifact is ever replaced
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
    assert tree(out) == ["manifest.json", "resnet20.onnx"]
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]


def test_an_empty_folder_is_used_without_a_word(cwd):
    (cwd / "out").mkdir()
    result = run(*SMALL, "--out", "out")
    assert result.exit_code == 0, result.output
    assert "replacing" not in result.output and tree(cwd / "out") == ["manifest.json",
                                                                      "resnet20.onnx"]


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
# 2. Replacing an artifact: the old one or the new one under the name, whatever happens
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
    from bench.cases import find_manifests

    shutil.copytree(art, tmp_path / "resnet20-onnx")
    shutil.copytree(art, tmp_path / f".resnet20-onnx.{dead_pid()}-abc.partial")
    shutil.copytree(art, tmp_path / ".resnet20-onnx.replaced-1")
    (tmp_path / ".hidden" / "x").mkdir(parents=True)
    shutil.copy(art / "manifest.json", tmp_path / ".hidden" / "x" / "manifest.json")
    assert find_manifests(tmp_path) == [tmp_path / "resnet20-onnx" / "manifest.json"]


# ---------------------------------------------------------------------------------------------
# 3. Links out of an artifact folder are never followed
# ---------------------------------------------------------------------------------------------


def _relink(folder, name, target):
    """Replace a listed file by a link to ``target`` and make the manifest agree (sha256)."""
    (folder / name).unlink()
    (folder / name).symlink_to(target)
    digest = sha256_file(target)
    edit_manifest(folder, lambda m: [f.update(sha256=digest) for f in m["files"]
                                     if f["path"] == name])


def test_a_listed_file_linking_out_of_the_folder_is_refused_everywhere(tmp_path, art):
    outside = tmp_path / "outside.onnx"
    shutil.copy(art / "resnet20.onnx", outside)
    _relink(art, "resnet20.onnx", outside)
    with pytest.raises(UserError, match="outside the artifact folder"):
        verify_files(art, read_manifest(art))
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art)
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art, verify=False)  # not checking sha256 does not mean following links
    line = error_line(run("verify", art))
    assert "is a link to" in line and "outside the artifact folder" in line


def test_a_listed_file_linking_to_a_system_file_is_refused(art):
    _relink(art, "resnet20.onnx", Path("/etc/hostname") if Path("/etc/hostname").exists()
            else Path(sys.executable))
    with pytest.raises(UserError, match="outside the artifact folder"):
        verify_files(art, read_manifest(art))


def test_a_manifest_that_is_a_link_out_of_the_folder_is_refused(tmp_path, art):
    elsewhere = tmp_path / "m.json"
    shutil.move(art / "manifest.json", elsewhere)
    (art / "manifest.json").symlink_to(elsewhere)
    with pytest.raises(UserError, match="outside the artifact folder"):
        read_manifest(art)
    line = error_line(run("verify", art))
    assert "manifest.json is a link to" in line


def test_a_link_inside_the_folder_is_read_but_the_folder_is_not_ours_to_replace(art):
    shutil.move(art / "resnet20.onnx", art / "real.onnx")
    (art / "resnet20.onnx").symlink_to("real.onnx")
    verify_files(art, read_manifest(art))  # stays inside: fine to read
    with pytest.raises(UserError):
        owned_artifact(art)


def test_a_listed_fifo_is_refused_not_read_forever(art):
    (art / "resnet20.onnx").unlink()
    os.mkfifo(art / "resnet20.onnx")
    with pytest.raises(UserError, match="not a regular file"):
        verify_files(art, read_manifest(art))
    with pytest.raises(UserError, match="not a regular file"):
        load_artifact(art, verify=False)


def _with_external_data(art, location, listed=False):
    """Make the artifact's ONNX keep one initializer's data in ``location``."""
    path = art / "resnet20.onnx"
    proto = onnx.load(str(path))
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    onnx.save(proto, str(path))
    digest = sha256_file(path)

    def edit(m):
        m["files"][0]["sha256"] = digest
        if listed:
            m["files"].append({"path": location, "sha256": sha256_file(art / location),
                               "bytes": (art / location).stat().st_size, "role": "weights"})
    edit_manifest(art, edit, seal=True)  # as an exporter writing external data would


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x.bin"])
def test_onnx_external_data_outside_the_folder_is_refused_at_load(tmp_path, art, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    _with_external_data(art, location)
    manifest = read_manifest(art)
    with pytest.raises(UserError, match="outside the artifact folder"):
        check_onnx_file(art, art / "resnet20.onnx", manifest)
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art)
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art, verify=False)


def test_onnx_external_data_that_the_manifest_does_not_list_is_refused(art):
    (art / "weights.bin").write_bytes(b"\0" * 64)
    _with_external_data(art, "weights.bin")
    with pytest.raises(UserError, match="does not list"):
        load_artifact(art, verify=False)


def test_onnx_external_data_through_a_link_out_of_the_folder_is_refused(tmp_path, art):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    (art / "weights.bin").symlink_to(tmp_path / "secret.bin")
    _with_external_data(art, "weights.bin", listed=True)
    with pytest.raises(UserError, match="outside the artifact folder"):
        load_artifact(art)


def test_onnx_external_data_listed_in_the_folder_loads(art):
    path = art / "resnet20.onnx"
    proto = onnx.load(str(path))
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin")
    digest = sha256_file(path)

    def edit(m):
        m["files"][0].update(sha256=digest, bytes=path.stat().st_size)
        m["files"].append({"path": "weights.bin", "sha256": sha256_file(art / "weights.bin"),
                           "bytes": (art / "weights.bin").stat().st_size, "role": "weights"})
    edit_manifest(art, edit, seal=True)  # as an exporter writing external data would
    import numpy as np

    with load_artifact(art) as runner:
        assert runner.infer(np.zeros((1, 1, 16, 16), np.float32)).shape == (1, 10)


# ---------------------------------------------------------------------------------------------
# 4. No artifact inside another
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
    assert tree(art) == ["manifest.json", "resnet20.onnx"]


# ---------------------------------------------------------------------------------------------
# 8. Malformed manifests: one line naming the key, in verify and in the loaders
# ---------------------------------------------------------------------------------------------


def _set(path, value):
    def edit(m):
        node = m
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if value is _DROP:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


class _Drop:
    def __repr__(self):
        return "DROP"


_DROP = _Drop()

MALFORMED = [
    ("files", "a string", "files must be a non-empty list"),
    ("files", [], "files must be a non-empty list"),
    ("files.0", "resnet20.onnx", "files[0] must be an object"),
    ("files.0.path", "../x.onnx", "files[0].path must be a relative name"),
    ("files.0.path", "/etc/passwd", "files[0].path must be a relative name"),
    ("files.0.path", 7, "files[0].path must be a relative name"),
    ("files.0.sha256", None, "files[0].sha256 must be 64 hex digits"),
    ("files.0.bytes", "big", "files[0].bytes must be a size in bytes"),
    ("artifact", ["x"], "is not among its files"),
    ("model", {}, "model must be a model description"),
    ("model", "resnet20", "model must be a model description"),
    ("model.name", "resnet9000", "model is not a valid model description: unknown model"),
    ("model.name", None, "model.name must be a model name"),
    ("model.num_classes", "10", "model.num_classes must be an integer >= 1"),
    ("model.input_size", 100000, "model.input_size must be an integer >= 1 and at most 4096"),
    ("model.in_chans", True, "model.in_chans must be an integer"),
    ("model.mean", "grey", "model.mean must be a list of numbers"),
    ("model.mean", [0.5, 0.5], "model is not a valid model description: mean/std need 1"),
    ("model.shortcut", "C", "model.shortcut must be 'A' or 'B'"),
    ("model.colour", "red", "model is not a valid model description: model description has "
                            "unknown fields"),
    ("parity", None, "parity must be an object"),
    ("parity.passed", "yes", "parity.passed must be true or false"),
    ("parity.inputs", "real", "parity.inputs must be an object"),
    ("parity.inputs.real", [], "parity.inputs.real must be an object"),
    ("parity.inputs.real.dataset", "digits", "parity.inputs.real.dataset must be an object"),
    ("parity.runs", {}, "parity.runs must be a list"),
    ("source", "seed", "source must be an object"),
    ("source.kind", "magic", "source.kind must be one of checkpoint, state_dict, seed"),
    ("source.seed", "0", "source.seed must be an integer"),
    ("source.seed", 1.5, "source.seed must be an integer"),
    ("source.init_sha256", 5, "source.init_sha256 must be 64 hex digits or null"),
    ("batch_range", [1, 2], "batch_range must be an object with min, opt, max"),
    ("batch_range.min", "1", "batch_range.min must be an integer"),
    ("batch_range.max", None, "batch_range.max must be an integer"),
    ("batch_range.min", 0, "batch_range must satisfy 1 <= min <= opt <= max <= 4096"),
    ("batch_range.max", 10**9, "batch_range must satisfy 1 <= min <= opt <= max <= 4096"),
    ("batch_range", {"min": 4, "opt": 2, "max": 8}, "batch_range must satisfy"),
    ("inputs", [], "inputs must be a non-empty list"),
    ("inputs", None, "inputs must be a non-empty list"),
    ("inputs.0", "images", "inputs[0] must be an object with a name"),
    ("inputs.0.name", "", "inputs[0] must be an object with a name"),
    ("inputs.0.dtype", "int8", "inputs[0].dtype must be one of float32, float16"),
    ("outputs", [{}], "outputs[0] must be an object with a name"),
    ("precision", "fp99", "precision must be one of fp32, fp16"),
    ("precision", None, "precision must be one of fp32, fp16"),
    ("format", ["onnx"], "unknown format"),
    ("versions", "new", "versions must be an object"),
    ("versions.torch", 2, "versions values must be strings or null"),
    ("gpu", "H100", "gpu must be an object or null"),
    ("class_names", "0123456789", "class_names must be a list of strings or null"),
    ("opset", "20", "opset must be an integer"),
    ("created", 2024, "created must be an ISO 8601 string"),
    ("tool", None, "tool must be an object"),
    ("tensorrt", [], "tensorrt must be an object or null"),
    ("schema_version", "1", "schema_version '1'"),
    ("kind", None, "is not a resnet-deploy artifact manifest"),
    ("parity", _DROP, "lacks parity"),
]


@pytest.mark.parametrize("key,value,message", MALFORMED,
                         ids=[f"{k}={v!r}"[:40] for k, v, _ in MALFORMED])
def test_malformed_manifests_are_one_line_naming_the_key(art, key, value, message):
    edit_manifest(art, _set(key, value))
    with pytest.raises(UserError, match=None) as info:
        read_manifest(art)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError):
        load_artifact(art, verify=False)
    line = error_line(run("verify", art))
    assert message in line


def test_a_trt_manifest_must_say_what_its_engine_was_built_from(art):
    edit_manifest(art, lambda m: m.update(format="trt", tensorrt={"built_from": "gone.onnx"}))
    with pytest.raises(UserError, match="tensorrt.built_from must name one of its files"):
        read_manifest(art)


@pytest.mark.parametrize("content,message", [
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "not a resnet-deploy artifact manifest"),
])
def test_manifests_that_are_not_json_objects_are_one_line(art, content, message):
    (art / "manifest.json").write_bytes(content)
    line = error_line(run("verify", art))
    assert message in line


def test_a_manifest_too_large_to_be_one_is_not_read(art, monkeypatch):
    monkeypatch.setattr(artifact_mod, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(UserError, match="too large to be an artifact manifest"):
        read_manifest(art)


def test_a_damaged_recorded_dataset_is_a_note_not_a_traceback(art):
    edit_manifest(art, lambda m: m["parity"]["inputs"]["real"].update(
        dataset={"kind": "digits", "seed": "x"}), seal=True)
    result = run("verify", art)
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "real images unavailable" in result.output


# ---------------------------------------------------------------------------------------------
# 10. Bounds: out-of-range options are one line and exit 2; memory is checked before the work
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--input-size", "100000"], "100000 is not in the range 8<=x<=4096"),
    (["--input-size", "99999999999999999999"], "is not in the range 8<=x<=4096"),
    (["--batch-range", "1:1:100000000"], "the largest batch is 4096"),
    (["--batch-range", "99999999999999999999"], "the largest batch is 4096"),
    (["--max-batch", "5000"], "5000 is not in the range 1<=x<=4096"),
    (["--num-classes", "1000000000000"], "is not in the range 1<=x<=100000"),
    (["--in-chans", "100000000000"], "is not in the range 1<=x<=1024"),
    (["--seed", "99999999999999999999"], "--seed"),
    (["--workspace", "99999999999999999999G"], "is above 1T"),
    (["--workspace", "9" * 400], "is above 1T"),
])
def test_out_of_range_options_are_one_line_exit_2_and_create_nothing(cwd, args, message):
    result = run("--depth", "20", *args)
    line = error_line(result, code=2)
    assert message in line
    assert list(cwd.iterdir()) == []


def test_an_export_that_cannot_fit_in_memory_is_refused_before_it_starts(cwd, monkeypatch):
    monkeypatch.setattr("export.request.available_memory", lambda: 64 << 20)
    monkeypatch.setattr(pipeline, "export_onnx", lambda *a: pytest.fail("export started"))
    line = error_line(run("--depth", "20", "--input-size", "1024", "--batch-range", "1:1:64"))
    assert "needs about" in line and "for the parity gate at batch 64" in line
    assert "0.1 GiB is available" in line and "lower --input-size or --batch-range" in line
    line = error_line(run("--depth", "20", "--input-size", "1024", "--batch-range", "1"))
    assert "BatchNorm calibration of fresh weights" in line
    assert list(cwd.iterdir()) == []


def test_the_python_api_keeps_the_same_bounds(tmp_path):
    with pytest.raises(UserError, match="input size 5000 is above the limit of 4096"):
        pipeline.export_artifacts(ExportRequest(model="resnet20", input_size=5000,
                                                out=tmp_path / "o"), ["onnx"], quiet, quiet)
    with pytest.raises(UserError, match="batch 5000 is above the limit of 4096"):
        pipeline.export_artifacts(ExportRequest(model="resnet20", batch=BatchRange(1, 1, 5000),
                                                out=tmp_path / "o"), ["onnx"], quiet, quiet)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 14. SIGTERM and SIGHUP clean up like Ctrl-C
# ---------------------------------------------------------------------------------------------


WAIT_IN_THE_GATE = """
import sys, time
import export.pipeline as pipeline
real = pipeline.judge_artifact
def gate(folder, *args, **kwargs):
    print("STAGED", folder, flush=True)
    time.sleep(120)
    return real(folder, *args, **kwargs)
pipeline.judge_artifact = gate
from export.cli import main
sys.argv = ["resnet-export", "--depth", "20", "--input-size", "16", "--batch-range", "1:1:2",
            "--out", "out/model"]
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_sigterm_mid_export_removes_the_staging_folder(tmp_path, signum):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WAIT_IN_THE_GATE)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for line in proc.stdout:
            if line.startswith("STAGED"):
                staging = Path(line.split()[1])
                break
        else:
            pytest.fail(proc.stderr.read())
        assert (tmp_path / staging).is_dir() or staging.is_dir()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no staging folder, no out/, no out/model


# ---------------------------------------------------------------------------------------------
# 15. A manifest is checked against the artifact itself, never trusted as written
# ---------------------------------------------------------------------------------------------


def _set_path(data, dotted, value):
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value


TAMPERED = [  # (key, value, what the one line says)
    ("model.num_classes", 20, "model.num_classes is 20, the graph outputs 10 scores"),
    ("model.num_classes", 5, "model.num_classes is 5, the graph outputs 10 scores"),
    ("model.input_size", 24, "the model takes 1x24x24 inputs"),
    ("inputs.0.name", "pixels", "its inputs are"),
    ("outputs.0.name", "scores", "its outputs are"),
    ("inputs.0.dtype", "float16", "its inputs are"),
    ("model.mean", [0.9], "model.mean is [0.9], the file's own metadata says"),
    ("model.std", [0.25], "model.std is [0.25], the file's own metadata says"),
    ("normalization.mean", [0.1], "normalization.mean is [0.1]"),
    ("class_names", [str(i) for i in range(11)], "class_names has 11 names for 10 outputs"),
    ("class_names", [str(9 - i) for i in range(10)], "class_names is"),
    ("batch_range.max", 2, None),  # unchanged value: still loads (control)
]


@pytest.mark.parametrize("key,value,message", TAMPERED, ids=[f"{k}={v!r}"[:40]
                                                             for k, v, _ in TAMPERED])
def test_a_manifest_edited_against_its_onnx_file_is_refused_at_load(art, key, value, message):
    edit_manifest(art, lambda d: _set_path(d, key, value))
    if message is None:
        load_artifact(art, verify=False)
        return
    for verify in (False, True):  # refused whether or not the digest is checked
        with pytest.raises(UserError) as info:
            load_artifact(art, verify=verify)
        text = str(info.value)
        assert "\n" not in text
        if not verify:
            assert "manifest.json does not match resnet20.onnx" in text and message in text, text


def test_verify_and_predict_refuse_an_edited_mean(cwd, art):
    edit_manifest(art, lambda d: _set_path(d, "model.mean", [0.9]))
    line = error_line(run("verify", art))
    assert "manifest.json was edited after export" in line
    from PIL import Image

    from export.predict.cli import main as predict_cli

    Image.new("L", (16, 16), 90).save(cwd / "a.png")
    line = error_line(CliRunner().invoke(predict_cli, [str(art), str(cwd / "a.png")]))
    assert "model.mean is [0.9], the file's own metadata" in line


def test_the_manifest_digest_tells_an_edit_from_a_reexport(cwd, art):
    from export.core.manifest import manifest_digest

    manifest = read_manifest(art)
    assert manifest["manifest_sha256"] == manifest_digest(manifest)
    edit_manifest(art, lambda d: d.update(created="2020-01-01T00:00:00+00:00"))
    line = error_line(run("verify", art))
    assert "manifest.json was edited after export" in line
    with pytest.raises(UserError, match="edited after export"):
        load_artifact(art)


def test_the_planners_deploy_section_is_left_out_of_the_digest(cwd, art):
    edit_manifest(art, lambda d: d.update(deploy={"runtime": "onnxruntime", "precision": "fp32",
                                                  "settings": {"threads": 1}}))
    load_artifact(art)  # verify=True: digest checked, deploy not part of it
    result = run("verify", art)
    assert result.exit_code == 0, result.output
    assert "matches its digest" in result.output


def test_a_manifest_without_a_digest_is_checked_against_its_file_only(cwd, art):
    edit_manifest(art, lambda d: d.pop("manifest_sha256"))
    load_artifact(art)
    result = run("verify", art)
    assert result.exit_code == 0, result.output
    assert "records no digest" in result.output


def test_bench_skips_an_edited_artifact_and_measures_the_good_one(tmp_path, art):
    from bench.cli import main as bench_cli

    root = tmp_path / "arts"
    root.mkdir()
    shutil.copytree(art, root / "good")
    shutil.copytree(art, root / "edited")
    edit_manifest(root / "edited", lambda d: _set_path(d, "model.mean", [0.9]))
    result = CliRunner().invoke(bench_cli, [
        "--artifacts", str(root), "--backends", "onnxruntime", "--batch-sizes", "1",
        "--warmup", "1", "--no-steady-warmup", "--min-iters", "2", "--min-time", "0",
        "--rounds", "1", "--no-throughput", "--no-progress", "--threads", "1",
        "--out", str(tmp_path / "out")])
    no_traceback(result)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert {Path(r["artifact"]).parent for r in doc["results"]} == {root / "good"}
    reasons = [s["reason"] for s in doc["skipped"]]
    assert any("model.mean is [0.9]" in r for r in reasons), reasons


# ---------------------------------------------------------------------------------------------
# 16. Calibration never leaks into the judged split, however the data is named
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    from layout_writers import gray28, write_torchvision

    root = tmp_path_factory.mktemp("data")
    raw = write_torchvision(root, gray28())
    return root, raw


def _calibrated_on(mnist_root, calib):
    from export.convert.calibration import calibration_set
    from export.core.models import default_spec
    from export.data import describe_source
    from export.gate.inputs import accuracy_set

    spec = default_spec("resnet20", num_classes=10, in_chans=1, input_size=16)
    dataset = describe_source(mnist_root)  # the checkpoint was trained from the root
    calibration = calibration_set(spec, dataset, calib, 2000, "minmax")
    return lambda: accuracy_set(spec, dataset, 2, calibration.description)


@pytest.mark.parametrize("name", ["raw", "t10k file", "dataset folder", "link to root",
                                  "root again"])
def test_calibration_on_the_judged_images_is_refused_however_named(tmp_path, mnist, name):
    root, raw = mnist
    link = tmp_path / "elsewhere"
    link.symlink_to(root)
    calib = {"raw": raw, "t10k file": raw / "t10k-images-idx3-ubyte",
             "dataset folder": root / "MNIST", "link to root": link, "root again": root}[name]
    judge = _calibrated_on(root, calib)
    with pytest.raises(UserError, match="calibration images are also in the test split"):
        judge()


def test_calibration_on_the_training_split_is_judged(mnist):
    root, _ = mnist
    _, described = _calibrated_on(root, None)()  # the checkpoint's own training split
    assert described["count"] > 0


def test_calibration_on_other_data_is_judged(tmp_path, mnist):
    from layout_writers import gray28, write_torchvision

    root, _ = mnist
    other = write_torchvision(tmp_path / "copy", gray28())  # same pixels, other files
    labelled, described = _calibrated_on(root, other)()  # files are the identity: a copy is
    assert described["dataset"]["path"] == str(root)     # other data, and the root is judged
    assert described["count"] == len(labelled.labels) > 0


# ---------------------------------------------------------------------------------------------
# 17. INT8 calibration: memory estimated before it starts; temporary work inside the staging
# ---------------------------------------------------------------------------------------------


def test_a_calibration_that_cannot_fit_in_memory_is_refused_before_it_starts(mnist,
                                                                           monkeypatch):
    import export.convert.calibration as calibration_mod
    import export.core.hardware as hardware

    root, raw = mnist
    monkeypatch.setattr(hardware, "available_memory", lambda: 64 << 20)
    monkeypatch.setattr(calibration_mod, "split_images",
                        lambda *a, **k: pytest.fail("decoded the images anyway"))
    spec = ModelSpec.create("resnet20", num_classes=10, in_chans=1, input_size=1024)
    with pytest.raises(UserError) as info:
        calibration_mod.calibration_set(spec, None, raw, 1258, "entropy")
    text = str(info.value)
    assert text.startswith("INT8 calibration of 1258 images at 1024x1024 (entropy) needs")
    assert "lower --calib-count or --input-size" in text and "\n" not in text


def test_int8_temporary_work_stays_inside_the_staging_folder(cwd, monkeypatch):
    import tempfile

    system_tmp = cwd / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen = []
    real = tempfile.TemporaryDirectory

    class Recorded(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(Path(self.name))

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Recorded)
    trained_checkpoint(cwd / "ck.pt")
    result = run("--checkpoint", cwd / "ck.pt", "--input-size", "16", "--batch-range",
                 "1:1:2", "--fmt", "onnx-int8", "--calib-count", "32", "--out", cwd / "out")
    assert seen, "no temporary folder was made"
    assert not [p for p in seen if system_tmp in p.parents], seen
    assert all(".partial" in str(p) for p in seen), seen
    assert list(system_tmp.iterdir()) == []
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ---------------------------------------------------------------------------------------------
# 18. resnet-predict: no FIFO read forever, threads bounded by the machine, names escaped
# ---------------------------------------------------------------------------------------------


def _predict(*args):
    from export.predict.cli import main as predict_cli

    return CliRunner().invoke(predict_cli, [str(a) for a in args])


def test_predict_never_opens_a_fifo_given_as_an_image(tmp_path, art):
    import threading

    from PIL import Image

    Image.new("RGB", (16, 16), (40, 80, 120)).save(tmp_path / "good.png")
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    opened, stop = threading.Event(), threading.Event()

    def writer():  # connects as soon as anyone opens the FIFO for reading: bounded either way
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                stop.wait(0.05)
                continue
            opened.set()
            os.close(fd)
            return

    threading.Thread(target=writer, daemon=True).start()
    try:
        result = _predict(art, fifo, tmp_path / "good.png")
    finally:
        stop.set()
    assert not opened.is_set(), "the FIFO was opened"
    line = error_line(result)
    assert f"{fifo} is not a regular file" in line
    assert "1 image(s) classified" in result.stderr


@pytest.mark.parametrize("threads", ["4000", "100000"])
def test_predict_threads_are_bounded_by_the_machine(art, threads):
    from export.core.hardware import usable_cores

    line = error_line(_predict(art, "x.png", "--threads", threads), code=2)
    assert f"--threads {threads}: this process may run on {usable_cores()} core(s)" in line


def test_predict_escapes_names_in_its_table_and_errors_and_json_keeps_them(tmp_path, art):
    from PIL import Image

    good = tmp_path / "two\x1b[2J\nFAKE 100%.png"
    Image.new("RGB", (16, 16), (40, 80, 120)).save(good)
    bad = tmp_path / "\x1b[31mred\u202e.png"
    bad.write_bytes(b"not an image")
    result = _predict(art, good, bad)
    assert "\x1b" not in result.output and "\u202e" not in result.output
    assert "FAKE 100%" in result.stdout and "\\x1b[2J\\nFAKE" in result.stdout
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error")]
    assert "\\x1b[31mred\\u202e.png" in line
    doc = json.loads(_predict(art, good, bad, "--json").stdout)
    assert doc["results"][0]["path"] == str(good)
    assert doc["errors"][0]["path"] == str(bad)
