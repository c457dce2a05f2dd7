"""The timing harness and the statistics, driven by a fake clock: known timings, no sleeping."""

from dataclasses import replace

import numpy as np
import pytest

from bench.load import CpuSnapshot, busy_verdict, others_cores
from bench.stats import NoiseRule, ratio_spread, round_ratio, round_summary, summarize
from bench.timing import ClockTimer, Contender, TimingConfig, measure, measure_rounds, time_once


class FakeClock:
    """A clock that only moves when the fake workload says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def workload(clock, durations):
    """A callable whose n-th call 'takes' durations[n] seconds on ``clock``."""
    it = iter(durations)
    calls = []

    def fn():
        calls.append(1)
        clock.now += next(it)

    fn.calls = calls
    return fn


def run(durations, **cfg):
    cfg.setdefault("steady", False)
    clock = FakeClock()
    fn = workload(clock, durations)
    return measure(fn, TimingConfig(**cfg), clock=clock), fn


def test_warmup_iterations_are_run_but_not_sampled():
    samples, fn = run([9.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0], warmup_iters=2, warmup_time=0,
                      min_iters=5, min_time=0)
    assert samples.latencies_s.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert samples.warmup_iters == 2 and samples.warmup_s == 18.0
    assert len(fn.calls) == 7
    assert samples.wall_s == 15.0  # the timed loop only; the fake clock has no harness cost


def test_warmup_runs_until_its_time_is_spent():
    samples, _ = run([0.5] * 3 + [1.0] * 2, warmup_iters=1, warmup_time=1.0, min_iters=2,
                     min_time=0)
    assert samples.warmup_iters == 2  # 1 iteration was not enough: 1.0 s needs two of 0.5 s
    assert samples.latencies_s.tolist() == [0.5, 1.0]


def test_min_iters_rule_when_time_is_already_met():
    samples, _ = run([1.0] * 20, warmup_iters=0, warmup_time=0, min_iters=7, min_time=0.5)
    assert samples.iterations == 7


def test_min_time_rule_when_iterations_are_already_met():
    samples, _ = run([0.25] * 20, warmup_iters=0, warmup_time=0, min_iters=1, min_time=1.0)
    assert samples.iterations == 4
    assert samples.wall_s == 1.0


def test_both_minimums_must_hold():
    fast, _ = run([0.25] * 20, warmup_iters=0, warmup_time=0, min_iters=6, min_time=1.0)
    slow, _ = run([0.25] * 20, warmup_iters=0, warmup_time=0, min_iters=3, min_time=1.0)
    assert (fast.iterations, slow.iterations) == (6, 4)


def test_ctrl_c_in_the_timed_loop_keeps_the_samples_so_far():
    clock = FakeClock()
    durations = iter([1.0, 1.0, 2.0, 3.0])

    def fn():
        try:
            clock.now += next(durations)
        except StopIteration:
            raise KeyboardInterrupt from None

    samples = measure(fn, TimingConfig(1, 0, 100, 0, steady=False), clock=clock)
    assert not samples.complete
    assert samples.latencies_s.tolist() == [1.0, 2.0, 3.0]


def test_ctrl_c_during_warmup_propagates():
    def fn():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure(fn, TimingConfig(2, 0, 3, 0), clock=FakeClock())


def test_steady_warmup_goes_on_until_the_latency_settles():
    # a slow start (a process whose threads are not yet running in parallel), then steady
    durations = [0.9, 0.8, 0.9, 0.03, 0.03, 0.031, 0.03, 0.03] + [0.03] * 20
    samples, fn = run(durations, warmup_iters=2, warmup_time=0, min_iters=5, min_time=0,
                      steady=True)
    # windows of 3: [0.9, 0.03, 0.03] -> median 0.03 agrees with [0.03, 0.031, 0.03] at last
    assert samples.warmup_iters == 8 and samples.warmup_steady is True
    assert samples.latencies_s.tolist() == pytest.approx([0.03] * 5)


def test_steady_warmup_stops_at_its_time_limit_and_says_so():
    durations = [0.1, 1.0] * 50  # never settles
    samples, _ = run(durations, warmup_iters=1, warmup_time=0, min_iters=2, min_time=0,
                     steady=True, warmup_max_time=5.0)
    assert samples.warmup_steady is False
    assert samples.warmup_s == pytest.approx(5.5)  # ran until 5 s had passed: 10 iterations
    assert samples.warmup_iters == 10


def test_steady_rule_needs_a_warmup_and_is_quick_when_already_steady():
    none, _ = run([1.0] * 5, warmup_iters=0, warmup_time=0, min_iters=3, min_time=0, steady=True)
    assert none.warmup_iters == 0 and none.warmup_steady is None
    steady, _ = run([1.0] * 20, warmup_iters=2, warmup_time=0, min_iters=3, min_time=0,
                    steady=True)
    assert steady.warmup_iters == 6 and steady.warmup_steady  # two windows of 3


def test_time_once_and_clock_timer_use_the_injected_clock():
    clock = FakeClock()
    assert time_once(workload(clock, [0.125]), ClockTimer(clock)) == 0.125
    assert time_once(workload(clock, [2.5]), clock=clock) == 2.5


@pytest.mark.parametrize("bad", [dict(min_iters=0), dict(min_time=-1), dict(warmup_iters=-1),
                                 dict(steady_window=0), dict(steady_tol=0), dict(rounds=0),
                                 dict(round_warmup=-1), dict(round_warmup_max=-1)])
def test_timing_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        TimingConfig(**bad)


# -- interleaved rounds ------------------------------------------------------------------------


def loaded_job(clock, seconds, step_at, slowdown):
    """A workload of ``seconds`` per call that runs ``slowdown`` times slower once the clock has
    passed ``step_at``: another job arriving on a shared machine."""
    def fn():
        clock.now += seconds * (slowdown if clock.now >= step_at else 1.0)
    return fn


def test_interleaving_keeps_a_ratio_that_a_load_step_breaks_in_a_sequential_sweep():
    # B truly takes 2x A. At t = 6 s another job arrives and everything runs 3x slower.
    cfg = dict(warmup_iters=2, warmup_time=0, min_iters=50, min_time=5.0, steady=False)

    clock = FakeClock()
    a, b = loaded_job(clock, 0.010, 6.0, 3.0), loaded_job(clock, 0.020, 6.0, 3.0)
    seq_a, seq_b = (measure(f, TimingConfig(**cfg), clock=clock) for f in (a, b))
    sequential = np.median(seq_b.latencies_s) / np.median(seq_a.latencies_s)
    # A ran before the step, most of B after it: the sweep reports 6x, not 2x
    assert sequential == pytest.approx(6.0)

    clock = FakeClock()
    a, b = loaded_job(clock, 0.010, 6.0, 3.0), loaded_job(clock, 0.020, 6.0, 3.0)
    rounds_a, rounds_b = measure_rounds([Contender(a, clock=clock), Contender(b, clock=clock)],
                                        TimingConfig(**cfg, rounds=5))
    per_a, per_b = round_summary(rounds_a.rounds), round_summary(rounds_b.rounds)
    assert per_a["rounds"] == per_b["rounds"] == 5
    assert round_ratio(per_b["round_p50_ms"], per_a["round_p50_ms"]) == pytest.approx(2.0)
    # the load step is still visible: the rounds disagree, and say so
    assert per_a["rounds_disagree"] and per_b["rounds_disagree"]
    assert per_a["round_spread"] == pytest.approx(3.0)
    # each contender got its whole timed loop, in slices
    assert rounds_a.iterations >= 50 and rounds_a.wall_s >= 5.0
    assert rounds_a.latencies_s.tolist() == np.concatenate(rounds_a.rounds).tolist()


def test_rounds_rotate_the_order_warm_up_first_and_discard_one_iteration_per_slice():
    clock = FakeClock()
    log = []

    def job(name):
        def fn():
            log.append(name)
            clock.now += 1.0
        return fn

    cfg = TimingConfig(warmup_iters=1, warmup_time=0, min_iters=4, min_time=0, steady=False,
                       rounds=2, round_warmup=1, round_warmup_max=2.0)
    seen = []
    out = measure_rounds([Contender(job("a"), clock=clock), Contender(job("b"), clock=clock),
                          Contender(job("c"), clock=clock)], cfg,
                         on_slice=lambda r, i: seen.append((r, i)))
    assert seen == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 0)]
    # warm-ups (1 each), then per slice 1 untimed + 2 timed iterations
    assert log[:3] == ["a", "b", "c"] and log[3:6] == ["a"] * 3 and log[-3:] == ["a"] * 3
    for s in out:
        assert s.iterations == 4 and [len(r) for r in s.rounds] == [2, 2]
        assert s.round_walls == [2.0, 2.0] and s.wall_s == 4.0 and s.warmup_iters == 1

    # a contender slower than round_warmup_max per iteration gets no untimed iteration
    log.clear()
    measure_rounds([Contender(job("a"), clock=clock)], replace(cfg, round_warmup_max=0.5))
    assert log == ["a"] * 5  # 1 warm-up, then 2 rounds of 2 timed


def test_a_failing_contender_is_dropped_and_ctrl_c_keeps_every_round_so_far():
    clock = FakeClock()
    calls = []

    def ok():
        clock.now += 1.0

    def breaks():
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("out of memory")
        clock.now += 1.0

    cfg = TimingConfig(warmup_iters=0, warmup_time=0, min_iters=3, min_time=0, steady=False,
                       rounds=3, round_warmup=0)
    good, bad = measure_rounds([Contender(ok, clock=clock), Contender(breaks, clock=clock)], cfg)
    assert good.iterations == 3 and good.error is None and good.complete
    assert bad.iterations == 2 and isinstance(bad.error, RuntimeError)  # its third round failed
    assert len(bad.rounds) == 2 and bad.complete  # what it measured before is kept

    stop = iter([False, True])  # Ctrl-C at B's second slice, which starts round 2

    def interrupted():
        if next(stop):
            raise KeyboardInterrupt
        clock.now += 1.0

    a, b = measure_rounds([Contender(ok, clock=clock), Contender(interrupted, clock=clock)], cfg)
    assert not a.complete and not b.complete
    assert (a.iterations, b.iterations) == (1, 1)


def test_round_summary_and_ratio():
    s = round_summary([[0.010, 0.010], [0.012], [0.0125]])
    assert s["round_p50_ms"] == pytest.approx([10.0, 12.0, 12.5])
    assert s["round_spread"] == pytest.approx(1.25) and not s["rounds_disagree"]
    assert round_summary([[0.01], [0.02]], NoiseRule(rounds_max=1.5))["rounds_disagree"]
    assert round_summary([[0.01]])["round_spread"] is None
    # a round one side lacks is left out; the median of the rest
    assert round_ratio([20.0, 30.0, 10.0], [10.0, 10.0]) == pytest.approx(2.5)
    assert round_ratio([], [1.0]) is None
    assert ratio_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx([2.0, 4.0])
    assert ratio_spread([1.0, 2.0]) is None


def test_the_machine_load_verdict():
    before = CpuSnapshot(100.0, (1.0, 1.0, 1.0), busy_s=50.0, self_s=10.0)
    quiet = CpuSnapshot(110.0, (1.9, 1.5, 1.0), busy_s=70.0, self_s=29.0)  # others: 1 s in 10
    busy = CpuSnapshot(110.0, (3.5, 2.0, 1.0), busy_s=80.0, self_s=20.0)  # others: 20 s in 10
    assert others_cores(before, quiet) == pytest.approx(0.1)
    assert others_cores(before, busy) == pytest.approx(2.0)
    ok = busy_verdict(before, quiet, 2, [0.1], 0.25)
    assert not ok["busy"] and ok["load_before"] == [1.0, 1.0, 1.0] and ok["others_cores"] == 0.1
    bad = busy_verdict(before, busy, 2, [1.5, 2.5], 0.25)
    assert bad["busy"] and bad["others_cores_max"] == 2.5
    assert any("load average 3.50 > 2" in r for r in bad["busy_reasons"])
    assert any("other processes used 2.00 cores" in r for r in bad["busy_reasons"])
    unknown = CpuSnapshot(110.0, None, None, 20.0)
    assert others_cores(before, unknown) is None
    assert not busy_verdict(unknown, unknown, 2, [None], 0.25)["busy"]


# -- statistics ------------------------------------------------------------------------------


def test_percentiles_spread_and_throughput_of_known_samples():
    ms = np.arange(1, 101, dtype=float)  # 1..100 ms
    s = summarize(ms / 1e3, batch_size=4, wall_s=5.05)
    assert s["iterations"] == 100
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(100.0)
    assert s["mean_ms"] == pytest.approx(50.5)
    # numpy's linear interpolation between closest ranks
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["std_ms"] == pytest.approx(np.std(ms, ddof=1))
    assert s["cv"] == pytest.approx(np.std(ms, ddof=1) / 50.5)
    assert s["throughput_ips"] == pytest.approx(4 * 100 / 5.05)


def test_harness_samples_feed_the_statistics_end_to_end():
    samples, _ = run([0.010] * 2 + [0.010, 0.020, 0.030, 0.040], warmup_iters=2, warmup_time=0,
                     min_iters=4, min_time=0)
    s = summarize(samples.latencies_s, 8, samples.wall_s)
    assert s["p50_ms"] == pytest.approx(25.0)
    assert s["throughput_ips"] == pytest.approx(8 * 4 / 0.1)  # warm-up excluded from the rate


def test_a_quiet_run_is_not_flagged():
    ms = np.linspace(10.0, 10.5, 50)
    s = summarize(ms / 1e3, 1, 1.0)
    assert not s["noisy"] and s["noise_reasons"] == []


def test_a_heavy_tail_is_flagged_even_with_a_low_cv():
    ms = np.array([10.0] * 98 + [16.0] * 2)
    s = summarize(ms / 1e3, 1, 1.0)
    assert s["cv"] < 0.10
    assert s["noisy"] and len(s["noise_reasons"]) == 1 and "p99/p50" in s["noise_reasons"][0]


def test_a_wide_spread_is_flagged_by_cv():
    ms = np.array([8.0, 12.0] * 50)
    s = summarize(ms / 1e3, 1, 1.0)
    assert s["noisy"] and len(s["noise_reasons"]) == 1 and "CV" in s["noise_reasons"][0]


def test_noise_rule_thresholds_are_configurable():
    ms = np.array([8.0, 12.0] * 50)
    assert not summarize(ms / 1e3, 1, 1.0, NoiseRule(cv_max=0.5))["noisy"]


def test_single_sample_and_bad_input():
    s = summarize([0.005], 1, 0.005)
    assert s["std_ms"] == 0.0 and s["p99_ms"] == pytest.approx(5.0)
    with pytest.raises(ValueError):
        summarize([], 1, 1.0)
    with pytest.raises(ValueError):
        summarize([0.001], 0, 1.0)
