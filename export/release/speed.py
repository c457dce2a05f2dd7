"""Speed of the candidate against the release, timed side by side on this runner.

Both artifacts run through the benchmark's harness (:func:`bench.sweep.sweep`): at each batch
size they are timed in interleaved rounds, so load that comes and goes on a shared CI runner hits
both alike, and each round gives one ratio, candidate over release p50, measured under one load.
The planner's rule decides (the lower quartile of the per-round ratios above a bound: three
rounds in four agree):

- FAIL where the lower quartile is above 1 + max-slowdown: the slowdown is real and too big;
- PASS where the upper quartile is at most 1 + max-slowdown: it is within the limit;
- otherwise "not resolvable on this runner": the rounds disagree across the limit. A number
  stored from another run, on another machine state, is never the comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.candidates import Candidate, Models
from bench.stats import NoiseRule, ratio_spread, round_ratios
from bench.sweep import SweepSettings, sweep
from bench.timing import TimingConfig

from ..core.artifact import read_manifest
from ..core.hardware import usable_cores
from ..core.models import ModelSpec
from ..core.shapes import BatchRange
from ..runtime.base import Runner
from ..runtime.loader import load_artifact
from .checks import Check, Status

Echo = Callable[[str], None]
#: the figures of a timing row each check keeps
ROW_KEYS = ("label", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_ips", "iterations",
            "round_p50_ms", "round_spread", "flags", "flag_reasons", "effective_precision",
            "load_average_before", "load_average_after")


@dataclass(frozen=True)
class SpeedRequest:
    candidate: Path
    release: Path
    max_slowdown: float  # percent
    rounds: int
    seconds: float
    batches: tuple[tuple[str, int], ...]  # (check kind, batch size): latency, throughput


def _candidate(role: str, folder: Path) -> Candidate:
    manifest = read_manifest(folder)
    rng = manifest["batch_range"]

    def prepare() -> tuple[Runner, dict[str, Any]]:
        return load_artifact(folder), {}

    return Candidate(role, manifest["precision"],
                     ModelSpec.from_dict(manifest["model"]), prepare,
                     batch_range=(rng["min"], rng["max"]),
                     artifact=str(folder / manifest["artifact"]), extra={"gate_role": role})


def default_batches(release: Path, latency_batch: int, throughput_batch: int | None
                    ) -> tuple[tuple[str, int], ...]:
    """Latency at ``latency_batch``; throughput at ``throughput_batch`` or the release's opt
    batch (what it was built to serve), where that differs."""
    opt = BatchRange.from_dict(read_manifest(release)["batch_range"]).opt
    big = throughput_batch or opt
    return (("latency", latency_batch),) + ((("throughput", big),) if big != latency_batch
                                            else ())


def timing_config(rounds: int, seconds: float) -> TimingConfig:
    """``seconds`` of timed work per model and batch size, cut into ``rounds`` slices of at
    least 3 iterations. Every slice starts with one untimed iteration for both models alike:
    the harness skips it for runners faster than 0.1 s, and two models either side of that
    line would be treated differently at every switch (a bias in every round's ratio)."""
    return TimingConfig(warmup_iters=2, warmup_time=min(0.5, seconds / 4), min_iters=3 * rounds,
                        min_time=seconds, warmup_max_time=max(2.0, seconds), rounds=rounds,
                        round_warmup=1, round_warmup_max=1e9)


def measure(req: SpeedRequest, echo: Echo) -> dict[str, Any]:
    """Both artifacts timed at every batch size, interleaved: the benchmark's document."""
    doc: dict[str, Any] = {"results": [], "skipped": []}
    cands = [_candidate("release", req.release), _candidate("candidate", req.candidate)]
    cores = usable_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(cores)
    echo(f"timing candidate and release in {req.rounds} interleaved rounds at batch "
         f"{', '.join(str(b) for _, b in req.batches)} ({req.seconds:g} s each)")
    try:
        sweep(doc, cands, SweepSettings(timing_config(req.rounds, req.seconds),
                                        sorted({b for _, b in req.batches}), 0, cores,
                                        NoiseRule()), Models(0).macs)
    finally:
        torch.set_num_threads(previous)
    if doc.get("interrupted"):
        raise KeyboardInterrupt
    return doc


def verdict(ratios: list[float], limit: float) -> tuple[Status, list[float] | None]:
    """The planner's rule on per-round slowdowns (candidate / release p50)."""
    iqr = ratio_spread(ratios)
    if iqr is None:
        return Status.UNRESOLVED, None
    if iqr[0] > limit:
        return Status.FAILED, iqr
    if iqr[1] <= limit:
        return Status.PASSED, iqr
    return Status.UNRESOLVED, iqr


def _row(doc: dict[str, Any], role: str, batch: int) -> dict[str, Any] | None:
    return next((r for r in doc["results"] if r.get("gate_role") == role
                 and r["batch_size"] == batch and r["timing"] == "e2e"), None)


def judge(check: Check, doc: dict[str, Any], kind: str, batch: int, max_slowdown: float) -> None:
    """Fill one speed check from the sweep's rows."""
    rows = {role: _row(doc, role, batch) for role in ("release", "candidate")}
    missing = [role for role, row in rows.items() if row is None]
    if missing:
        reasons = [s["reason"] for s in doc["skipped"]]
        check.status = Status.ERROR
        check.message = (f"the {' and '.join(missing)} could not be timed at batch {batch}"
                         f"{': ' + reasons[0] if reasons else ''}")
        return
    rel, cand = rows["release"], rows["candidate"]
    assert rel is not None and cand is not None
    ratios = round_ratios(cand["round_p50_ms"], rel["round_p50_ms"])
    limit = 1 + max_slowdown / 100
    status, iqr = verdict(ratios, limit)
    median = float(np.median(ratios)) if ratios else None
    check.properties.update(_properties(rel, cand, batch, ratios, iqr, limit, median))
    what = "p50 latency" if kind == "latency" else "time per batch"
    spread = (f"per-round ratios {iqr[0]:.3f}-{iqr[1]:.3f} (interquartile) over {len(ratios)} "
              "rounds" if iqr else f"{len(ratios)} common rounds (3 needed)")
    figures = (f"candidate {cand['p50_ms']:.3f} ms vs release {rel['p50_ms']:.3f} ms {what} at "
               f"batch {batch} ({cand['throughput_ips']:.1f} vs {rel['throughput_ips']:.1f} "
               f"images/s); median ratio {median or float('nan'):.3f}x, {spread}; allowed "
               f"{limit:.3f}x ({max_slowdown:g}% slower)")
    check.status = status
    check.message = {
        Status.FAILED: f"{figures}: slower beyond the limit in at least 3 rounds of 4",
        Status.PASSED: f"{figures}: within the limit in at least 3 rounds of 4",
    }.get(status, f"{figures}: not resolvable on this runner (the rounds disagree across the "
                  "limit; more --rounds/--seconds or a quieter runner can resolve it)")
    flags = sorted({f for r in (rel, cand) for f in r.get("flags") or []})
    if flags:
        check.message += f" [{' '.join(flags)}]"


def _properties(rel: dict[str, Any], cand: dict[str, Any], batch: int, ratios: list[float],
                iqr: list[float] | None, limit: float, median: float | None) -> dict[str, Any]:
    return {"batch_size": batch, "release_p50_ms": rel["p50_ms"],
            "candidate_p50_ms": cand["p50_ms"], "release_images_per_s": rel["throughput_ips"],
            "candidate_images_per_s": cand["throughput_ips"], "ratio_median": median,
            "ratio_q25": iqr[0] if iqr else None, "ratio_q75": iqr[1] if iqr else None,
            "ratio_limit": limit, "round_ratios": [round(r, 4) for r in ratios],
            "rounds": len(ratios),
            "flags": sorted({f for r in (rel, cand) for f in r.get("flags") or []}),
            "release": {k: rel.get(k) for k in ROW_KEYS},
            "candidate": {k: cand.get(k) for k in ROW_KEYS}}


def speed_checks(req: SpeedRequest, echo: Echo) -> list[Check]:
    """One check per (kind, batch): both timed in one sweep."""
    checks = [Check(f"{kind} at batch {batch}", "speed") for kind, batch in req.batches]
    doc = measure(req, echo)
    for check, (kind, batch) in zip(checks, req.batches):
        judge(check, doc, kind, batch, req.max_slowdown)
    return checks


__all__ = ["SpeedRequest", "default_batches", "judge", "measure", "speed_checks",
           "timing_config", "verdict"]
