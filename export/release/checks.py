"""One check's outcome: what JUnit, Markdown and JSON all report, and what decides the exit code.

A check is ``passed``, ``failed`` (the candidate is worse than allowed, proven), ``error`` (it
could not run: a missing runtime, an unreadable file), ``unresolved`` (the data or the runner
cannot tell whether the threshold holds: said as such, never as a pass or a fail) or ``skipped``
(not asked for). A failure or an error fails the gate; an unresolved check fails it only where
the user asked for that (``on_unresolved = "fail"``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..core.errors import BackendUnavailable, UserError, printable


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    UNRESOLVED = "unresolved"
    SKIPPED = "skipped"


#: how each status reads in the summary
LABELS = {Status.PASSED: "PASS", Status.FAILED: "FAIL", Status.ERROR: "ERROR",
          Status.UNRESOLVED: "NOT RESOLVED", Status.SKIPPED: "skipped"}


@dataclass
class Check:
    """One test case: a name, its status, one line with the figures, the figures themselves."""

    name: str
    group: str  # the JUnit classname: artifacts, accuracy, speed
    status: Status = Status.PASSED
    message: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    details: str = ""  # longer text: the parity table, the per-round figures
    seconds: float = 0.0

    def fails(self, on_unresolved: str = "report") -> bool:
        """Whether this check fails the gate."""
        return self.status in (Status.FAILED, Status.ERROR) or \
            (self.status is Status.UNRESOLVED and on_unresolved == "fail")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "status": self.status.value,
                "message": self.message, "properties": self.properties,
                "details": self.details, "seconds": round(self.seconds, 3)}


@contextmanager
def timed(check: Check) -> Iterator[Check]:
    """Time ``check``; a user error or a missing runtime inside it makes it an ``error`` (one
    line) instead of stopping the gate, so every other check still reports."""
    started = time.perf_counter()
    try:
        yield check
    except (UserError, BackendUnavailable) as exc:
        check.status, check.message = Status.ERROR, printable(exc)
    finally:
        check.seconds = time.perf_counter() - started


def run_check(check: Check, body: Callable[[Check], None]) -> Check:
    """``body(check)`` under :func:`timed`: it fills in the status, message and figures."""
    with timed(check):
        body(check)
    return check


def gate_fails(checks: list[Check], on_unresolved: str = "report") -> bool:
    return any(c.fails(on_unresolved) for c in checks)


__all__ = ["LABELS", "Check", "Status", "gate_fails", "run_check", "timed"]
