"""A resnet-bench run (bench.cli, bench.sweep): a batch size that cannot fit is a skip, numeric
options are finite and bounded (exit 2 with the reason), threads and --cache-dir are checked,
and SIGHUP/SIGTERM keep what was measured."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

import bench.cli as bench_cli
import bench.matrix as matrix

from bench_fixtures import FAST, NULL, invoke, never_measure
from cli_helpers import error_line

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
    from export.core.manifest import (
        ManifestParts,
        build_manifest,
        file_entry,
        write_manifest,
    )

    folder.mkdir(parents=True)
    shutil.copy(onnx_path, folder / "model.onnx")
    spec = matrix.ModelSpec.create("resnet18", input_size=32)
    manifest = build_manifest(ManifestParts(
        fmt="onnx", precision="fp32", artifact="model.onnx",
        files=[file_entry(folder, "model.onnx", "artifact")], model=spec.to_dict(),
        class_names=None, normalization={"mean": list(spec.mean), "std": list(spec.std)},
        source={"kind": "seed", "seed": 0},
        inputs=[{"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}],
        batch_range={"min": 1, "opt": 1, "max": 2}, opset=20, fp16=None, tensorrt=None,
        gpu=None, versions={}, parity={"passed": True, "runs": []}))
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
