"""The timing harness: run callables through warm-up and timed loops, return raw samples.

It knows nothing about models or backends: it takes zero-argument callables, a timer for one
iteration and a clock for the stopping rules, so tests inject a fake clock and never sleep. A timed
loop keeps going until it has at least ``min_iters`` iterations AND at least ``min_time`` seconds
(torch.utils.benchmark / trtexec style); warm-up iterations are run the same way and thrown away.

Two ways to time several things that are to be compared:

- :func:`measure`, one after the other: each gets its whole timed loop in turn. On a machine whose
  load changes during the run, a load step between two of them shows up as a speed ratio.
- :func:`measure_rounds`, interleaved: every contender warms up, then ``rounds`` rounds each give
  every contender one slice of the timed loop (``min_iters / rounds`` iterations and
  ``min_time / rounds`` seconds, after ``round_warmup`` untimed iterations for contenders faster
  than ``round_warmup_max`` per iteration), in an order that rotates from round to round. Load
  that comes and goes hits all of them alike, each round yields one comparable set of medians,
  and a row's statistics pool its rounds.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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
    rounds: int = 1
    #: untimed iterations at the start of every slice of an interleaved run: what ran before may
    #: still have threads spinning and the caches hold another model...
    round_warmup: int = 1
    #: ...only for contenders faster than this per iteration (their warm-up's median): a switch
    #: costs a few milliseconds at most, so for slower ones the untimed iteration would cost more
    #: time than the error it avoids
    round_warmup_max: float = 0.1
    #: seconds slept before a slice that follows another contender's: the thread pools of what
    #: ran before (torch's OpenMP workers, ONNX Runtime's intra-op pool) spin for a while after
    #: their last call and would take cores from the next contender (0: none)
    switch_pause: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_iters < 0 or self.warmup_time < 0:
            raise ValueError("warm-up iterations and seconds must be >= 0")
        if self.min_iters < 1 or self.min_time < 0:
            raise ValueError("min_iters must be >= 1 and min_time >= 0")
        if self.steady_window < 1 or self.steady_tol <= 0 or self.warmup_max_time < 0:
            raise ValueError("steady_window >= 1, steady_tol > 0 and warmup_max_time >= 0")
        if self.rounds < 1 or self.round_warmup < 0 or self.round_warmup_max < 0 \
                or self.switch_pause < 0:
            raise ValueError("rounds must be >= 1; round_warmup, round_warmup_max and "
                             "switch_pause >= 0")

    def to_dict(self) -> dict[str, Any]:
        """The settings as bench.json records them (``steady`` as ``steady_warmup``;
        ``switch_pause`` only where set)."""
        return {"warmup_iters": self.warmup_iters, "warmup_time": self.warmup_time,
                "min_iters": self.min_iters, "min_time": self.min_time,
                "steady_warmup": self.steady, "steady_window": self.steady_window,
                "steady_tol": self.steady_tol, "warmup_max_time": self.warmup_max_time,
                "rounds": self.rounds, "round_warmup": self.round_warmup,
                "round_warmup_max": self.round_warmup_max,
                **({"switch_pause": self.switch_pause} if self.switch_pause else {})}

    @property
    def slice_iters(self) -> int:
        """Timed iterations per round: the rounds together reach ``min_iters``."""
        return -(-self.min_iters // self.rounds)

    @property
    def slice_time(self) -> float:
        """Timed seconds per round: the rounds together reach ``min_time``."""
        return self.min_time / self.rounds

    def discard(self, typical_s: float | None) -> int:
        """Untimed iterations before a slice of a contender this fast per iteration (None: not
        known)."""
        return self.round_warmup if typical_s is None or typical_s < self.round_warmup_max \
            else 0

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
    #: interleaved runs: each round's latencies (their concatenation is ``latencies_s``)
    rounds: list[np.ndarray] | None = None
    round_walls: list[float] | None = None
    error: BaseException | None = None  # what stopped this contender (it was dropped)

    @property
    def iterations(self) -> int:
        return len(self.latencies_s)


#: called with (phase, iterations so far, seconds so far); phase is "warmup" or "timed"
Progress = Callable[[str, int, float], Any]


@dataclass(frozen=True)
class _Until:
    """When a timing loop may stop: both minimums met, and ``more`` (given the samples so far
    and the seconds elapsed) no longer asks for more."""

    min_iters: int
    min_time: float
    more: Callable[[array, float], bool] | None = None


def _loop(fn: Callable[[], Any], timer: Timer, clock: Clock, until: _Until,
          samples: array | None, progress: Progress | None, phase: str) -> tuple[int, float]:
    """Run until ``until`` says stop; return (iterations, seconds)."""
    n = 0
    t0 = clock()
    elapsed = 0.0
    more = until.more
    while n < until.min_iters or elapsed < until.min_time or (
            more is not None and samples is not None and more(samples, elapsed)):
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


def warm_up(fn: Callable[[], Any], config: TimingConfig, timer: Timer,
            clock: Clock = time.perf_counter, progress: Progress | None = None,
            warm: array | None = None) -> tuple[int, float, bool | None]:
    """The warm-up of ``config``: (iterations, seconds, steady); its samples are thrown away.

    With the steady rule it also goes on until the latency has settled (None: not asked for,
    or no warm-up at all). ``warm`` receives the warm-up's latencies when given.
    """
    warm = array("d") if warm is None else warm
    steady_rule = config.steady and bool(config.warmup_iters or config.warmup_time)
    more = None
    if steady_rule:  # (no warm-up asked for: none at all)
        def more(w: array, elapsed: float) -> bool:
            return elapsed < config.warmup_max_time and not config.settled(w)
    until = _Until(config.warmup_iters, config.warmup_time, more)
    n, seconds = _loop(fn, timer, clock, until, warm, progress, "warmup")
    return n, seconds, (config.settled(warm) if steady_rule else None)


def measure(fn: Callable[[], Any], config: TimingConfig, timer: Timer | None = None,
            clock: Clock = time.perf_counter, progress: Progress | None = None) -> Samples:
    """Warm up, then time ``fn`` until ``config``'s minimums are met (one contender, in one go).

    Warm-up samples are kept only for the steady rule and thrown away.
    Ctrl-C during the timed loop returns what was measured so far with ``complete=False``;
    the caller decides whether to keep it. Ctrl-C during warm-up propagates (nothing to keep).
    """
    timer = timer if timer is not None else ClockTimer(clock)
    warm_n, warm_s, steady = warm_up(fn, config, timer, clock, progress)
    samples = array("d")
    t0 = clock()
    try:
        _loop(fn, timer, clock, _Until(config.min_iters, config.min_time), samples, progress,
              "timed")
    except KeyboardInterrupt:
        return Samples(_as_array(samples), clock() - t0, warm_n, warm_s, timer.name,
                       complete=False, warmup_steady=steady)
    return Samples(_as_array(samples), clock() - t0, warm_n, warm_s, timer.name,
                   warmup_steady=steady)


#: errors that drop one contender and let the others go on (e.g. CUDA out of memory)
CONTENDER_ERRORS = (RuntimeError, ValueError, MemoryError)


class Contender:
    """One thing :func:`measure_rounds` times: a zero-argument callable, timed per iteration.

    Subclasses time other things (e.g. a throughput window of asynchronous requests) by
    overriding :meth:`warm_up` and :meth:`run_slice`.
    """

    def __init__(self, fn: Callable[[], Any], timer: Timer | None = None,
                 clock: Clock = time.perf_counter, progress: Progress | None = None):
        self.fn = fn
        self.clock = clock
        self.timer = timer if timer is not None else ClockTimer(clock)
        self.progress = progress
        #: seconds per iteration at the end of the warm-up (None: not known)
        self.typical_s: float | None = None

    @property
    def timer_name(self) -> str:
        return self.timer.name

    def warm_up(self, config: TimingConfig) -> tuple[int, float, bool | None]:
        warm = array("d")
        result = warm_up(self.fn, config, self.timer, self.clock, self.progress, warm)
        if len(warm):
            self.typical_s = float(np.median(warm[-config.steady_window:]))
        return result

    def run_slice(self, min_iters: int, min_time: float, discard: int, sink: array) -> float:
        """``discard`` untimed iterations, then a timed loop appending to ``sink``; its wall
        time in seconds."""
        for _ in range(discard):
            self.fn()
        t0 = self.clock()
        _loop(self.fn, self.timer, self.clock, _Until(min_iters, min_time), sink, self.progress,
              "timed")
        return self.clock() - t0


def measure_rounds(contenders: list[Contender], config: TimingConfig,
                   on_round: Callable[[int], Any] | None = None,
                   on_slice: Callable[[int, int], Any] | None = None,
                   sleep: Callable[[float], Any] = time.sleep) -> list[Samples]:
    """Time the contenders interleaved: each warms up, then ``config.rounds`` round-robin rounds.

    Round ``r`` gives each contender one slice (``slice_iters`` iterations, ``slice_time`` s,
    after :meth:`TimingConfig.discard` untimed ones) from contender ``r mod n`` on, each after
    ``switch_pause`` s of ``sleep`` (a contender mostly follows the same other: the pause keeps
    that one's spinning threads off the cores). ``on_slice(round, index)`` runs before a slice,
    ``on_round(round)`` after a round. A contender raising :data:`CONTENDER_ERRORS` is dropped
    (``error`` says why); Ctrl-C stops all (``complete=False``). One :class:`Samples` per
    contender, in order (``rounds``: each round's latencies; partial ones kept)."""
    n = len(contenders)
    rounds: list[list[np.ndarray]] = [[] for _ in range(n)]
    walls: list[list[float]] = [[] for _ in range(n)]
    warm: list[tuple[int, float, bool | None]] = [(0, 0.0, None)] * n
    errors: list[BaseException | None] = [None] * n
    complete = True

    def result(i: int) -> Samples:
        lat = np.concatenate(rounds[i]) if rounds[i] else np.zeros(0)
        return Samples(lat, float(sum(walls[i])), warm[i][0], warm[i][1],
                       contenders[i].timer_name, complete=complete, warmup_steady=warm[i][2],
                       rounds=list(rounds[i]), round_walls=list(walls[i]), error=errors[i])

    try:
        for i, c in enumerate(contenders):
            try:
                warm[i] = c.warm_up(config)
            except CONTENDER_ERRORS as exc:
                errors[i] = exc
        for r in range(config.rounds):
            for k in range(n):
                i = (r + k) % n
                if errors[i] is not None:
                    continue
                if on_slice is not None:
                    on_slice(r, i)
                if config.switch_pause and n > 1:
                    sleep(config.switch_pause)
                sink, skip = array("d"), config.discard(getattr(contenders[i], "typical_s", None))
                try:
                    wall = contenders[i].run_slice(config.slice_iters, config.slice_time, skip,
                                                   sink)
                except CONTENDER_ERRORS as exc:
                    errors[i] = exc
                    continue
                except KeyboardInterrupt:
                    if len(sink):  # the interrupted slice: its wall is its latencies' sum
                        rounds[i].append(_as_array(sink).copy())
                        walls[i].append(float(sum(sink)))
                    raise
                rounds[i].append(_as_array(sink).copy())
                walls[i].append(wall)
            if on_round is not None:
                on_round(r)
    except KeyboardInterrupt:
        complete = False
    return [result(i) for i in range(n)]


def _as_array(samples: array) -> np.ndarray:
    return np.frombuffer(samples, dtype=np.float64) if len(samples) else np.zeros(0)


def time_once(fn: Callable[[], Any], timer: Timer | None = None,
              clock: Clock = time.perf_counter) -> float:
    """Seconds for one call: used for setup steps and the first inference, kept apart."""
    timer = timer if timer is not None else ClockTimer(clock)
    timer.start()
    fn()
    return timer.stop()
