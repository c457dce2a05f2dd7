"""The gate's reports: JUnit XML (one test case per check, as GitLab, Jenkins, Azure Pipelines
and GitHub's test reporters read it), a Markdown summary (GitHub's job summary) and JSON.

JUnit follows the common shape (testsuites > testsuite > testcase, with properties, failure,
error, skipped and system-out): a failed check is a ``<failure>`` whose message carries the
figures, an error an ``<error>``, an unresolved or skipped check a ``<skipped>`` with the reason.
Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.fileio import atomic_path
from .checks import LABELS, Check, Status

SUITE = "resnet-gate"
#: GitHub refuses a job summary over 1 MiB per step (the file as the step leaves it)
STEP_SUMMARY_LIMIT = 1024 * 1024
#: characters of a check's details kept in the Markdown (the JSON keeps them all)
DETAILS_CHARS = 4000


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _properties(parent: ET.Element, values: Mapping[str, Any]) -> None:
    """Scalars and short lists as JUnit properties (nested tables stay in the JSON report)."""
    items = [(k, v) for k, v in values.items() if v is not None and not isinstance(v, dict)]
    if items:
        props = ET.SubElement(parent, "properties")
        for name, value in items:
            ET.SubElement(props, "property", name=name, value=_text(value))


def junit_tree(checks: list[Check], meta: dict[str, Any]) -> ET.ElementTree:
    counts = {s: sum(c.status is s for c in checks) for s in Status}
    total = sum(c.seconds for c in checks)
    stats = {"tests": str(len(checks)), "failures": str(counts[Status.FAILED]),
             "errors": str(counts[Status.ERROR]),
             "skipped": str(counts[Status.UNRESOLVED] + counts[Status.SKIPPED]),
             "time": f"{total:.3f}"}
    root = ET.Element("testsuites", {"name": SUITE, **stats})
    suite = ET.SubElement(root, "testsuite", {
        "name": SUITE, **stats,
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "hostname": socket.gethostname() or "localhost"})
    _properties(suite, {k: v for k, v in meta.items() if not isinstance(v, dict)})
    for check in checks:
        case = ET.SubElement(suite, "testcase", classname=f"{SUITE}.{check.group}",
                             name=check.name, time=f"{check.seconds:.3f}")
        _properties(case, {"status": check.status.value, **check.properties})
        if check.status is Status.FAILED:
            ET.SubElement(case, "failure", message=check.message,
                          type="GateFailure").text = check.message
        elif check.status is Status.ERROR:
            ET.SubElement(case, "error", message=check.message,
                          type="GateError").text = check.message
        elif check.status in (Status.UNRESOLVED, Status.SKIPPED):
            ET.SubElement(case, "skipped", message=f"{LABELS[check.status]}: {check.message}")
        if check.details:
            ET.SubElement(case, "system-out").text = check.details
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(path: Path, checks: list[Check], meta: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        junit_tree(checks, meta).write(tmp, encoding="utf-8", xml_declaration=True)


def markdown(checks: list[Check], meta: dict[str, Any], passed: bool,
             details_chars: int = DETAILS_CHARS) -> str:
    """The job summary: verdict, what was compared, one row per check, details folded."""
    lines = [f"## resnet-gate: {'PASS' if passed else 'FAIL'}", "",
             f"Candidate `{meta.get('candidate')}` against release `{meta.get('release')}`"
             f" on {meta.get('cpu', 'this runner')} (load {meta.get('load_average', '?')}).", "",
             "| check | result | figures |", "|---|---|---|"]
    for c in checks:
        message = c.message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c.name} | **{LABELS[c.status]}** | {message} |")
    shown = [c for c in checks if c.details]
    for c in shown:
        text = c.details if len(c.details) <= details_chars else \
            c.details[:details_chars] + f"\n... ({len(c.details) - details_chars} more " \
            "characters in the JSON report)"
        lines += ["", f"<details><summary>{c.name}</summary>", "", "```text", text, "```", "",
                  "</details>"]
    return "\n".join(lines) + "\n"


def write_summary(path: Path, text: str, step_summary: bool) -> None:
    """Append to GitHub's job summary file (``step_summary``), keeping it within 1 MiB, or
    write the --markdown file."""
    if step_summary:
        used = path.stat().st_size if path.exists() else 0
        room = STEP_SUMMARY_LIMIT - used
        data = text.encode()
        if len(data) > room:
            note = b"\n\n(summary cut at GitHub's 1 MiB limit; the JSON report has it all)\n"
            keep = room - len(note)
            data = data[:keep].decode(errors="ignore").encode() + note if keep > 0 else b""
        with open(path, "ab") as fh:
            fh.write(data)
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def document(checks: list[Check], meta: dict[str, Any], passed: bool,
             exit_code: int) -> dict[str, Any]:
    return {"kind": "resnet-gate", "schema": 1, "passed": passed, "exit_code": exit_code,
            **meta, "checks": [c.to_dict() for c in checks]}


__all__ = ["STEP_SUMMARY_LIMIT", "write_summary", "document", "junit_tree", "markdown",
           "write_junit"]
