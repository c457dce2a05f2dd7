"""Running a command in-process and reading its one error line: the same checks everywhere."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import click
from click.testing import CliRunner, Result


def invoke(cli: click.Command, args: Any, *, catch_exceptions: bool = False,
           **kwargs: Any) -> Result:
    """Run ``cli`` with ``args`` (any objects: paths are turned into strings). An exception that
    escapes the command fails the test unless ``catch_exceptions`` keeps it in the result."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions,
                              **kwargs)


def command(cli: click.Command, **options: Any) -> Callable[[Iterable[Any]], Result]:
    """``invoke`` bound to one command: ``command(main)(["--depth", 18])``."""
    return lambda args: invoke(cli, args, **options)


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)


def error_line(result: Result, code: int = 1) -> str:
    """The run failed with ``code``, no traceback, and exactly one ``Error: ...`` line on
    stderr; that line."""
    no_traceback(result)
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    return errors[0]


def only_error_line(result: Result, code: int) -> str:
    """Like :func:`error_line`, and stderr holds nothing else but progress bars (redrawn with
    carriage returns and cleared when an epoch ends: not lines a user is left with)."""
    assert result.exit_code == code, result.output
    lines = [line.strip() for line in re.split(r"[\r\n]", result.stderr)
             if line.strip() and not re.match(r"\s*epoch \d+/\d+:", line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def artifact_listing(folder: Any, *names: str) -> list[str]:
    """What an artifact folder holds: ``names`` and its manifest, plus the gate's reference inputs
    where its gate judged a precision a machine of another kind re-checks (INT8, or BF16 on a
    CPU with native BF16)."""
    import json
    from pathlib import Path

    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    judged = manifest["parity"].get("contracts") or {}
    carried = manifest["precision"] == "int8" or judged.get("bf16") is True
    return sorted(["manifest.json", *names, *(["gate-reference.npz"] if carried else [])])
