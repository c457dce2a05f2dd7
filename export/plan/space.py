"""The candidate space: runtime x precision contract x settings, and why the rest is pruned.

Everything here is read from the runtime registry (:mod:`export.runtime.registry`): which formats
a device's runtimes run, whether each runtime is present (``unavailable()``), whether a precision
is native on this machine (``not_native()``), which INT8 flavour each runtime compiles, which
artifacts may run at another precision (``EXECUTION_PRECISIONS``: an FP32 ONNX at bf16 on
OpenVINO) and which settings are worth searching (``settings``). Nothing is timed or built here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.registry import (
    EXECUTION_PRECISIONS,
    RuntimeInfo,
    runtimes_for,
    setting_grid,
)
from ..runtime.verdicts import runtime_of, verdict_on

#: what the pipeline can export: (format, precision contract, INT8 flavour, TensorRT precision)
EXPORTABLE = (
    ("onnx", "fp32", None, None),
    ("onnx-fp16", "fp16", None, None),
    ("onnx-int8", "int8", "cpu", None),
    ("onnx-int8", "int8", "tensorrt", None),
    ("trt", "fp16", None, "fp16"),
    ("trt", "int8", "tensorrt", "int8"),
)
#: statuses a candidate ends with (plan.json documents them)
STATUSES = ("chosen", "pareto", "dominated", "over-budget", "gate-failed", "skipped", "baseline",
            "unmeasured")


@dataclass(frozen=True)
class ExportPlan:
    """One artifact to export: its format, contract and flavour, and its folder name."""

    fmt: str
    precision: str
    flavour: str | None = None
    trt_precision: str | None = None

    @property
    def folder(self) -> str:
        name = self.fmt if self.fmt != "trt" else f"trt-{self.trt_precision}"
        return name + (f"-{self.flavour}" if self.flavour and self.flavour != "cpu" else "")


@dataclass
class PlanCandidate:
    """One runtime running one artifact at one precision with one set of settings."""

    runtime: str
    precision: str  # the precision it runs at (the contract it is held to)
    settings: dict[str, Any] = field(default_factory=dict)
    artifact: str | None = None  # the artifact folder (None: the eager baseline, a pruned one)
    fmt: str | None = None
    status: str = "unmeasured"
    reason: str | None = None
    manifest_sha256: str | None = None
    gate: dict[str, Any] | None = None
    screen: dict[str, Any] | None = None
    confirm: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        where = f" {Path(self.artifact).name}" if self.artifact else ""
        opts = ",".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.runtime} {self.precision}{where}" + (f" [{opts}]" if opts else "")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "runtime": self.runtime, "precision": self.precision,
                "settings": self.settings, "artifact": self.artifact, "format": self.fmt,
                "status": self.status, "reason": self.reason,
                "manifest_sha256": self.manifest_sha256, "gate": self.gate,
                "screen": self.screen, "confirm": self.confirm}


def _why_not(info: RuntimeInfo, precision: str, flavour: str | None = None) -> str | None:
    return info.unavailable() or info.not_native(precision) or (
        info.slow_flavour(flavour) if precision == "int8" else None)


def export_space(device: str) -> tuple[list[ExportPlan], list[PlanCandidate]]:
    """The artifacts worth exporting for ``device`` (at least one runtime there runs them
    natively), and one pruned candidate per runtime for each artifact that is not."""
    wanted, pruned = [], []
    for fmt, precision, flavour, trt_precision in EXPORTABLE:
        runtimes = runtimes_for(fmt, flavour, device=device, direct=True)
        reasons = {r.name: _why_not(r, precision, flavour) for r in runtimes}
        if runtimes and any(why is None for why in reasons.values()):
            wanted.append(ExportPlan(fmt, precision, flavour, trt_precision))
            continue
        for name, why in reasons.items():
            pruned.append(PlanCandidate(name, precision, fmt=fmt, status="skipped",
                                        reason=f"not exported: {why}"))
        if not runtimes:
            pruned.append(PlanCandidate(fmt, precision, fmt=fmt, status="skipped",
                                        reason=f"no {device} runtime runs {fmt}"
                                               + (f" ({flavour} flavour)" if flavour else "")))
    return wanted, pruned


def gate_summary(manifest: dict[str, Any], runtime: str, precision: str) -> dict[str, Any] | None:
    """The verdict of ``runtime`` at ``precision`` in the artifact's gate, in short."""
    runs = [r for r in (manifest.get("parity") or {}).get("runs", [])
            if r.get("precision") == precision and runtime_of(r) == runtime]
    return short_verdict(next((r for r in runs if not r.get("passed")), runs[0])) if runs \
        else None


def short_verdict(run: dict[str, Any]) -> dict[str, Any]:
    """What plan.json keeps of a gate verdict: pass/fail, contract, figures, first failure."""
    real = [c for c in run.get("comparisons", []) if c.get("kind") == "real"] or \
        run.get("comparisons", [])
    accuracy = run.get("accuracy") or {}
    failures = [f for c in run.get("comparisons", []) for f in c.get("failures", [])] + \
        list(accuracy.get("failures", []) or [])
    return {"passed": run.get("passed"), "contract": run.get("precision"),
            "judged_on": run.get("candidate"), "summary": run.get("summary"),
            "min_cosine": min((c["min_cosine"] for c in real), default=None),
            "top1_agreement": min((c["top1_agreement"] for c in real), default=None),
            "accuracy_drop": accuracy.get("drop_points"),
            "first_failure": failures[0] if failures else None}


def _refused(runtime: str, precision: str, verdict: bool | None,
             gate: dict[str, Any] | None) -> str:
    if verdict is False:
        return f"its gate failed on {runtime}: {(gate or {}).get('first_failure')}"
    return f"the artifact's gate did not judge the {precision} contract on {runtime}"


def candidates_for(folder: Path, manifest: dict[str, Any], sha256: str, device: str,
                   cores: int, objective: str) -> list[PlanCandidate]:
    """Every (runtime, precision, settings) that may run this artifact here, and the pruned
    ones with their reason. Each runtime's own verdict decides: an artifact that failed on one
    runtime and passed on another is a candidate where it passed and gate-failed where not."""
    fmt, own = manifest["format"], manifest["precision"]
    flavour = (manifest.get("int8") or {}).get("flavour")
    base = {"artifact": str(folder), "fmt": fmt, "manifest_sha256": sha256}
    found = []
    contracts = manifest["parity"].get("contracts") or {own: manifest["parity"].get("passed")}
    for info in runtimes_for(fmt, flavour, device=device, direct=True):
        for precision in (own, *[p for p in EXECUTION_PRECISIONS.get((info.name, own), ())
                                 if p != own]):
            why = _why_not(info, precision, flavour)
            gate = gate_summary(manifest, info.name, precision)
            # the runtime's own verdict decides; where the gate did not judge it, the contract's
            verdict = verdict_on(manifest, info.name, precision)
            judged = contracts.get(precision) if verdict is None else verdict
            if why is None and judged is not True:
                status = "gate-failed" if verdict is False else "skipped"
                found.append(PlanCandidate(info.name, precision, status=status, gate=gate,
                                           reason=_refused(info.name, precision, verdict, gate),
                                           **base))
                continue
            if why is not None:
                found.append(PlanCandidate(info.name, precision, status="skipped", reason=why,
                                           **base))
                continue
            for settings in setting_grid(info, cores, objective):
                found.append(PlanCandidate(info.name, precision, settings, gate=gate, **base))
    return found


__all__ = ["EXPORTABLE", "STATUSES", "ExportPlan", "PlanCandidate", "candidates_for",
           "export_space", "gate_summary", "short_verdict"]
