"""``resnet-plan verify`` compares the full candidate (runtime, precision, artifact AND
settings): a winner that differs from the plan's choice only in its settings (the performance
hint) does not hold, and the message says what differs. The re-timing is replaced by recorded
per-round figures, so the rule is what is tested, not this machine's load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import export.plan.verify as verify_mod
from export.core.models import default_spec
from export.plan.cli import main as plan_cli
from export.plan.report import PLAN_KIND, PLAN_SCHEMA
from export.plan.space import PlanCandidate

THROUGHPUT = {"threads": 2, "performance_hint": "THROUGHPUT"}
LATENCY = {"threads": 2, "performance_hint": "LATENCY"}


def _plan_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "plan"
    (folder / "artifacts" / "onnx-int8").mkdir(parents=True)
    cands = []
    for settings, status in ((THROUGHPUT, "chosen"), (LATENCY, "pareto")):
        c = PlanCandidate("openvino", "int8", dict(settings), "artifacts/onnx-int8",
                          "onnx-int8", status=status)
        d = c.to_dict()
        d["confirm"] = {"objective": 10.0, "objective_rounds": [10.0] * 7, "p99_ms": 11.0}
        cands.append(d)
    doc = {"kind": PLAN_KIND, "schema_version": PLAN_SCHEMA, "partial": False,
           "model": default_spec("resnet20").to_dict(), "batch_size": 1,
           "objective": "latency", "environment": {"cpu": {"isa": {"isa": "avx512-vnni"}}},
           "constraints": {"latency_budget_ms": None, "max_accuracy_drop": 1.0},
           "choice": {"chosen": cands[0]["id"], "reason": "x"}, "candidates": cands}
    (folder / "plan.json").write_text(json.dumps(doc))
    return folder


def _retimed(monkeypatch: pytest.MonkeyPatch, ms: dict[str, list[float]]) -> None:
    """Re-timing gives each leader (by performance hint) these per-round p50s."""
    def run_phase(cands: list[PlanCandidate], *_args: Any) -> bool:
        for c in cands:
            rounds = ms[c.settings["performance_hint"]]
            c.confirm = {"objective": sorted(rounds)[len(rounds) // 2],
                         "objective_rounds": rounds, "p99_ms": max(rounds)}
        return True

    monkeypatch.setattr(verify_mod, "run_phase", run_phase)
    monkeypatch.setattr(verify_mod, "verify_artifact", lambda *_a, **_k: {})


def test_a_settings_winner_does_not_hold_and_says_what_differs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _plan_folder(tmp_path)
    _retimed(monkeypatch, {"THROUGHPUT": [14.0, 14.2, 13.9, 14.1, 14.0, 14.3, 13.8],
                           "LATENCY": [10.0, 10.2, 9.9, 10.1, 10.0, 10.3, 9.8]})
    verdict = verify_mod.verify_plan(folder, 0.1, lambda _line: None)
    assert not verdict.holds
    assert "does NOT hold" in verdict.message
    assert "settings: performance_hint THROUGHPUT -> LATENCY" in verdict.message
    assert "runtime:" not in verdict.message  # only what differs is named
    result = CliRunner().invoke(plan_cli, ["verify", str(folder)])
    assert result.exit_code == 1, result.output
    assert "performance_hint THROUGHPUT -> LATENCY" in result.output


def test_the_same_candidate_winning_holds(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _plan_folder(tmp_path)
    _retimed(monkeypatch, {"THROUGHPUT": [10.0, 10.2, 9.9, 10.1, 10.0, 10.3, 9.8],
                           "LATENCY": [14.0, 14.2, 13.9, 14.1, 14.0, 14.3, 13.8]})
    result = CliRunner().invoke(plan_cli, ["verify", str(folder)])
    assert result.exit_code == 0, result.output
    assert "the choice holds here: openvino int8 onnx-int8 [threads=2,performance_hint=" \
           "THROUGHPUT]" in result.output


def test_a_tie_with_another_setting_holds_but_names_the_difference(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _plan_folder(tmp_path)
    # LATENCY faster in the median, THROUGHPUT faster in 3 of 7 rounds: not apart
    _retimed(monkeypatch, {"THROUGHPUT": [10.5, 10.9, 10.4, 11.0, 10.6, 10.7, 11.1],
                           "LATENCY": [10.0, 11.5, 9.5, 12.0, 9.8, 11.8, 9.9]})
    verdict = verify_mod.verify_plan(folder, 0.1, lambda _line: None)
    assert verdict.holds and verdict.now.tie
    assert verdict.now.chosen != verdict.recorded  # one contract: the faster median wins
    assert "holds here in a tie" in verdict.message
    assert "performance_hint THROUGHPUT -> LATENCY" in verdict.message
