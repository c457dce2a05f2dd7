"""The choice: from measured candidates to one winner, or a tie settled by the stricter contract.

Pure functions over :class:`Timing` records (no runner, no clock, no file), so the rule can be
tested on synthetic figures. The rule, in order:

1. constraints: a candidate whose p99 exceeds the latency budget, or whose measured accuracy
   drop exceeds the limit, is *over-budget* and cannot win;
2. the fastest eligible candidate by the objective (p50 latency, or images/s) leads;
3. the leader wins outright only if it is ahead of every other leader beyond the spread of the
   per-round ratios: the rounds were interleaved, so each round's ratio was measured under one
   load, and the lower quartile of those ratios must be above 1 (three rounds out of four at
   least agree it is faster). Otherwise they *tie*;
4. within a tie, the stricter precision contract wins (fp32 over fp16 over bf16 over int8: the
   registry's ``STRICTNESS``), then the faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..runtime.registry import STRICTNESS

OBJECTIVES = ("latency", "throughput")


@dataclass(frozen=True)
class Timing:
    """One candidate's figures as the choice needs them."""

    id: str
    precision: str  # the precision it executes at (its contract)
    value: float  # p50 ms (latency) or images/s (throughput)
    p99_ms: float
    rounds: tuple[float, ...] = ()  # the same figure, per interleaved round
    accuracy_drop: float | None = None  # points on the held-out split (None: not measured)


@dataclass
class Choice:
    chosen: str | None
    tie: bool = False
    tied: list[str] = field(default_factory=list)  # the leader's tie group (chosen included)
    runner_up: str | None = None
    ratio: float | None = None  # median per-round advantage of the fastest over the runner-up
    spread: list[float] | None = None  # its interquartile range
    over_budget: dict[str, str] = field(default_factory=dict)
    pareto: list[str] = field(default_factory=list)
    reason: str = ""


def _better(objective: str) -> int:
    return 1 if objective == "throughput" else -1


def advantage(fast: Timing, other: Timing, objective: str) -> list[float]:
    """Per common round, how many times ``fast`` beats ``other`` (>1: faster)."""
    pairs = zip(fast.rounds, other.rounds)
    if objective == "throughput":
        return [a / b for a, b in pairs if a > 0 and b > 0]
    return [b / a for a, b in pairs if a > 0 and b > 0]


def ahead(fast: Timing, other: Timing, objective: str) -> tuple[bool, float | None,
                                                                 list[float] | None]:
    """Whether ``fast`` is ahead of ``other`` beyond the spread of the per-round ratios; the
    median ratio and its interquartile range (None with fewer than 3 common rounds: then it is
    never proven ahead)."""
    ratios = advantage(fast, other, objective)
    if not ratios:
        return False, None, None
    median = float(np.median(ratios))
    if len(ratios) < 3:
        return False, median, None
    q25, q75 = (float(v) for v in np.percentile(ratios, (25, 75)))
    return q25 > 1.0, median, [q25, q75]


def constraint_failure(t: Timing, latency_budget_ms: float | None,
                       max_accuracy_drop: float | None) -> str | None:
    """Why ``t`` cannot be deployed under the constraints (None: it can)."""
    if latency_budget_ms is not None and t.p99_ms > latency_budget_ms:
        return f"p99 {t.p99_ms:.3g} ms > budget {latency_budget_ms:g} ms"
    if max_accuracy_drop is not None and t.accuracy_drop is not None \
            and t.accuracy_drop > max_accuracy_drop:
        return f"accuracy drop {t.accuracy_drop:.2f} points > {max_accuracy_drop:g}"
    return None


def pareto_front(timings: Sequence[Timing], objective: str) -> list[str]:
    """Ids not dominated on (objective, accuracy drop): nobody is at least as fast and at least
    as accurate, and better in one of them. An unmeasured drop counts as 0 (its contract holds
    top-1 agreement on every clear sample)."""
    sign = _better(objective)

    def key(t: Timing) -> tuple[float, float]:
        return -sign * t.value, t.accuracy_drop or 0.0

    front = []
    for t in timings:
        kt = key(t)
        if not any(key(o)[0] <= kt[0] and key(o)[1] <= kt[1] and key(o) != kt
                   for o in timings if o.id != t.id):
            front.append(t.id)
    return front


def choose(timings: Sequence[Timing], objective: str = "latency",
           latency_budget_ms: float | None = None,
           max_accuracy_drop: float | None = None) -> Choice:
    """The choice among ``timings`` (the module docstring's rule)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    over = {t.id: why for t in timings
            if (why := constraint_failure(t, latency_budget_ms, max_accuracy_drop))}
    eligible = sorted((t for t in timings if t.id not in over),
                      key=lambda t: -_better(objective) * t.value)
    front = pareto_front(eligible, objective)
    if not eligible:
        return Choice(None, over_budget=over, pareto=front,
                      reason="no candidate meets the constraints" if timings
                      else "no candidate was measured")
    lead = eligible[0]
    tied = [lead]
    for other in eligible[1:]:
        if not ahead(lead, other, objective)[0]:
            tied.append(other)
    winner = min(tied, key=lambda t: (STRICTNESS.index(t.precision)
                                      if t.precision in STRICTNESS else len(STRICTNESS),
                                      -_better(objective) * t.value))
    runner_up = eligible[1] if len(eligible) > 1 else None
    _, ratio, spread = ahead(lead, runner_up, objective) if runner_up else (True, None, None)
    if runner_up is None:
        reason = "the only candidate that meets the constraints"
    elif len(tied) == 1:
        reason = (f"ahead of {runner_up.id} by {ratio:.3f}x (per-round IQR "
                  f"{spread[0]:.3f}-{spread[1]:.3f})" if spread else f"ahead of {runner_up.id}")
    else:
        rule = (f"the strictest contract ({winner.precision}) wins"
                if len({t.precision for t in tied}) > 1 else "one contract: the fastest wins")
        reason = (f"tie: {', '.join(t.id for t in tied)} are not apart beyond the spread of "
                  f"their per-round ratios; {rule}")
    return Choice(winner.id, tie=len(tied) > 1, tied=[t.id for t in tied],
                  runner_up=runner_up.id if runner_up else None, ratio=ratio, spread=spread,
                  over_budget=over, pareto=front, reason=reason)


__all__ = ["OBJECTIVES", "Choice", "Timing", "advantage", "ahead", "choose",
           "constraint_failure", "pareto_front"]
