"""Statistics over raw latency samples: percentiles, spread, throughput and a noise verdict.

Percentiles are numpy's default (linear interpolation between closest ranks), so they match what
anyone recomputing them from the samples gets. Throughput is images per second of the timed loop's
wall time (batch * iterations / wall), which includes the harness's own per-iteration cost; that
cost is measured and reported separately (scripts/bench_overhead.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class NoiseRule:
    """A run is flagged noisy when its spread says one number would mislead.

    ``cv_max``: standard deviation over mean; 10% is where repeated runs of the same case on a
    quiet machine stop agreeing to a few percent. ``tail_max``: p99 over p50; above 1.5 the tail is
    dominated by something other than the model (preemption, clock changes, other processes).
    """

    cv_max: float = 0.10
    tail_max: float = 1.5

    def to_dict(self) -> dict[str, float]:
        return {"cv_max": self.cv_max, "tail_max": self.tail_max}


def summarize(latencies_s: Sequence[float], batch_size: int, wall_s: float,
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
