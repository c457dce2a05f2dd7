"""resnet-bench never loses what it measured: the output folder is checked before the first
measurement, a batch size that does not fit in memory is a skip, a failure mid-run or a full disk
still leaves the rows somewhere, and bad artifacts are skips with their one-line reason."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import bench.cli as bench_cli
import bench.cases as plan
from bench import report
from bench.cli import main

FAST = ["--depth", "18", "--input-size", "32", "--warmup", "1", "--no-steady-warmup",
        "--min-iters", "3", "--min-time", "0", "--no-progress", "--threads", "1"]
NULL = [*FAST, "--backends", "null"]


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result, code=1):
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    return errors[0]


def never_measure(monkeypatch):
    monkeypatch.setattr(bench_cli, "sweep", lambda *a, **k: pytest.fail("measured anyway"))


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
# Memory: a batch size that cannot fit is a skip, never the end of the run
# ---------------------------------------------------------------------------------------------


def test_a_batch_size_too_large_for_memory_is_a_skip_and_the_rest_is_measured(tmp_path):
    result = invoke([*NULL, "--batch-sizes", "1,99999999999", "--out", tmp_path])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [r["batch_size"] for r in doc["results"]] == [1]
    (skip,) = [s for s in doc["skipped"] if s["batch_size"] == 99999999999]
    assert "needs about" in skip["reason"] and "GiB is available" in skip["reason"]


def test_only_sizes_too_large_for_memory_is_nothing_to_measure(tmp_path):
    line = error_line(invoke([*NULL, "--batch-sizes", "99999999999", "--out", tmp_path / "o"]))
    assert "nothing to measure: batch 99999999999 needs about" in line
    assert not (tmp_path / "o").exists()


def test_a_memory_error_making_one_batch_is_a_skip_of_that_size(tmp_path, monkeypatch):
    real = plan.Candidate.make_batch

    def make_batch(self, batch_size, seed):
        if batch_size == 2:
            raise MemoryError("Unable to allocate 9.00 GiB for an array")
        return real(self, batch_size, seed)

    monkeypatch.setattr(plan.Candidate, "make_batch", make_batch)
    result = invoke([*NULL, "--batch-sizes", "1,2,4", "--out", tmp_path])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [r["batch_size"] for r in doc["results"]] == [1, 4]
    (skip,) = [s for s in doc["skipped"] if s["batch_size"] == 2]
    assert "MemoryError" in skip["reason"] and "no memory for the batch-2 input" in skip["reason"]


def test_an_unexpected_failure_mid_run_keeps_and_writes_what_was_measured(tmp_path, monkeypatch):
    def infer(self, batch):
        if batch.shape[0] == 2:
            raise TypeError("something no sweep expects")
        return np.zeros((batch.shape[0], 10), np.float32)

    monkeypatch.setattr(plan.NullRunner, "_infer", infer)
    result = invoke([*NULL, "--batch-sizes", "1,2,4", "--out", tmp_path])
    line = error_line(result)
    assert line == (f"Error: the run stopped: TypeError: something no sweep expects; kept 1 "
                    f"result(s) in {tmp_path}")
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [r["batch_size"] for r in doc["results"]] == [1] and doc["interrupted"] is True
    assert any("the run stopped" in s["reason"] for s in doc["skipped"])


@pytest.mark.parametrize("args", [["--input-size", "100000"],
                                  ["--input-size", "99999999999999999999"]])
def test_an_input_size_beyond_the_limit_is_exit_2(args):
    line = error_line(invoke([*NULL, *args]), code=2)
    assert "is not in the range 16<=x<=4096" in line


# ---------------------------------------------------------------------------------------------
# --artifacts: malformed manifests and leftovers are skips with their one-line reason
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from bench.onnx_cache import cached_onnx
    from export.core.models import ModelSpec
    import torch

    spec = ModelSpec.create("resnet18", input_size=32)
    torch.manual_seed(0)
    path, _ = cached_onnx(spec.build().eval(), spec, 0, tmp_path_factory.mktemp("cache"))
    return path


def _artifact(folder, onnx_path, edit=None):
    from export.core.manifest import build_manifest, file_entry, write_manifest

    folder.mkdir(parents=True)
    shutil.copy(onnx_path, folder / "model.onnx")
    spec = plan.ModelSpec.create("resnet18", input_size=32)
    manifest = build_manifest(
        fmt="onnx", precision="fp32", artifact="model.onnx",
        files=[file_entry(folder, "model.onnx", "artifact")], model=spec.to_dict(),
        class_names=None, normalization={"mean": list(spec.mean), "std": list(spec.std)},
        source={"kind": "seed", "seed": 0},
        inputs=[{"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}],
        batch_range={"min": 1, "opt": 1, "max": 2}, opset=20, fp16=None, tensorrt=None,
        gpu=None, versions={}, parity={"passed": True, "runs": []})
    if edit:
        edit(manifest)
    write_manifest(folder, manifest)


BAD = {
    "files-string": (lambda m: m.update(files="model.onnx"), "files must be a non-empty list"),
    "model-empty": (lambda m: m.update(model={}), "model must be a model description"),
    "parity-null": (lambda m: m.update(parity=None), "parity must be an object"),
    "seed-string": (lambda m: m["source"].update(seed="0"), "source.seed must be an integer"),
    "batch-strings": (lambda m: m.update(batch_range={"min": "1", "opt": "1", "max": "2"}),
                      "batch_range.min must be an integer"),
    "inputs-empty": (lambda m: m.update(inputs=[]), "inputs must be a non-empty list"),
    "input-size-huge": (lambda m: m["model"].update(input_size=10**6),
                        "model.input_size must be an integer >= 1 and at most 4096"),
    "precision-list": (lambda m: m.update(precision=["fp32"]), "precision must be one of"),
}


def test_malformed_manifests_are_skips_with_one_line_and_the_good_one_is_measured(tmp_path,
                                                                                  onnx_file):
    root = tmp_path / "artifacts"
    _artifact(root / "good", onnx_file)
    for name, (edit, _) in BAD.items():
        _artifact(root / name, onnx_file, edit)
    _artifact(root / f".good.{os.getpid()}-abc.partial", onnx_file)  # a staging folder
    out = tmp_path / "out"
    result = invoke([*FAST, "--artifacts", root, "--batch-sizes", "1", "--out", out])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    doc = json.loads((out / "bench.json").read_text())
    # only the good artifact is measured (on every ONNX runtime here, beside its eager baseline)
    assert {r["artifact"] for r in doc["results"] if r["artifact"]} == \
        {str(root / "good" / "model.onnx")}
    reasons = {Path(s["artifact"]).parent.name: s["reason"] for s in doc["skipped"]
               if s.get("artifact")}
    for name, (_, message) in BAD.items():
        assert message in reasons[name] and "\n" not in reasons[name], (name, reasons.get(name))
    assert not any(".partial" in (s.get("artifact") or "") for s in doc["skipped"])


def test_an_artifact_linking_out_of_its_folder_is_a_skip(tmp_path, onnx_file):
    root = tmp_path / "artifacts"
    _artifact(root / "linked", onnx_file)
    shutil.copy(root / "linked" / "model.onnx", tmp_path / "elsewhere.onnx")
    (root / "linked" / "model.onnx").unlink()
    (root / "linked" / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    line = error_line(invoke([*FAST, "--artifacts", root, "--batch-sizes", "1", "--out",
                              tmp_path / "out"]))
    assert "nothing was measured: every backend was skipped" in line
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert any("outside the artifact folder" in s["reason"] for s in doc["skipped"])
