"""The plan's artifacts: exported once each through the pipeline and its gate, or read from
folders already exported; an INT8 artifact that misses its accuracy contract gets one
accuracy-controlled retry.

Each artifact is written by :func:`export.pipeline.export_artifacts` (one dynamo export for all
formats of one flavour) into ``<plan>/artifacts/<format>``; a failed one is kept in
``<format>.FAILED`` (the pipeline's ``keep_failed``) so its verdict stays on record. The retry
re-quantizes with the most sensitive layers kept in float (ONNX Runtime's ``quantize_static``
``nodes_to_exclude``: :func:`export.convert.int8.sensitive_layers`) into
``<plan>/artifacts/onnx-int8-kept-float``, and says so in its manifest (``int8.accuracy_retry``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.artifact import read_manifest
from ..core.errors import ParityFailed, UserError
from ..core.fileio import sha256_file
from ..core.manifest import FAILED_SUFFIX, MANIFEST_NAME
from ..pipeline import ExportRequest, export_artifacts
from .space import ExportPlan

Echo = Callable[[str], None]
RETRY_SUFFIX = "-kept-float"


@dataclass
class Gated:
    """An artifact folder the plan considers, its manifest, and whether its gate passed."""

    folder: Path
    manifest: dict[str, Any]
    sha256: str

    @property
    def passed(self) -> bool:
        return bool(self.manifest["parity"].get("passed"))


def read_gated(folder: Path) -> Gated:
    return Gated(folder, dict(read_manifest(folder)), sha256_file(folder / MANIFEST_NAME))


def accuracy_missed(manifest: dict[str, Any], max_drop: float | None) -> bool:
    """Whether an INT8 artifact missed its accuracy contract (or the plan's stricter limit)."""
    if manifest["precision"] != "int8":
        return False
    for run in manifest["parity"].get("runs", []):
        acc = run.get("accuracy") or {}
        if acc and (not acc.get("passed", True) or (
                max_drop is not None and (acc.get("drop_points") or 0.0) > max_drop)):
            return True
    return False


def _collect(root: Path, plans: list[ExportPlan], suffix: str = "") -> list[Gated]:
    found = []
    for p in plans:
        out = root / (p.folder + suffix)
        failed = out.with_name(out.name + FAILED_SUFFIX)
        if (out / MANIFEST_NAME).is_file():
            found.append(read_gated(out))
        elif (failed / MANIFEST_NAME).is_file():
            found.append(read_gated(failed))
    return found


def _run(req: ExportRequest, plans: list[ExportPlan], root: Path, suffix: str, echo: Echo,
         warn: Echo) -> list[Gated]:
    """One export of ``plans`` (all of one INT8 flavour and TensorRT precision)."""
    outs = {p.fmt: root / (p.folder + suffix) for p in plans}
    one = dataclasses.replace(
        req, outs=outs, keep_failed=True, out=None,
        int8_flavour=next((p.flavour for p in plans if p.flavour), "cpu"),
        trt_precision=next((p.trt_precision for p in plans if p.trt_precision), req.trt_precision))
    try:
        export_artifacts(one, [p.fmt for p in plans], echo, warn)
    except ParityFailed as exc:
        echo(f"gate: {exc}")
    return _collect(root, plans, suffix)


def export_plan_artifacts(req: ExportRequest, plans: list[ExportPlan], root: Path,
                          max_drop: float | None, echo: Echo, warn: Echo) -> list[Gated]:
    """Export every planned artifact into ``root``, gated; retry an INT8 that missed accuracy."""
    groups: dict[tuple[str, str], list[ExportPlan]] = {}
    for p in plans:  # one dynamo export per INT8 flavour and TensorRT precision
        groups.setdefault((p.flavour or "cpu", p.trt_precision or "fp16"), []).append(p)
    gated: list[Gated] = []
    for group in groups.values():
        gated += _run(req, group, root, "", echo, warn)
    for g in list(gated):
        if not accuracy_missed(g.manifest, max_drop):
            continue
        flavour = (g.manifest.get("int8") or {}).get("flavour") or "cpu"
        plan = ExportPlan("onnx-int8", "int8", flavour)
        echo(f"[{plan.folder}] missed its accuracy contract: one accuracy-controlled retry")
        retry = dataclasses.replace(req, int8_keep_float=True)
        gated += _run(retry, [plan], root, RETRY_SUFFIX, echo, warn)
    return gated


def artifacts_in(root: Path) -> list[Gated]:
    """``--artifacts DIR``: every artifact folder there (as ``resnet-bench --artifacts`` finds
    them), each read through the manifest schema; an unreadable one is one error line."""
    from bench.discover import find_manifests

    found = []
    for path in find_manifests(root):
        try:
            found.append(read_gated(path.parent))
        except UserError as exc:
            raise UserError(f"--artifacts: {exc}") from None
    return found


__all__ = [
    "RETRY_SUFFIX",
    "Gated",
    "accuracy_missed",
    "artifacts_in",
    "export_plan_artifacts",
    "read_gated",
]
