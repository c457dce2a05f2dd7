"""How busy the machine was while something was measured: load average and other processes' CPU.

A :class:`CpuSnapshot` holds the 1/5/15-minute load average, the machine's busy CPU time from the
first line of ``/proc/stat`` (user, nice, system, irq, softirq and steal: steal is time the
hypervisor gave this VM's CPUs to someone else) and this process's own CPU time. Between two
snapshots, :func:`others_cores` is the CPU the rest of the machine used, in cores: the machine's
busy time minus this process's, over the wall time. Linux only; elsewhere the figures are None
and nothing is flagged on them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from export.core.hardware import usable_cores

PROC_STAT = "/proc/stat"
#: fields of the "cpu" line of /proc/stat that count as busy (guest time is already in user)
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system [idle iowait] irq softirq steal


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float  # time.monotonic()
    load: tuple[float, float, float] | None
    busy_s: float | None  # the machine's busy CPU seconds since boot (all CPUs)
    self_s: float  # this process's CPU seconds (user + system, all its threads)


def _busy_seconds(text: str | None = None) -> float | None:
    try:
        if text is None:
            with open(PROC_STAT, encoding="ascii", errors="replace") as fh:
                text = fh.readline()
        fields = text.split()
        if not fields or fields[0] != "cpu":
            return None
        values = [int(v) for v in fields[1:]]
        return sum(values[i] for i in _BUSY_FIELDS if i < len(values)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None


def snapshot() -> CpuSnapshot:
    try:
        load = tuple(round(v, 2) for v in os.getloadavg())
    except (AttributeError, OSError):
        load = None
    times = os.times()
    return CpuSnapshot(time.monotonic(), load,  # type: ignore[arg-type]
                       _busy_seconds(), times.user + times.system)


def others_cores(before: CpuSnapshot, after: CpuSnapshot) -> float | None:
    """Cores' worth of CPU that everything but this process used between the two snapshots."""
    wall = after.wall - before.wall
    if before.busy_s is None or after.busy_s is None or wall <= 0:
        return None
    others = (after.busy_s - before.busy_s) - (after.self_s - before.self_s)
    return max(0.0, others / wall)


def busy_verdict(before: CpuSnapshot, after: CpuSnapshot, cores: int,
                 round_others: list[float | None], busy_others: float) -> dict[str, Any]:
    """The facts a row records about the machine's load, and the BUSY verdict with its reasons."""
    others = others_cores(before, after)
    reasons = []
    loads = [s.load[0] for s in (before, after) if s.load is not None]
    if loads and max(loads) > cores:
        reasons.append(f"load average {max(loads):.2f} > {cores} usable cores")
    if others is not None and others > busy_others * cores:
        reasons.append(f"other processes used {others:.2f} cores "
                       f"(> {busy_others:.0%} of {cores})")
    known = [v for v in round_others if v is not None]
    return {
        "load_before": list(before.load) if before.load else None,
        "load_after": list(after.load) if after.load else None,
        "others_cores": round(others, 3) if others is not None else None,
        "round_others_cores": [round(v, 3) if v is not None else None for v in round_others],
        "others_cores_max": round(max(known), 3) if known else None,
        "busy": bool(reasons),
        "busy_reasons": reasons,
    }


def free_threads(window_s: float = 1.0) -> tuple[int, str | None]:
    """Threads the machine can give: the usable cores less what other processes used over
    ``window_s`` (at least 1), and a line saying so where that is fewer than the cores. Eager
    torch's OpenMP threads spin while they wait for a core, so more threads than free cores
    collapse it (the issue's 674 ms at batch 8 against 6.7 ms at batch 1)."""
    cores = usable_cores()
    before = snapshot()
    time.sleep(window_s)
    others = others_cores(before, snapshot())
    if others is None:
        return cores, None
    free = max(1, min(cores, int(cores - others + 0.5)))
    if free >= cores:
        return cores, None
    return free, (f"the machine is busy (other processes used {others:.1f} of {cores} cores): "
                  f"{free} thread(s), so eager torch's threads do not spin against them "
                  "(--threads to choose)")
