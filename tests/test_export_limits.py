"""resnet-export's limits and signals (export.request, export.cli): out-of-range options are one
line and exit 2, memory is checked before the work, SIGTERM and SIGHUP clean up like Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import export.pipeline as pipeline
from export.core.errors import UserError
from export.core.shapes import BatchRange
from export.pipeline import ExportRequest

from artifact_fixtures import REPO, quiet, run
from cli_helpers import error_line

pytestmark = pytest.mark.usefixtures("one_dynamo_export_per_weights")


# ---------------------------------------------------------------------------------------------
# Bounds: out-of-range options are one line and exit 2; memory is checked before the work
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
# SIGTERM and SIGHUP clean up like Ctrl-C
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
