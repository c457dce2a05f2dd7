"""The planner's choice rule on synthetic timing rows: ahead beyond the per-round spread, ties
settled by the stricter contract, constraints, the Pareto front; and the candidate space as the
runtime registry defines it."""

import pytest

from export.plan.choose import Timing, ahead, choose, pareto_front
from export.plan.space import candidates_for, export_space
from export.runtime.registry import RUNTIMES, setting_grid


def _t(id_, precision, rounds, p99=None, drop=None, objective="latency"):
    value = sorted(rounds)[len(rounds) // 2]
    return Timing(id_, precision, value, p99 if p99 is not None else value * 1.2,
                  tuple(rounds), drop)


def test_a_winner_ahead_in_every_round_wins_outright():
    fast = _t("ov int8", "int8", [10.0, 10.2, 9.9, 10.1, 10.0, 10.3, 9.8])
    slow = _t("ov fp32", "fp32", [38.0, 39.0, 38.5, 40.0, 38.2, 38.9, 39.3])
    choice = choose([slow, fast])
    assert choice.chosen == "ov int8" and not choice.tie
    assert choice.runner_up == "ov fp32"
    assert choice.ratio == pytest.approx(3.85, rel=0.05)
    assert choice.spread[0] > 1.0


def test_a_lead_within_the_round_spread_is_a_tie_won_by_the_stricter_contract():
    # int8 is faster in the median, but in 3 of 7 rounds fp32 was faster: not proven
    int8 = _t("ort int8", "int8", [10.0, 11.5, 9.5, 12.0, 9.8, 11.8, 9.9])
    fp32 = _t("ort fp32", "fp32", [10.5, 10.9, 10.4, 11.0, 10.6, 10.7, 11.1])
    choice = choose([int8, fp32])
    assert choice.tie and set(choice.tied) == {"ort int8", "ort fp32"}
    assert choice.chosen == "ort fp32"
    assert "strictest contract (fp32)" in choice.reason


def test_bf16_beats_int8_in_a_tie_and_fp32_beats_both():
    rounds = [20.0, 21.0, 19.0, 20.5, 19.5, 20.2, 19.8]
    int8 = _t("int8", "int8", rounds)
    bf16 = _t("bf16", "bf16", [r * 1.005 for r in rounds[::-1]])
    assert choose([int8, bf16]).chosen == "bf16"
    fp32 = _t("fp32", "fp32", rounds[1:] + rounds[:1])
    assert choose([int8, bf16, fp32]).chosen == "fp32"


def test_fewer_than_three_common_rounds_never_prove_a_lead():
    fast, slow = _t("a", "int8", [1.0, 1.0]), _t("b", "fp32", [2.0, 2.0])
    assert ahead(fast, slow, "latency")[0] is False
    assert choose([fast, slow]).chosen == "b"


def test_throughput_is_higher_is_better():
    many = _t("many", "int8", [900.0, 910, 905, 899, 902, 908, 901])
    few = _t("few", "fp32", [300.0, 310, 305, 299, 302, 308, 301])
    choice = choose([few, many], "throughput")
    assert choice.chosen == "many" and not choice.tie


def test_a_latency_budget_nobody_meets_chooses_nothing():
    a = _t("a", "int8", [5.0] * 7, p99=9.0)
    b = _t("b", "fp32", [8.0] * 7, p99=12.0)
    choice = choose([a, b], latency_budget_ms=4.0)
    assert choice.chosen is None and set(choice.over_budget) == {"a", "b"}
    assert "budget 4" in choice.over_budget["a"]
    assert choose([a, b], latency_budget_ms=10.0).chosen == "a"


def test_an_accuracy_drop_over_the_limit_is_out():
    int8 = _t("int8", "int8", [5.0, 5.1, 4.9, 5.0, 5.2, 4.8, 5.0], drop=0.8)
    fp32 = _t("fp32", "fp32", [9.0] * 7)
    assert choose([int8, fp32], max_accuracy_drop=1.0).chosen == "int8"
    choice = choose([int8, fp32], max_accuracy_drop=0.5)
    assert choice.chosen == "fp32" and "accuracy drop 0.80" in choice.over_budget["int8"]


def test_pareto_front_keeps_fast_or_accurate_and_drops_the_dominated():
    ts = [_t("fast-lossy", "int8", [5.0] * 3, drop=0.6), _t("slow-exact", "fp32", [9.0] * 3),
          _t("slower-lossy", "int8", [7.0] * 3, drop=0.9)]
    assert set(pareto_front(ts, "latency")) == {"fast-lossy", "slow-exact"}


def test_settings_come_from_the_registry():
    grid = setting_grid(RUNTIMES["onnxruntime"], cores=4)
    assert {g["threads"] for g in grid} == {4, 2}
    assert {g["optimization_level"] for g in grid} == {"all", "extended"}
    assert setting_grid(RUNTIMES["onnxruntime"], cores=1) == [
        {"threads": 1, "optimization_level": "all"},
        {"threads": 1, "optimization_level": "extended"}]
    hints = {g["performance_hint"] for g in setting_grid(RUNTIMES["openvino"], cores=2)}
    assert hints == {"LATENCY", "THROUGHPUT"}


def test_cpu_export_space_prunes_what_no_runtime_here_runs_natively():
    wanted, pruned = export_space("cpu")
    kinds = {(p.fmt, p.flavour) for p in wanted}
    assert ("onnx", None) in kinds and ("onnx-int8", "cpu") in kinds
    # FP16 is computed in FP32 on the CPU runtimes, the tensorrt flavour is not their fast one
    assert ("onnx-fp16", None) not in kinds and ("onnx-int8", "tensorrt") not in kinds
    reasons = " ".join(c.reason for c in pruned)
    assert "computes fp16 in FP32" in reasons and "runs its own (cpu) fast" in reasons


def test_a_failed_gate_is_gate_failed_on_the_runtime_that_failed_it(tmp_path):
    run = {"passed": False, "precision": "int8", "candidate": "openvino[cpu,int8]",
           "summary": {}, "accuracy": {"drop_points": 7.5, "failures": ["top-1 fell 7.5"]},
           "comparisons": [{"kind": "real", "min_cosine": 0.4, "top1_agreement": 0.5,
                            "failures": ["cosine 0.4 < 0.97"]}]}
    manifest = {"format": "onnx-int8", "precision": "int8", "int8": {"flavour": "cpu"},
                "parity": {"passed": False, "runs": [run]}}
    found = candidates_for(tmp_path, manifest, "0" * 64, "cpu", 2, "latency")
    (cand,) = [c for c in found if c.runtime == "openvino"]
    assert cand.status == "gate-failed" and cand.reason.startswith("its gate failed on openvino")
    # ONNX Runtime was not judged: not proven there, so not timed either
    assert [(c.runtime, c.status) for c in found if c.runtime != "openvino"] == \
        [("onnxruntime", "skipped")]
    assert cand.gate["first_failure"] == "cosine 0.4 < 0.97" and cand.gate["accuracy_drop"] == 7.5
