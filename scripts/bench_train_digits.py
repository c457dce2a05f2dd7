#!/usr/bin/env python3
"""Does plain ``resnet-train`` reach 97% test top-1 on the digits in under 5 minutes here?

Runs the real default command, ``resnet-train`` with no arguments, in a fresh working folder,
times it from the outside (process start to exit, imports included), reads the run's
``summary.json`` and checks ``test_top1 >= 0.97`` and wall time < 300 s. Exits 1 when either
fails, so it can gate a release; prints one JSON line with the figures and the machine's load
(a busy machine makes the time meaningless, and the line says so).

    python scripts/bench_train_digits.py [--workdir DIR] [-- extra resnet-train options]
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

MIN_TOP1 = 0.97
MAX_SECONDS = 300.0


def train_command() -> list[str]:
    """The installed ``resnet-train`` beside this Python, else the module it runs."""
    beside = Path(sys.executable).with_name("resnet-train")
    found = str(beside) if beside.exists() else shutil.which("resnet-train")
    return [found] if found else [sys.executable, "-m", "export.train.cli"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run here and keep the run folder [default: a temporary folder, removed].")
@click.argument("extra", nargs=-1)
def main(workdir: Path | None, extra: tuple[str, ...]) -> None:
    """Run plain resnet-train and check accuracy and wall time against the targets."""
    keep = workdir is not None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = train_command() + list(extra)
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    summaries = sorted(workdir.glob("artifacts/train/*/summary.json"),
                       key=lambda p: p.stat().st_mtime)
    summary = json.loads(summaries[-1].read_text()) if summaries else {}
    top1 = summary.get("test_top1")
    result = {
        "command": " ".join(["resnet-train", *extra]),
        "default_command": not extra,
        "exit_status": done.returncode,
        "test_top1": top1,
        "wall_time_s": round(wall, 2),
        "train_reported_wall_time_s": summary.get("wall_time_s"),
        "epochs": summary.get("epochs"),
        "model": summary.get("model"),
        "input_size": summary.get("spec", {}).get("input_size"),
        "threads": summary.get("threads"),
        "cpus": os.cpu_count(),
        "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        "machine": f"{platform.processor() or platform.machine()}, Python "
                   f"{platform.python_version()}, torch {summary.get('torch_version')}",
        "run_folder": str(summaries[-1].parent) if summaries and keep else None,
        "targets": {"min_test_top1": MIN_TOP1, "max_wall_time_s": MAX_SECONDS},
    }
    failures = []
    if done.returncode != 0:
        failures.append(f"resnet-train exited with status {done.returncode}")
    if top1 is None:
        failures.append("no summary.json with test_top1 was written")
    elif top1 < MIN_TOP1:
        failures.append(f"test top-1 {top1:.2%} < {MIN_TOP1:.0%}")
    if wall >= MAX_SECONDS:
        failures.append(f"wall time {wall:.1f}s >= {MAX_SECONDS:.0f}s")
    result["passed"] = not failures
    if keep:
        (workdir / "bench_train_digits.json").write_text(json.dumps(result, indent=2) + "\n")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    click.echo(json.dumps(result))
    if failures:
        raise click.ClickException("; ".join(failures))
    click.echo(f"PASS: test top-1 {top1:.2%} in {wall:.1f}s "
               f"(targets: >= {MIN_TOP1:.0%}, < {MAX_SECONDS:.0f}s)")


if __name__ == "__main__":
    main()
