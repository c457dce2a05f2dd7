"""What a failed parity gate's one line says: the first failure, and for INT8 only the remedies
that can help the failure seen."""

from __future__ import annotations

from .convert.int8_recipes import METHODS
from .core import cpu_features
from .core.manifest import Manifest
from .gate.parity import Verdict
from .request import ExportRequest


def int8_help(req: ExportRequest, manifest: Manifest, verdicts: list[Verdict]) -> str:
    """What may get an INT8 artifact through its gate, after a failure: only what can help the
    failure seen. Where one runtime passed the same file the ranges are sound and the other
    runtime's kernels differ on this CPU: more images or another method cannot help that."""
    if req.precision != "int8":
        return ""
    judged = [v for v in verdicts if v.precision == "int8"]
    passed = [v.candidate for v in judged if v.passed]
    if passed:
        failed = ", ".join(v.candidate for v in judged if not v.passed)
        return (f"; the calibration is sound (it passed on {', '.join(passed)}): {failed} "
                f"computes this file differently on this CPU ({cpu_features.isa_class()}), "
                "which more calibration images or another method cannot change; --keep-failed "
                "keeps the file for inspection")
    count = ((manifest.get("int8") or {}).get("calibration") or {}).get("count")
    others = [m for m in METHODS if m != req.calib_method]
    return (f"; what may help: more calibration images (--calib-count, {count} now), "
            f"another --calib-method ({' or '.join(others)})")


def first_failure(verdicts: list[Verdict]) -> str:
    """The first thing that failed, as the failure line names it."""
    for v in verdicts:
        for c in v.comparisons:
            if not c.passed:
                return f"{v.candidate} on '{c.name}': {c.failures[0]}"
        if v.accuracy is not None and not v.accuracy.passed:
            return f"{v.candidate} on the held-out accuracy check: {v.accuracy.failures[0]}"
    return "no comparison passed"


__all__ = ["first_failure", "int8_help"]
