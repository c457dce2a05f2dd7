"""Interleaved timing pauses between two contenders' slices (the plan's cool-down), so thread
pools still spinning from the slice before do not take cores from the next contender."""

from __future__ import annotations

import pytest

from bench.timing import Contender, TimingConfig, measure_rounds


def _config(pause: float) -> TimingConfig:
    return TimingConfig(warmup_iters=0, warmup_time=0, min_iters=3, min_time=0, steady=False,
                        rounds=3, switch_pause=pause)


def test_a_pause_before_every_slice_of_several_contenders() -> None:
    order: list[str] = []
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        order.append("pause")

    contenders = [Contender(lambda name=name: order.append(name)) for name in ("a", "b")]
    results = measure_rounds(contenders, _config(0.05), sleep=sleep)
    assert slept == [0.05] * 6  # 3 rounds x 2 slices
    # each slice starts after a pause: no contender's call directly follows the other's
    pairs = list(zip(order, order[1:]))
    assert ("a", "b") not in pairs and ("b", "a") not in pairs
    assert all(r.iterations == 3 for r in results)


def test_no_pause_alone_or_by_default() -> None:
    slept: list[float] = []
    measure_rounds([Contender(lambda: None)], _config(0.05), sleep=slept.append)
    measure_rounds([Contender(lambda: None), Contender(lambda: None)], _config(0.0),
                   sleep=slept.append)
    assert slept == []
    assert TimingConfig().switch_pause == 0.0  # resnet-bench's own runs are unchanged
    with pytest.raises(ValueError, match="switch_pause"):
        TimingConfig(switch_pause=-1)
