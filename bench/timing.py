"""The timing harness: run a callable through warm-up and a timed loop, return raw samples.

It knows nothing about models or backends: it takes a zero-argument callable, a timer for one
iteration and a clock for the stopping rules, so tests inject a fake clock and never sleep. The
loop keeps going until it has at least ``min_iters`` iterations AND at least ``min_time`` seconds
(torch.utils.benchmark / trtexec style); warm-up iterations are run the same way and thrown away.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

Clock = Callable[[], float]


class Timer(Protocol):
    """Times one iteration: ``start()`` just before the work, ``stop()`` -> seconds just after."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> float: ...


class ClockTimer:
    """Host timing with a monotonic clock (``time.perf_counter`` unless a test injects one)."""

    name = "perf_counter"

    def __init__(self, clock: Clock = time.perf_counter):
        self.clock = clock
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = self.clock()

    def stop(self) -> float:
        return self.clock() - self._t0


class CudaEventTimer:
    """GPU timing with CUDA events: synchronise, record start, work, record end, wait for it.

    The synchronise before ``start`` makes sure no earlier work is billed to this iteration; the
    wait after ``stop`` makes every iteration a full latency (trtexec's per-inference latency).
    """

    name = "cuda_event"

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._torch.cuda.synchronize()
        self._start.record()

    def stop(self) -> float:
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1e3


@dataclass(frozen=True)
class TimingConfig:
    """Stopping rules: warm-up and timed loop each run until BOTH their minimums are met.

    With ``steady`` the warm-up also goes on until the latency has settled: the median of the
    last ``steady_window`` iterations is within ``steady_tol`` of the median of the window before
    (at most ``warmup_max_time`` seconds). Freshly started processes are not always at their
    steady speed after a fixed warm-up: on a small shared VM, torch's OpenMP threads sometimes
    need several seconds before they run in parallel (iterations 10-30x slower until then).
    """

    warmup_iters: int = 2
    warmup_time: float = 0.5
    min_iters: int = 10
    min_time: float = 2.0
    steady: bool = True
    steady_window: int = 3
    steady_tol: float = 0.15
    warmup_max_time: float = 30.0

    def __post_init__(self) -> None:
        if self.warmup_iters < 0 or self.warmup_time < 0:
            raise ValueError("warm-up iterations and seconds must be >= 0")
        if self.min_iters < 1 or self.min_time < 0:
            raise ValueError("min_iters must be >= 1 and min_time >= 0")
        if self.steady_window < 1 or self.steady_tol <= 0 or self.warmup_max_time < 0:
            raise ValueError("steady_window >= 1, steady_tol > 0 and warmup_max_time >= 0")

    def settled(self, warm: array) -> bool:
        """The steady rule: the last window's median agrees with the window before it."""
        k = self.steady_window
        if len(warm) < 2 * k:
            return False
        last = float(np.median(warm[-k:]))
        before = float(np.median(warm[-2 * k:-k]))
        return abs(last - before) <= self.steady_tol * last


@dataclass
class Samples:
    """What one measurement produced: per-iteration latencies and the timed loop's wall time."""

    latencies_s: np.ndarray  # float64 seconds, one per timed iteration
    wall_s: float
    warmup_iters: int
    warmup_s: float
    timer: str
    complete: bool = True  # False when the loop was interrupted (Ctrl-C) before its minimums
    warmup_steady: bool | None = None  # the steady rule was met (None: not asked for)

    @property
    def iterations(self) -> int:
        return len(self.latencies_s)


#: called with (phase, iterations so far, seconds so far); phase is "warmup" or "timed"
Progress = Callable[[str, int, float], Any]


def _loop(fn: Callable[[], Any], timer: Timer, clock: Clock, min_iters: int, min_time: float,
          samples: array | None, progress: Progress | None, phase: str,
          more: Callable[[array, float], bool] | None = None) -> tuple[int, float]:
    """Run until both minimums are met (and ``more`` says stop); return (iterations, seconds)."""
    n = 0
    t0 = clock()
    elapsed = 0.0
    while n < min_iters or elapsed < min_time or (more is not None and more(samples, elapsed)):
        timer.start()
        fn()
        dt = timer.stop()
        if samples is not None:
            samples.append(dt)
        n += 1
        elapsed = clock() - t0
        if progress is not None:
            progress(phase, n, elapsed)
    return n, elapsed


def measure(fn: Callable[[], Any], config: TimingConfig, timer: Timer | None = None,
            clock: Clock = time.perf_counter, progress: Progress | None = None) -> Samples:
    """Warm up, then time ``fn`` until ``config``'s minimums are met.

    Warm-up samples are kept only for the steady rule and thrown away.
    Ctrl-C during the timed loop returns what was measured so far with ``complete=False``;
    the caller decides whether to keep it. Ctrl-C during warm-up propagates (nothing to keep).
    """
    timer = timer if timer is not None else ClockTimer(clock)
    warm = array("d")
    steady_rule = config.steady and bool(config.warmup_iters or config.warmup_time)
    more = None
    if steady_rule:  # (no warm-up asked for: none at all)
        def more(w: array, elapsed: float) -> bool:
            return elapsed < config.warmup_max_time and not config.settled(w)
    warm_n, warm_s = _loop(fn, timer, clock, config.warmup_iters, config.warmup_time, warm,
                           progress, "warmup", more)
    steady = config.settled(warm) if steady_rule else None
    samples = array("d")
    t0 = clock()
    try:
        _loop(fn, timer, clock, config.min_iters, config.min_time, samples, progress, "timed")
    except KeyboardInterrupt:
        return Samples(_as_array(samples), clock() - t0, warm_n, warm_s, timer.name,
                       complete=False, warmup_steady=steady)
    return Samples(_as_array(samples), clock() - t0, warm_n, warm_s, timer.name,
                   warmup_steady=steady)


def _as_array(samples: array) -> np.ndarray:
    return np.frombuffer(samples, dtype=np.float64) if len(samples) else np.zeros(0)


def time_once(fn: Callable[[], Any], timer: Timer | None = None,
              clock: Clock = time.perf_counter) -> float:
    """Seconds for one call: used for setup steps and the first inference, kept apart."""
    timer = timer if timer is not None else ClockTimer(clock)
    timer.start()
    fn()
    return timer.stop()
