"""The artifact checks: a checkpoint candidate exported through the parity gate (as
``resnet-export`` does), then ``verify`` of every artifact (files, manifest, the gate again).

A candidate that fails its gate, or a release whose files no longer match their manifest, is a
failed check (exit 1), not a crash: every other check still runs and reports.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.agreement import check_digest
from ..core.artifact import read_manifest, verify_files
from ..core.errors import BadOption, ParityFailed, UserError, printable
from ..core.manifest import FORMATS, MANIFEST_NAME, Manifest
from ..core.shapes import BatchRange
from ..pipeline import ExportRequest, export_artifacts, verify_artifact
from .checks import Check, Status, timed
from .config import DEFAULT_OUT_DIR, GateOptions

Echo = Callable[[str], None]
#: escape sequences and progress bars have no place in a report
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Artifacts:
    """The two folders the comparisons run on (None: not there, or it failed its checks)."""

    candidate: Path | None
    release: Path | None
    release_manifest: Manifest | None


def is_artifact(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


def read_release(options: GateOptions) -> Manifest | None:
    """The release's manifest, or a usage error (exit 2) when --baseline is no artifact."""
    if options.baseline is None:
        return None
    if not is_artifact(options.baseline):
        raise BadOption(f"--baseline {options.baseline}: not an artifact folder (no "
                        f"{MANIFEST_NAME}); give the release's folder that resnet-export wrote")
    return read_manifest(options.baseline)


def check_candidate_path(candidate: Path) -> None:
    """A checkpoint file or an artifact folder; anything else is a usage error."""
    if candidate.is_dir() and not is_artifact(candidate):
        raise BadOption(f"{candidate}: a folder without {MANIFEST_NAME} is not an artifact; "
                        "give an artifact folder or a checkpoint file")
    if not candidate.is_dir() and not candidate.is_file():
        raise BadOption(f"{candidate}: no such checkpoint file or artifact folder")


def _collect(echo: Echo, lines: list[str]) -> Echo:
    def both(line: str) -> None:
        echo(line)
        lines.append(_CONTROL.sub("", line))
    return both


def export_candidate(checkpoint: Path, options: GateOptions, release: Manifest | None,
                     echo: Echo) -> tuple[Check, Path | None]:
    """Export ``checkpoint`` through the parity gate, in the release's format and batch range."""
    fmt = options.fmt or (release["format"] if release is not None else "onnx")
    if fmt not in FORMATS:
        raise BadOption(f"--fmt {fmt}: choose from {', '.join(FORMATS)}")
    batch = BatchRange.from_dict(release["batch_range"]) if release is not None else None
    # the gate's own folder is replaced by every run; a folder the user named only when asked
    overwrite = options.overwrite or options.out_dir == DEFAULT_OUT_DIR
    request = ExportRequest(fmt=fmt, checkpoint=checkpoint, batch=batch,
                            out_dir=options.out_dir, overwrite=overwrite)
    check = Check(f"candidate export to {fmt} through the parity gate", "artifacts",
                  properties={"checkpoint": str(checkpoint), "format": fmt})
    lines: list[str] = []
    out = None
    with timed(check):
        try:
            result = export_artifacts(request, [fmt], _collect(echo, lines),
                                      _collect(echo, lines))[0]
        except ParityFailed as exc:
            check.status, check.message = Status.FAILED, str(exc)
        else:
            out = result.out
            check.message = f"exported to {out}; parity gate passed"
            check.properties["folder"] = str(out)
    check.details = "\n".join(lines)
    return check, out


def verify_check(role: str, folder: Path, echo: Echo, regate: bool = True) -> Check:
    """``resnet-export verify`` of one folder as a check: files, manifest digest, the gate.
    ``regate=False`` (an artifact the gate judged moments ago in this run): files and
    manifest only."""
    check = Check(f"{role} verify ({folder.name})", "artifacts",
                  properties={"folder": str(folder)})
    lines: list[str] = []
    with timed(check):
        if not regate:
            try:
                _files_only(folder, check)
            except UserError as exc:
                check.status, check.message = Status.FAILED, printable(exc)
            return check
        try:
            parity = verify_artifact(folder, _collect(echo, lines))
        except UserError as exc:  # a failed gate, a changed file, an edited manifest
            check.status, check.message = Status.FAILED, printable(exc)
        else:
            check.message = (f"{folder}: every file matches its sha256; parity gate passed on "
                             f"{len(parity.get('runs', []))} runtime(s)")
            check.properties.update(_parity_figures(parity))
    check.details = "\n".join(lines)
    return check


def _files_only(folder: Path, check: Check) -> None:
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    sealed = check_digest(folder, manifest)
    check.message = (f"{folder}: every file matches its sha256, {MANIFEST_NAME} "
                     f"{'matches its digest' if sealed else 'records no digest'}; parity gate "
                     "passed at the export above")


def _parity_figures(parity: dict[str, Any]) -> dict[str, Any]:
    """The worst figures over the runtimes that judged the artifact."""
    summaries = [run.get("summary") or {} for run in parity.get("runs", [])]
    summaries = [s for s in summaries if s]
    if not summaries:
        return {}
    return {"runtimes": ", ".join(str(r.get("candidate")) for r in parity["runs"]),
            "max_abs_error": max(s["max_abs_error"] for s in summaries),
            "min_cosine": min(s["min_cosine"] for s in summaries),
            "top1_agreement": min(s["top1_agreement"] for s in summaries)}


def artifact_checks(candidate: Path, options: GateOptions, echo: Echo
                    ) -> tuple[list[Check], Artifacts]:
    """Export (a checkpoint) and verify both sides; the folders that passed are compared."""
    release_manifest = read_release(options)
    checks: list[Check] = []
    folder: Path | None = candidate
    if not is_artifact(candidate):
        check, folder = export_candidate(candidate, options, release_manifest, echo)
        checks.append(check)
    skip = "artifacts" in options.skip
    if folder is not None and not skip:
        checks.append(verify_check("candidate", folder, echo, regate=not checks))
        if checks[-1].status is not Status.PASSED:
            folder = None
    release = options.baseline
    if release is not None and not skip:
        checks.append(verify_check("release", release, echo))
        if checks[-1].status is not Status.PASSED:
            release = None
    return checks, Artifacts(folder, release, release_manifest)


__all__ = ["Artifacts", "artifact_checks", "check_candidate_path", "export_candidate",
           "is_artifact", "read_release", "verify_check"]
