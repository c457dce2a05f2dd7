#!/usr/bin/env python3
"""kill -9 a resnet-batch job at random moments, rerun it each time, and compare the final
output with an uninterrupted run's, row for row (keys, classes, probabilities), no key twice.

    PYTHONPATH=. python3 scripts/batch_kill_check.py ARTIFACT SOURCE --reference OUT \\
        --work DIR [--kills 5] [--seed 0] [--job-args '--batch-size 32']

OUT is the uninterrupted run's --out (same options). Each kill sends SIGKILL to the job's whole
process group (the main process and its decode workers) at a moment drawn uniformly between
``--min-s`` and ``--max-s`` seconds after the start.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def rows(out: Path) -> list[tuple]:
    t = pq.read_table(out / "predictions").to_pydict()
    return list(zip(t["key"], t["top_classes"], t["top_probabilities"]))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path(path_type=Path, exists=True))
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--reference", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--kills", type=int, default=5, show_default=True)
@click.option("--min-s", type=float, default=4.0, show_default=True)
@click.option("--max-s", type=float, default=30.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--job-args", default="")
def main(artifact: Path, source: Path, reference: Path, work: Path, kills: int, min_s: float,
         max_s: float, seed: int, job_args: str) -> None:
    out = work / "killed"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "export.batch.cli", str(artifact), str(source), "--out",
           str(out), *shlex.split(job_args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(seed)
    log = []
    for _ in range(kills):
        moment = rng.uniform(min_s, max_s)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(moment)
        alive = proc.poll() is None
        if alive:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done = len(list((out / "_committed").glob("part-*.json"))) if out.exists() else 0
        log.append({"kill_after_s": round(moment, 1), "killed": alive,
                    "committed_shards": done})
        click.echo(json.dumps(log[-1]), err=True)
    final = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if final.returncode:
        raise SystemExit(f"the rerun failed:\n{final.stderr}")
    got, want = rows(out), rows(reference)
    keys = [r[0] for r in got]
    doc = {"kills": log, "rows": len(got), "equal_row_for_row": got == want,
           "duplicate_keys": len(keys) - len(set(keys)),
           "rerun": next((ln for ln in final.stderr.splitlines() if ln.startswith("this run")),
                         "")}
    click.echo(json.dumps(doc, indent=2))
    if not doc["equal_row_for_row"] or doc["duplicate_keys"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
