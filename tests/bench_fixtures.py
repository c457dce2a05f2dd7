"""What the tests of resnet-bench's refusals share: a run short enough to be a test (FAST, NULL:
the null backend), the command line, and a guard that fails a test that measures."""

from __future__ import annotations

import pytest

import bench.cli as bench_cli
from bench.cli import main

from cli_helpers import command

FAST = ["--depth", "18", "--input-size", "32", "--warmup", "1", "--no-steady-warmup",
        "--min-iters", "3", "--min-time", "0", "--no-progress", "--threads", "1"]
NULL = [*FAST, "--backends", "null"]


invoke = command(main, catch_exceptions=True)


def never_measure(monkeypatch):
    monkeypatch.setattr(bench_cli, "sweep", lambda *a, **k: pytest.fail("measured anyway"))
