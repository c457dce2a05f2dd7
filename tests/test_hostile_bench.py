"""resnet-bench never loses what it measured and never overwrites what is not its own: the
output folder is checked before the first measurement, a batch size that does not fit in memory
is a skip, a failure mid-run or a full disk still leaves the rows somewhere, and bad artifacts are
skips with their one-line reason.

One class of defect per section (count = collected cases):

| class | what it covers | count |
|---|---|---|
| output folder checked first | uncreatable, read-only, full, inside an artifact | 8 |
| memory | batch sizes too large are skips; MemoryError making a batch | 6 |
| --artifacts | malformed manifests and links out of the folder are skips | 2 |
| results never overwritten | your files refused even with --overwrite; a run only with it; | 7 |
|   | report --out likewise; default names unique within one second | |
| damaged bench.json | 18 damaged shapes, NaN/Infinity, deep nesting, /dev/zero, a FIFO | 25 |
| numeric options | inf/nan/huge timing options, --seed, --threads: exit 2, reason | 15 |
| --cache-dir | /proc, /sys by file-system type; a folder that cannot hold files | 5 |
| signals | SIGHUP/SIGTERM mid-run keep the rows; one helper, restored | 3 |
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import bench.cli as bench_cli
import bench.matrix as matrix
from bench import report
from bench.cli import main

from cli_helpers import command, error_line

FAST = ["--depth", "18", "--input-size", "32", "--warmup", "1", "--no-steady-warmup",
        "--min-iters", "3", "--min-time", "0", "--no-progress", "--threads", "1"]
NULL = [*FAST, "--backends", "null"]


invoke = command(main, catch_exceptions=True)


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
    real = matrix.Candidate.make_batch

    def make_batch(self, batch_size, seed):
        if batch_size == 2:
            raise MemoryError("Unable to allocate 9.00 GiB for an array")
        return real(self, batch_size, seed)

    monkeypatch.setattr(matrix.Candidate, "make_batch", make_batch)
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

    monkeypatch.setattr(matrix.NullRunner, "_infer", infer)
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
    import torch

    from bench.onnx_cache import cached_onnx
    from export.core.models import ModelSpec

    spec = ModelSpec.create("resnet18", input_size=32)
    torch.manual_seed(0)
    path, _ = cached_onnx(spec.build().eval(), spec, 0, tmp_path_factory.mktemp("cache"))
    return path


def _artifact(folder, onnx_path, edit=None):
    from export.core.manifest import build_manifest, file_entry, write_manifest

    folder.mkdir(parents=True)
    shutil.copy(onnx_path, folder / "model.onnx")
    spec = matrix.ModelSpec.create("resnet18", input_size=32)
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


# ---------------------------------------------------------------------------------------------
# Damaged bench.json: the schema is checked in one place, before anything reads the document
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_doc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "run"
    result = invoke([*NULL, "--batch-sizes", "1", "--out", folder])
    assert result.exit_code == 0, result.output
    return json.loads((folder / "bench.json").read_text())


def _row(doc, **changes):
    doc = json.loads(json.dumps(doc))
    doc["results"][0].update(changes)
    return doc


DAMAGED = {
    "top-level array": lambda d: [d],
    "top-level string": lambda d: "bench",
    "results an object": lambda d: {**d, "results": {"0": d["results"][0]}},
    "a row a string": lambda d: {**d, "results": ["torch"]},
    "skipped a string": lambda d: {**d, "skipped": "none"},
    "a skip without a reason": lambda d: {**d, "skipped": [{"backend": "openvino"}]},
    "a skip with an empty reason": lambda d: {**d, "skipped": [{"backend": "x", "reason": ""}]},
    "p50 zero": lambda d: _row(d, p50_ms=0),
    "p50 negative": lambda d: _row(d, p50_ms=-1.5),
    "p50 a string": lambda d: _row(d, p50_ms="1.2"),
    "batch size a float": lambda d: _row(d, batch_size=1.5),
    "throughput a list": lambda d: _row(d, throughput_ips=[1]),
    "truncated input shape": lambda d: _row(d, input_shape=[1, 3]),
    "round medians strings": lambda d: _row(d, round_p50_ms=["a", "b"]),
    "flags a number": lambda d: _row(d, flags=3),
    "environment a list": lambda d: {**d, "environment": []},
    "timing without noise rule": lambda d: {**d, "config": {"timing": d["config"]["timing"]}},
    "another schema version": lambda d: {**d, "schema_version": 99},
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_bench_json_is_one_line(tmp_path, good_doc, name):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(DAMAGED[name](good_doc)))
    line = error_line(CliRunner().invoke(main, ["report", str(path), "--out",
                                                str(tmp_path / "out")]))
    assert str(path) in line
    assert not (tmp_path / "out").exists()  # nothing written for a document not read


@pytest.mark.parametrize("text", ["Infinity", "NaN", "-Infinity"])
def test_non_finite_numbers_are_refused_while_parsing(tmp_path, good_doc, text):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(good_doc).replace('"p50_ms": ', f'"p50_ms": {text}, "was": ', 1))
    line = error_line(CliRunner().invoke(main, ["report", str(path), "--out",
                                                str(tmp_path / "out")]))
    assert "is not a number JSON allows" in line


def test_deeply_nested_json_is_one_line(tmp_path, good_doc):
    path = tmp_path / "bench.json"
    text = json.dumps(good_doc)
    path.write_text(text[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}")
    line = error_line(CliRunner().invoke(main, ["report", str(path), "--out",
                                                str(tmp_path / "out")]))
    assert "nested too deeply" in line


def test_a_device_is_never_read(tmp_path):
    line = error_line(CliRunner().invoke(main, ["report", "/dev/zero", "--out",
                                                str(tmp_path / "out")]))
    assert "/dev/zero is not a regular file" in line


def _fifo_writer(fifo):
    """Connects to ``fifo`` as a writer as soon as someone opens it for reading (bounded: the
    test ends either way); returns a flag that says whether anyone did."""
    import threading

    opened, stop = threading.Event(), threading.Event()

    def poll():
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                stop.wait(0.05)
                continue
            opened.set()
            os.close(fd)  # the reader sees end of file and goes on
            return

    threading.Thread(target=poll, daemon=True).start()
    return opened, stop


def test_a_fifo_is_never_opened(tmp_path):
    fifo = tmp_path / "bench.json"
    os.mkfifo(fifo)
    opened, stop = _fifo_writer(fifo)
    try:
        line = error_line(CliRunner().invoke(main, ["report", str(fifo), "--out",
                                                    str(tmp_path / "out")]))
    finally:
        stop.set()
    assert not opened.is_set(), "the FIFO was opened"
    assert "is not a regular file" in line


def test_the_schema_takes_every_document_a_run_writes(good_doc):
    report.validate(good_doc)
    report.validate(report.merge([good_doc, good_doc], ["a", "b"]))


# ---------------------------------------------------------------------------------------------
# Numeric options: finite, bounded, exit 2 with the reason; threads bounded by the machine
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--min-time", "inf"], "not a finite number"),
    (["--min-time", "nan"], "not a finite number"),
    (["--min-time", "1e9"], "an hour per row"),
    (["--warmup", "infs"], "finite"),
    (["--warmup", "nans"], "finite"),
    (["--warmup", "inf"], "give iterations and/or seconds"),
    (["--warmup", "1000000000000"], "at most 1000000 iterations"),
    (["--warmup-max-time", "inf"], "not a finite number"),
    (["--warmup-max-time", "nan"], "not a finite number"),
    (["--min-iters", "1000000000000"], "a million timed iterations"),
    (["--rounds", "1000000000"], "more rounds than this"),
    (["--seed", str(2**70)], "32 bits"),
    (["--seed", "-1"], "32 bits"),
    (["--threads", "4000"], "more threads than cores only compete"),
])
def test_numeric_options_are_finite_and_bounded(tmp_path, monkeypatch, args, message):
    never_measure(monkeypatch)
    line = error_line(invoke([*NULL, *args, "--out", tmp_path / "out"]), code=2)
    assert message in line and args[0] in line
    assert not (tmp_path / "out").exists()


def test_threads_up_to_the_usable_cores_are_taken(tmp_path, monkeypatch):
    from export.core.hardware import usable_cores

    monkeypatch.setattr(bench_cli, "sweep", lambda *a, **k: None)
    result = invoke([*NULL, "--threads", str(usable_cores()), "--out", tmp_path / "out"])
    assert result.exit_code == 1 and "nothing was measured" in result.output  # parsed, ran


# ---------------------------------------------------------------------------------------------
# --cache-dir: a folder that can hold files, never a pseudo file system
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/proc/self/x", "/proc/self", "/sys/kernel/x"])
def test_a_cache_dir_on_a_pseudo_file_system_is_refused(tmp_path, monkeypatch, where):
    never_measure(monkeypatch)
    line = error_line(invoke([*FAST, "--backends", "onnxruntime", "--cache-dir", where,
                              "--out", tmp_path / "out"]))
    assert f"--cache-dir {where}" in line and ("pseudo file system" in line
                                                or "cannot write" in line)
    assert not (tmp_path / "out").exists()


def test_a_cache_dir_that_cannot_hold_files_is_refused(tmp_path, monkeypatch):
    never_measure(monkeypatch)
    (tmp_path / "file").write_text("x")
    line = error_line(invoke([*FAST, "--backends", "onnxruntime", "--cache-dir",
                              tmp_path / "file" / "cache", "--out", tmp_path / "out"]))
    assert f"cannot write to --cache-dir {tmp_path / 'file' / 'cache'}" in line


def test_the_file_system_of_a_path_is_read_from_mountinfo(tmp_path):
    from bench.outdir import file_system_type

    assert file_system_type(Path("/proc/self/status")) == "proc"
    assert file_system_type(Path("/proc/self/does/not/exist")) == "proc"
    assert file_system_type(tmp_path) not in (None, "proc", "sysfs")


# ---------------------------------------------------------------------------------------------
# Signals: SIGHUP stops a run like Ctrl-C and SIGTERM, and keeps what was measured
# ---------------------------------------------------------------------------------------------


HANG_UP_AFTER_THE_FIRST_BATCH = """
import os, sys
import bench.sweep as sweep
real = sweep.Sweep.run_batch
def run_batch(self, b):
    real(self, b)
    os.kill(os.getpid(), {signum})  # the terminal closes after the first batch size
sweep.Sweep.run_batch = run_batch
from bench.cli import main
sys.argv = ["resnet-bench", *{args!r}]
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["HUP", "TERM"])
def test_a_hang_up_mid_run_keeps_the_measured_rows(tmp_path, signum):
    """In a process of its own: a signal sent to the test runner itself would reach every
    thread the earlier tests' runtimes left in it."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    args = [*NULL, "--batch-sizes", "1,2", "--out", str(tmp_path / "out")]
    script = HANG_UP_AFTER_THE_FIRST_BATCH.format(signum=int(signum), args=args)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 130, proc.stderr  # not killed by the signal's default action
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert doc["interrupted"] is True
    assert [r["batch_size"] for r in doc["results"]] == [1]


ONE_HELPER = """
import os, signal, time
from export.core.cli import signals_as_interrupt
for signum in (signal.SIGHUP, signal.SIGTERM):
    before = signal.getsignal(signum)
    try:
        with signals_as_interrupt():
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises long before this ends
    except KeyboardInterrupt:
        print("interrupted", signum, signal.getsignal(signum) == before)
"""


def test_one_helper_holds_the_stop_signals(tmp_path):
    """SIGHUP and SIGTERM become KeyboardInterrupt inside the helper and get their handlers back
    after it (in a process of its own, like the test above)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", ONE_HELPER], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == [f"interrupted {int(signal.SIGHUP)} True",
                                           f"interrupted {int(signal.SIGTERM)} True"]
