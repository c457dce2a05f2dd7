"""Statistics over raw latency samples: percentiles, spread, throughput and a noise verdict.

Percentiles are numpy's default (linear interpolation between closest ranks), so they match what
anyone recomputing them from the samples gets. Throughput is images per second of the timed loop's
wall time (batch * iterations / wall), which includes the harness's own per-iteration cost; that
cost is measured and reported separately (scripts/bench_overhead.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .model_backends import EAGER

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class NoiseRule:
    """When one number would mislead: the flags a row can carry.

    NOISY - ``cv_max``: standard deviation over mean; 10% is where repeated runs of the same case
    on a quiet machine stop agreeing to a few percent. ``tail_max``: p99 over p50; above 1.5 the
    tail is dominated by something other than the model (preemption, clock changes, other
    processes).

    ROUNDS-DISAGREE - ``rounds_max``: the largest over the smallest of a row's per-round medians
    (interleaved runs); above 1.3 the speed changed during the run by more than any backend
    difference worth reporting within 30%.

    BUSY - the machine had other work: the 1-minute load average before or after the row's rounds
    above the usable cores (this run's own threads count too, so above the cores means something
    else wanted a CPU as well), or other processes (and the hypervisor's steal time) took more than
    ``busy_others`` of the usable cores while it was measured.
    """

    cv_max: float = 0.10
    tail_max: float = 1.5
    rounds_max: float = 1.3
    busy_others: float = 0.25

    def to_dict(self) -> dict[str, float]:
        return {"cv_max": self.cv_max, "tail_max": self.tail_max, "rounds_max": self.rounds_max,
                "busy_others": self.busy_others}


def summarize(latencies_s: Sequence[float] | np.ndarray, batch_size: int, wall_s: float,
              rule: NoiseRule = NoiseRule()) -> dict[str, Any]:
    """Milliseconds for min/mean/percentiles/max, CV, images/s and the noise verdict."""
    if len(latencies_s) == 0:
        raise ValueError("no samples to summarise")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    pct = np.percentile(ms, PERCENTILES)
    out: dict[str, Any] = {
        "iterations": int(ms.size),
        "min_ms": float(ms.min()),
        "mean_ms": mean,
        **{f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, pct)},
        "max_ms": float(ms.max()),
        "std_ms": std,
        "cv": std / mean if mean > 0 else 0.0,
        "wall_s": float(wall_s),
        "throughput_ips": batch_size * ms.size / wall_s if wall_s > 0 else float("nan"),
    }
    reasons = []
    if out["cv"] > rule.cv_max:
        reasons.append(f"CV {out['cv']:.1%} > {rule.cv_max:.0%}")
    if out["p50_ms"] > 0 and out["p99_ms"] / out["p50_ms"] > rule.tail_max:
        reasons.append(f"p99/p50 {out['p99_ms'] / out['p50_ms']:.2f} > {rule.tail_max:g}")
    out["noisy"] = bool(reasons)
    out["noise_reasons"] = reasons
    return out


def round_medians_ms(rounds: Sequence[Sequence[float] | np.ndarray]) -> list[float]:
    """Each (non-empty) round's median latency in milliseconds."""
    return [float(np.median(r)) * 1e3 for r in rounds if len(r)]


def round_summary(rounds: Sequence[Sequence[float] | np.ndarray], rule: NoiseRule = NoiseRule()) \
        -> dict[str, Any]:
    """Per-round medians, their spread (largest / smallest) and the ROUNDS-DISAGREE verdict."""
    medians = round_medians_ms(rounds)
    spread = max(medians) / min(medians) if len(medians) > 1 and min(medians) > 0 else None
    disagree = spread is not None and spread > rule.rounds_max
    return {"rounds": len(medians), "round_p50_ms": medians, "round_spread": spread,
            "rounds_disagree": disagree,
            "rounds_reason": (f"round medians {spread:.2f}x apart > {rule.rounds_max:g}"
                              if disagree else None)}


def round_ratios(base_ms: Sequence[float], other_ms: Sequence[float]) -> list[float]:
    """Per round, base's round median / other's round median: a speed-up that each round
    measures under one load; rounds one of them lacks are left out."""
    return [b / o for b, o in zip(base_ms, other_ms) if b and o]


def round_ratio(base_ms: Sequence[float], other_ms: Sequence[float]) -> float | None:
    """The median of :func:`round_ratios` (None without a common round)."""
    ratios = round_ratios(base_ms, other_ms)
    return float(np.median(ratios)) if ratios else None


def ratio_spread(ratios: Sequence[float]) -> list[float] | None:
    """The interquartile range [25th, 75th percentile] of per-round ratios: how far the rounds
    agree on a speed-up (None for fewer than 3 rounds)."""
    if len(ratios) < 3:
        return None
    return [float(v) for v in np.percentile(ratios, (25, 75))]


#: A per-round speed-up whose interquartile range spans more than this (largest / smallest) is
#: not quotable: the rounds disagree on it by more than half again.
QUOTABLE_SPREAD = 1.5
#: Eager torch whose per-image latency at a larger batch is this many times its smallest batch's
#: has collapsed: its OpenMP threads spin against other load for the cores (measured on a busy
#: 2-core machine: 674.69 ms at batch 8 against 6.72 ms at batch 1, 12.5x per image).
COLLAPSE_FACTOR = 3.0


def quotable(iqr: Sequence[float] | None) -> bool:
    """Whether a per-round speed-up with this interquartile range may be quoted as one figure."""
    return iqr is None or (iqr[0] > 0 and iqr[1] / iqr[0] <= QUOTABLE_SPREAD)


def thread_collapse(rows: list[dict]) -> list[dict]:
    """Flag eager torch CPU latency rows whose per-image time collapsed against their smallest
    batch (THREADS-COLLAPSE, with the reason); returns the rows flagged."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("backend") == EAGER and r.get("device") == "cpu" and r.get("timing") != \
                "throughput" and r.get("p50_ms"):
            key = (r.get("model_label"), r.get("precision"), bool(r.get("channels_last")))
            groups.setdefault(key, []).append(r)
    flagged = []
    for group in groups.values():
        base = min(group, key=lambda r: r["batch_size"])
        per_image = base["p50_ms"] / base["batch_size"]
        for r in group:
            factor = (r["p50_ms"] / r["batch_size"]) / per_image
            if r is base or factor <= COLLAPSE_FACTOR:
                continue
            r.setdefault("flags", [])
            r.setdefault("flag_reasons", [])
            if "THREADS-COLLAPSE" not in r["flags"]:
                r["flags"].append("THREADS-COLLAPSE")
                r["flag_reasons"].append(
                    f"{factor:.1f}x batch {base['batch_size']}'s time per image: torch's "
                    f"{r.get('threads')} thread(s) outnumber the free cores (try --threads 1 "
                    "or a quiet machine)")
            flagged.append(r)
    return flagged
