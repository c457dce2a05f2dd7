#!/usr/bin/env python3
"""resnet-batch's end-to-end rate against its two ceilings, measured in one run.

    PYTHONPATH=. python3 scripts/bench_batch.py ARTIFACT FOLDER... --work DIR [--batch-size N]

(a) the runner's in-process throughput: the artifact's runner on all cores, one fixed batch
    of ``--batch-size`` called back to back (no decoding, no files);
(b) decode + preprocess on all cores: worker processes reading the first images of the first
    FOLDER through resnet-batch's own decode (no inference);
(c) ``resnet-batch ARTIFACT FOLDER --out WORK/out-<n>`` for each FOLDER, as a user runs it: its
    images/s and first commit (job.json), and the peak RSS of its process tree (all workers
    included), sampled from /proc every 0.2 s.
The target: (c) >= 80% of min(a, b); also printed: (c) against 1 / (1/a + 1/b), the most two
stages that each need every core can give when they share the cores. Prints a JSON document
and writes it to WORK/bench.json.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from export.batch import decode, sources  # noqa: E402
from export.core.cpu_features import summary  # noqa: E402
from export.core.hardware import usable_cores  # noqa: E402
from export.predict import Predictor  # noqa: E402


def runner_rate(artifact: Path, batch: int, cores: int, seconds: float) -> float:
    with Predictor.load(artifact, threads=cores) as predictor:
        spec = predictor.spec
        x = np.random.default_rng(0).standard_normal(
            (batch, spec.in_chans, spec.input_size, spec.input_size)).astype(np.float32)
        predictor.logits(x, batch)
        end, n, start = time.perf_counter() + 1.0, 0, time.perf_counter()
        while time.perf_counter() < end:  # warm up
            predictor.logits(x, batch)
        start, end = time.perf_counter(), time.perf_counter() + seconds
        while time.perf_counter() < end:
            predictor.logits(x, batch)
            n += batch
        return n / (time.perf_counter() - start)


def decode_rate(artifact: Path, folder: Path, cores: int, count: int, batch: int) -> float:
    spec = Predictor.load(artifact).spec.to_dict()
    items = list(islice(sources.items([("folder", folder)]), count))
    chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
    with ProcessPoolExecutor(cores, initializer=decode.init_worker, initargs=(spec,)) as pool:
        list(pool.map(decode.decode_chunk, chunks[:cores]))  # start the workers
        start = time.perf_counter()
        done = sum(len(d.ok) for d in pool.map(decode.decode_chunk, chunks, chunksize=4))
        return done / (time.perf_counter() - start)


def _tree_rss(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines()
                              if line.startswith("VmRSS:"))) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def job(artifact: Path, folder: Path, out: Path, extra: tuple[str, ...]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "export.batch.cli", str(artifact), str(folder), "--out",
           str(out), *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    run = json.loads((out / "job.json").read_text())["this_run"]
    return {"folder": str(folder), "images": run["images"], "images_per_s": run["images_per_s"],
            "first_commit_s": run["first_commit_s"], "wall_s": time.perf_counter() - started,
            "peak_rss_mb": round(peak[0] / 2**20, 1),
            "engine_line": next((ln for ln in err.splitlines() if " engine: " in ln), "")}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path(path_type=Path, exists=True))
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--batch-size", type=int, default=None, help="[default: the artifact's opt]")
@click.option("--seconds", type=float, default=10.0, show_default=True)
@click.option("--decode-images", type=int, default=20000, show_default=True)
@click.option("--job-args", default="", help="More resnet-batch options, e.g. '--workers 1'.")
def main(artifact: Path, folders: tuple[Path, ...], work: Path, batch_size: int | None,
         seconds: float, decode_images: int, job_args: str) -> None:
    cores = usable_cores()
    batch = batch_size or Predictor.load(artifact).batch.opt
    work.mkdir(parents=True, exist_ok=True)
    doc: dict = {"cpu": summary(), "cores": cores, "load_before": os.getloadavg(),
                 "batch": batch}
    doc["runner_images_per_s"] = round(runner_rate(artifact, batch, cores, seconds), 1)
    doc["decode_images_per_s"] = round(
        decode_rate(artifact, folders[0], cores, decode_images, batch), 1)
    extra = (*shlex.split(job_args), "--batch-size", str(batch))
    doc["jobs"] = [job(artifact, f, work / f"out-{i}", extra) for i, f in enumerate(folders)]
    ceiling = min(doc["runner_images_per_s"], doc["decode_images_per_s"])
    doc["ratio_to_ceiling"] = [round(j["images_per_s"] / ceiling, 3) for j in doc["jobs"]]
    # every image needs both stages' work, and (a) and (b) each used every core: sharing the
    # cores perfectly between them gives at most 1 / (1/a + 1/b)
    runner, decoder = doc["runner_images_per_s"], doc["decode_images_per_s"]
    doc["shared_cores_bound"] = round(runner * decoder / (runner + decoder), 1)
    doc["ratio_to_shared_bound"] = [round(j["images_per_s"] / doc["shared_cores_bound"], 3)
                                    for j in doc["jobs"]]
    doc["load_after"] = os.getloadavg()
    (work / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    click.echo(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
