"""Screening and confirmation: the candidates timed by the benchmark harness, interleaved.

Every candidate becomes a :class:`bench.candidates.Candidate` whose runner is the artifact loaded on
its runtime, at its precision, with its settings (:func:`export.runtime.load_artifact`, the
same loader ``resnet-bench --artifacts`` and prediction use); :func:`bench.sweep.sweep` times
them in interleaved rounds at the plan's batch size, so load that comes and goes on a shared
machine hits every candidate alike. Screening gives every survivor a short slice of the time
box in 3 rounds; confirmation gives the leaders most of what is left in 7 rounds, whose
per-round ratios decide whether the winner is ahead (:mod:`.choose`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.candidates import Candidate, Models, make_input
from bench.load import free_threads
from bench.model_backends import EAGER
from bench.stats import NoiseRule
from bench.sweep import SweepSettings, sweep
from bench.timing import ClockTimer, TimingConfig, warm_up

from ..core.artifact import read_manifest
from ..core.models import ModelSpec
from ..core.weights import source_from_manifest
from ..runtime.base import Runner
from ..runtime.loader import load_artifact
from ..runtime.torch_runner import TorchRunner
from .choose import Timing
from .space import PlanCandidate

SCREEN_ROUNDS = 3
CONFIRM_ROUNDS = 7
LEADERS = 3
#: seconds a candidate costs besides its timed slices (runner setup, compile, warm-up), for
#: sharing the time box out
OVERHEAD_S = 3.0
#: seconds between two candidates' slices: the pools of the one before stop spinning (GNU
#: OpenMP's default spin is of the order of ten milliseconds; ONNX Runtime's shorter)
SWITCH_PAUSE_S = 0.05
#: the eager baseline's warm-up: resnet-bench's defaults (until steady, at most 30 s)
BASELINE_WARMUP = TimingConfig(warmup_iters=2, warmup_time=0.5, warmup_max_time=30.0)
#: the row figures plan.json keeps of a timing row
ROW_KEYS = ("timing", "iterations", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "cv",
            "throughput_ips", "rounds", "round_p50_ms", "round_spread", "flags", "flag_reasons",
            "effective_precision", "setup_s", "first_infer_ms", "warmup_steady", "gflops",
            "load_average_before", "load_average_after")


@dataclass(frozen=True)
class Phase:
    """One timing phase: its name, rounds and timed seconds per candidate."""

    name: str
    rounds: int
    seconds: float

    def config(self) -> TimingConfig:
        return TimingConfig(warmup_iters=2, warmup_time=min(0.5, self.seconds / 2),
                            min_iters=2 * self.rounds, min_time=self.seconds,
                            warmup_max_time=max(1.0, 2 * self.seconds), rounds=self.rounds,
                            switch_pause=SWITCH_PAUSE_S)


def phases(remaining_s: float, screened: int) -> tuple[Phase, Phase]:
    """Share what is left of the time box: about 45% to screening, 35% to confirmation (the
    rest covers setup and reports); never below a few rounds' worth."""
    screened = max(1, screened)
    screen = (0.45 * remaining_s - OVERHEAD_S * screened) / screened
    confirm = (0.35 * remaining_s - OVERHEAD_S * LEADERS) / LEADERS
    return (Phase("screen", SCREEN_ROUNDS, min(5.0, max(0.3, screen))),
            Phase("confirm", CONFIRM_ROUNDS, min(60.0, max(0.7, confirm))))


def _bench_candidate(c: PlanCandidate, spec: ModelSpec, objective: str) -> Candidate:
    folder = Path(str(c.artifact))
    manifest = read_manifest(folder)
    rng = manifest["batch_range"]

    def prepare() -> tuple[Runner, dict[str, Any]]:
        return load_artifact(folder, runtime=c.runtime, precision=c.precision, deploy=False,
                             **c.settings), {}

    return Candidate(c.runtime, c.precision, spec, prepare, batch_range=(rng["min"], rng["max"]),
                     artifact=str(folder / manifest["artifact"]), extra={"plan_id": c.id},
                     throughput=(objective == "throughput"
                                 and c.settings.get("performance_hint") == "THROUGHPUT"))


def baseline(folder: Path, spec: ModelSpec, batch: int = 1) -> tuple[PlanCandidate, Candidate]:
    """Eager PyTorch FP32 on the artifact's own weights: the row every speed-up is against,
    timed as resnet-bench times it: on the free cores (:func:`run_phase`) and warmed up until
    its latency settles (torch's OpenMP threads may need seconds to reach steady speed)."""
    plan = PlanCandidate(EAGER, "fp32", status="baseline",
                         reason="eager PyTorch, the reference every speed-up is measured against")

    def prepare() -> tuple[Runner, dict[str, Any]]:
        runner = TorchRunner(source_from_manifest(read_manifest(folder), folder).model, "cpu")
        runner.activate()
        x = make_input(batch, spec, 0)
        _n, warm_s, steady = warm_up(lambda: runner.infer(x), BASELINE_WARMUP, ClockTimer())
        return runner, {"baseline_warmup_s": warm_s, "baseline_warmup_steady": steady}

    return plan, Candidate(EAGER, "fp32", spec, prepare, extra={"plan_id": plan.id})


def _pick_row(rows: list[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    wanted = "throughput" if objective == "throughput" else "e2e"
    return next((r for r in rows if r["timing"] == wanted), None) or \
        next((r for r in rows if r["timing"] == "e2e"), None)


def objective_value(row: dict[str, Any], objective: str) -> tuple[float, tuple[float, ...]]:
    """The objective's figure of a row and its per-round values. Throughput per round is
    requests in flight x batch / the round's median latency (Little's law), 1 request for a
    synchronous loop."""
    if objective == "latency":
        return row["p50_ms"], tuple(row.get("round_p50_ms") or ())
    inflight = (row.get("throughput_mode") or {}).get("requests", 1) * row["batch_size"]
    return row["throughput_ips"], tuple(inflight * 1e3 / m for m in row.get("round_p50_ms") or ()
                                        if m)


def timing_of(c: PlanCandidate, phase: str, objective: str,
              accuracy_drop: float | None) -> Timing | None:
    row = c.confirm if phase == "confirm" else c.screen
    if not row:
        return None
    value, rounds = row["objective"], tuple(row["objective_rounds"])
    return Timing(c.id, c.precision, value, row["p99_ms"], rounds, accuracy_drop)


def run_phase(cands: list[PlanCandidate], extra: list[tuple[PlanCandidate, Candidate]],
              spec: ModelSpec, batch: int, phase: Phase, objective: str, cores: int,
              echo: Callable[[str], None]) -> bool:
    """Time ``cands`` (and ``extra`` such as the eager baseline) interleaved; store each one's
    row in ``c.screen`` or ``c.confirm``. Returns False when interrupted (Ctrl-C, SIGTERM,
    SIGHUP)."""
    pairs = [(c, _bench_candidate(c, spec, objective)) for c in cands] + list(extra)
    doc: dict[str, Any] = {"results": [], "skipped": []}
    previous = torch.get_num_threads()
    # eager torch on the free cores, as resnet-bench runs it: its OpenMP threads spin against
    # other load for the cores, and on a busy machine collapse (5.6 s against ~0.1 s measured)
    threads = free_threads()[0] if extra else cores
    if threads < cores:
        echo(f"  [{phase.name}] the eager baseline runs on {threads} thread(s): the machine is "
             "busy (as resnet-bench does)")
    torch.set_num_threads(threads)
    try:
        sweep(doc, [b for _, b in pairs],
              SweepSettings(phase.config(), [batch], 0, threads, NoiseRule()), Models(0).macs)
    finally:
        torch.set_num_threads(previous)
    for plan, cand in pairs:
        rows = [r for r in doc["results"] if r.get("plan_id") == plan.id]
        row = _pick_row(rows, objective)
        if row is None:
            skip = next((s for s in doc["skipped"] if s["backend"] == cand.backend
                         and s["precision"] == cand.precision and s["artifact"] == cand.artifact),
                        None)
            if plan.status != "baseline" and not doc.get("interrupted"):
                plan.status, plan.reason = "skipped", (skip or {}).get("reason", "not measured")
            continue
        value, rounds = objective_value(row, objective)
        kept = {k: row.get(k) for k in ROW_KEYS}
        kept.update({"batch_size": batch, "objective": value, "objective_rounds": list(rounds),
                     "phase": phase.name, "seconds_per_candidate": phase.seconds})
        if plan.status == "baseline":
            kept["torch_threads"] = threads
        if "runtime_facts" in row:  # the settings the runtime says it ran with
            kept["runtime_facts"] = {k: v for k, v in row["runtime_facts"].items() if k in
                                     ("performance_hint", "num_streams", "inference_num_threads",
                                      "effective_precision")}
        setattr(plan, phase.name, kept)
        unit = "ms p50" if objective == "latency" else "images/s"
        echo(f"  [{phase.name}] {plan.id}: {value:.4g} {unit}, p99 {row['p99_ms']:.4g} ms"
             + (f"  {' '.join(row['flags'])}" if row.get("flags") else ""))
    return not doc.get("interrupted")


__all__ = [
    "CONFIRM_ROUNDS",
    "LEADERS",
    "SCREEN_ROUNDS",
    "Phase",
    "baseline",
    "objective_value",
    "phases",
    "run_phase",
    "timing_of",
]
