"""A batch job from start to end: check, resume or refuse, stream the shards through an engine,
commit each, and record the totals in job.json.

The engines (:mod:`.local`, :mod:`.distributed`) only turn shards into logits; listing, the
exactly-once commit and the job's record are here, so both give the same output folder.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from ..core.errors import BadOption, printable
from ..core.hardware import usable_cores
from ..predict.predictor import Predictor
from ..predict.scoring import Score
from . import job as jobs
from . import shards as parts
from . import sources
from .local import LocalEngine, Threads
from .options import BatchOptions
from .report import job_score
from .sources import Shard, SourceChanged

Echo = Callable[[str], None]


class Engine(Protocol):
    def start(self) -> None: ...
    def describe(self) -> str: ...
    def process(self, shards: Iterator[Shard]) -> Iterator[tuple[Shard, list[Any]]]: ...
    def close(self) -> None: ...


@dataclass
class Totals:
    """What a run did, and the job's totals (committed shards of earlier runs included)."""

    shards: int = 0
    images: int = 0
    predicted: int = 0
    errors: int = 0
    skipped_shards: int = 0
    run_images: int = 0
    first_commit_s: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, marker: dict[str, Any]) -> None:
        self.shards += 1
        self.images += marker["images"]
        self.predicted += marker["predicted"]
        self.errors += marker["errors"]


def batch_size(options: BatchOptions, predictor: Predictor) -> int:
    """--batch-size, else the plan's (the manifest's deploy section), else the range's opt."""
    deploy = predictor.manifest.get("deploy") or {}
    size = options.batch_size or deploy.get("batch_size") or predictor.batch.opt
    if size not in predictor.batch:
        raise BadOption(f"--batch-size {size} is outside {options.artifact}'s batch range "
                        f"{predictor.batch.min}..{predictor.batch.max}")
    return int(size)


def identity(options: BatchOptions, predictor: Predictor, kinds: list[tuple[str, Path]],
             batch: int) -> jobs.Identity:
    settings = {"top_k": min(options.top, predictor.spec.num_classes), "logits": options.logits,
                "shard_size": options.shard_size, "batch_size": batch}
    return jobs.Identity(jobs.artifact_digest(predictor.manifest),
                         sources.describe(kinds, options.column), settings)


def pending(out: Path, listing: Iterator[Shard], totals: Totals) -> Iterator[Shard]:
    """The shards still to do; committed ones are checked against the listing and counted."""
    last = -1
    for shard in listing:
        last = shard.index
        marker = parts.committed(out, shard)
        if marker is None:
            yield shard
        elif marker["digest"] != shard.digest:
            raise SourceChanged(f"the source changed since {shard.name} was committed (its "
                                f"images, sizes or times differ); rerun with --restart to "
                                "start the job over")
        else:
            totals.count(marker)
            totals.skipped_shards += 1
    beyond = [name for name, m in parts.markers(out) if m["shard"] > last]
    if beyond:
        raise SourceChanged(f"the source holds fewer images than when {beyond[0]} was "
                            "committed; rerun with --restart to start the job over")


def _count_in_background(kinds: list[tuple[str, Path]], column: str | None,
                         bar: tqdm) -> None:
    """The progress bar's total (so it shows an ETA), counted beside the job."""
    def work() -> None:
        try:
            bar.total = sources.count(kinds, column)
            bar.refresh()
        except Exception:  # noqa: BLE001 - only the ETA is lost; the job reports the error
            pass

    threading.Thread(target=work, daemon=True, name="count-source").start()


def stream(options: BatchOptions, engine: Engine, kinds: list[tuple[str, Path]],
           options_out: parts.OutputOptions, totals: Totals) -> None:
    """Every pending shard through the engine and committed, with a progress bar."""
    started = time.perf_counter()
    listing = sources.shards(sources.items(kinds, options.column), options.shard_size)
    with tqdm(unit="img", disable=None if options.progress is None else not options.progress,
              dynamic_ncols=True, smoothing=0.1, desc="resnet-batch") as bar:
        if not bar.disable:
            _count_in_background(kinds, options.column, bar)
        for shard, outcomes in engine.process(pending(options.out, listing, totals)):
            predictions, errors = parts.tables(shard, outcomes, options_out)
            totals.count(parts.commit(options.out, shard, predictions, errors))
            totals.run_images += len(shard.items)
            if totals.first_commit_s is None:
                totals.first_commit_s = time.perf_counter() - started
                totals.extra["first_commit_since_process_start_s"] = process_age()
            bar.n = totals.images
            bar.update(0)
    totals.seconds = time.perf_counter() - started


def process_age() -> float | None:
    """Seconds since this process started (Linux; None elsewhere): the first commit's time as
    the user sees it, imports and the artifact's checks included."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return round(float(Path("/proc/uptime").read_text().split()[0]) - started, 2)
    except (OSError, ValueError, IndexError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def finish(options: BatchOptions, ident: jobs.Identity, totals: Totals,
           predictor: Predictor, started: str) -> Score | None:
    """errors.parquet, the score, and job.json marked complete."""
    parts.gather_errors(options.out)
    scored = job_score(options.out, predictor.class_names)
    rate = totals.run_images / totals.seconds if totals.seconds > 0 else None
    jobs.write_job(options.out, ident, status="complete", started=started, finished=now(),
                   artifact={"path": str(options.artifact), "model": predictor.spec.name,
                             "format": predictor.manifest["format"],
                             "precision": predictor.manifest["precision"],
                             "runtime": predictor.runner.label},
                   counts={"shards": totals.shards, "images": totals.images,
                           "predicted": totals.predicted, "errors": totals.errors},
                   this_run={"engine": options.engine, "images": totals.run_images,
                             "shards_skipped": totals.skipped_shards,
                             "seconds": round(totals.seconds, 3),
                             "images_per_s": round(rate, 1) if rate else None,
                             "first_commit_s": totals.first_commit_s, **totals.extra},
                   evaluation=scored.to_dict() if scored is not None else None)
    return scored


def _engine(options: BatchOptions, predictor: Predictor, threads: Threads, batch: int) -> Any:
    if options.engine == "ray" or options.address:
        from .distributed import RayEngine

        return RayEngine(predictor, options, threads, batch)
    return LocalEngine(predictor, threads, batch)


def run_job(options: BatchOptions, echo: Echo) -> tuple[Totals, Score | None]:
    """Check everything, take the folder, run the pending shards, record the job."""
    kinds = sources.check_sources(options.sources, options.column)
    cores = usable_cores()
    threads = Threads.split(cores, options.workers, options.threads)
    jobs.check_folder(options.out)
    predictor = Predictor.load(options.artifact, options.runtime, threads.runtime)
    batch = batch_size(options, predictor)
    ident = identity(options, predictor, kinds, batch)
    jobs.prepare(options.out)
    held = jobs.lock(options.out)
    try:
        job = jobs.check_folder(options.out)
        resumed = jobs.resume_or_refuse(options.out, ident, job, options.restart)
        removed = parts.drop_uncommitted(options.out)
        started = (job or {}).get("started") if resumed else now()
        jobs.write_job(options.out, ident, status="running", started=started or now())
        echo(f"{printable(options.artifact)}: {printable(predictor.describe())}")
        totals = Totals()
        engine = _engine(options, predictor, threads, batch)
        try:
            engine.start()
            echo(f"{options.engine} engine: {engine.describe()}; batch {batch}, shards of "
                 f"{options.shard_size}"
                 + (f"; resuming ({removed} uncommitted part(s) dropped)" if resumed else ""))
            stream(options, engine, kinds, parts.OutputOptions(
                predictor.class_names, options.top, options.logits), totals)
        finally:
            engine.close()
        return totals, finish(options, ident, totals, predictor, started or now())
    finally:
        held.close()
