"""The plan's eager baseline is timed as resnet-bench times it (on the free cores, warmed up
until steady), and plan.png keeps every candidate readable beside a baseline tens of times
slower (log axis, one marker and legend entry per candidate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import export.plan.measure as measure
from export.core.models import ModelSpec
from export.plan.report import figure
from export.plan.space import PlanCandidate


def test_the_baseline_runs_on_the_free_cores(monkeypatch: pytest.MonkeyPatch,
                                             onnx_artifact: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_sweep(doc: dict[str, Any], _cands: list[Any], settings: Any, _macs: Any) -> None:
        seen["torch"], seen["row_threads"] = torch.get_num_threads(), settings.threads

    monkeypatch.setattr(measure, "sweep", fake_sweep)
    monkeypatch.setattr(measure, "free_threads", lambda: (1, "busy"))
    spec = ModelSpec.from_dict(json.loads((onnx_artifact / "manifest.json").read_text())["model"])
    before = torch.get_num_threads()
    base = measure.baseline(onnx_artifact, spec)
    measure.run_phase([], [base], spec, 1, measure.Phase("screen", 3, 0.1), "latency", 2,
                      lambda _line: None)
    assert seen == {"torch": 1, "row_threads": 1}  # not the 2 usable cores
    assert torch.get_num_threads() == before  # put back
    # without a baseline the runtimes' own settings decide: torch keeps the usable cores
    measure.run_phase([], [], spec, 1, measure.Phase("screen", 3, 0.1), "latency", 2,
                      lambda _line: None)
    assert seen["torch"] == 2


def test_the_baseline_warms_up_until_steady(onnx_artifact: Path) -> None:
    spec = ModelSpec.from_dict(json.loads((onnx_artifact / "manifest.json").read_text())["model"])
    _plan, cand = measure.baseline(onnx_artifact, spec, 2)
    runner, setup = cand.prepare()
    try:
        assert runner.active
        assert setup["baseline_warmup_steady"] is not None  # the steady rule was applied
        assert setup["baseline_warmup_s"] >= measure.BASELINE_WARMUP.warmup_time
    finally:
        runner.deactivate()


def _doc() -> dict[str, Any]:
    cands = []
    for i in range(13):
        c = PlanCandidate("openvino" if i % 2 else "onnxruntime", "int8" if i < 6 else "fp32",
                          {"threads": 1 + i % 2, "n": i}, f"artifacts/a{i}", "onnx",
                          status="chosen" if i == 0 else "pareto" if i == 1 else "dominated")
        d = c.to_dict()
        d["screen"] = {"objective": 4.0 + 0.1 * i}
        d["gate"] = {"accuracy_drop": 0.1 if i < 6 else 0.0}
        cands.append(d)
    base = PlanCandidate("torch", "fp32", status="baseline").to_dict()
    base["screen"] = {"objective": 340.0}  # the issue's case: tens of times the artifacts'
    cands.append(base)
    return {"candidates": cands, "objective": "latency", "model": {"name": "resnet50"},
            "device": "cpu", "choice": {"chosen": cands[0]["id"]}}


def test_plan_png_keeps_every_candidate_readable() -> None:
    import matplotlib.pyplot as plt

    doc = _doc()
    fig = figure(doc)
    try:
        ax = fig.axes[0]
        assert ax.get_xscale() == "log"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(labels) == 14 + 1  # every candidate, the baseline, and the Pareto front
        assert all(any(c["id"] in label for label in labels) for c in doc["candidates"])
        # 13 candidates between 4.0 and 5.2 ms sit apart by more than a marker's width
        x0, x1 = ax.transData.transform([(4.0, 0), (5.2, 0)])[:, 0]
        assert x1 - x0 > 30
    finally:
        plt.close(fig)
