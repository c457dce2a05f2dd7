"""What the gate is asked: options from the command line over a small TOML file kept in the
user's repository (``--config``), over the defaults.

The file holds the same names as the options (``max-accuracy-drop`` or ``max_accuracy_drop``),
at its top level or under ``[tool.resnet-gate]`` (so pyproject.toml can hold them); paths in it
are relative to the file. An unknown key or a value of the wrong type is a usage error (exit 2):
a typo must not silently drop a threshold.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import BadOption, UserError
from ..core.fileio import open_regular

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: the defaults a team starts from: the INT8 gate's accuracy limit, a slowdown a user notices
DEFAULT_MAX_ACCURACY_DROP = 1.0
DEFAULT_MAX_SLOWDOWN = 10.0
DEFAULT_ROUNDS = 10
DEFAULT_SECONDS = 3.0
DEFAULT_OUT_DIR = Path("artifacts/gate-candidate")
CHECK_GROUPS = ("artifacts", "accuracy", "speed")
ON_UNRESOLVED = ("report", "fail")


@dataclass
class GateOptions:
    """Everything one gate run needs besides the candidate."""

    baseline: Path | None = None  # the release's artifact folder
    data: Path | None = None  # a labelled folder: one sub-folder per class
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP  # points of top-1
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN  # percent of p50 latency
    junit: Path | None = None
    json: Path | None = None
    markdown: Path | None = None  # default: $GITHUB_STEP_SUMMARY when set
    plot: Path | None = None
    out_dir: Path = DEFAULT_OUT_DIR  # where a checkpoint candidate is exported
    fmt: str | None = None  # its format [default: the release's, else onnx]
    rounds: int = DEFAULT_ROUNDS
    seconds: float = DEFAULT_SECONDS  # timed seconds per model and batch size
    latency_batch: int = 1
    throughput_batch: int | None = None  # default: the release's opt batch
    skip: tuple[str, ...] = ()
    on_unresolved: str = "report"
    overwrite: bool = False

    def thresholds(self) -> dict[str, Any]:
        return {"max_accuracy_drop_points": self.max_accuracy_drop,
                "max_slowdown_percent": self.max_slowdown, "on_unresolved": self.on_unresolved}


_FIELDS = {f.name: f for f in dataclasses.fields(GateOptions)}
_PATHS = {"baseline", "data", "junit", "json", "markdown", "plot", "out_dir"}
_NUMBERS = {"max_accuracy_drop": (0.0, 100.0), "max_slowdown": (0.0, 1000.0),
            "seconds": (0.1, 600.0)}
_INTEGERS = {"rounds": (3, 100), "latency_batch": (1, 4096), "throughput_batch": (1, 4096)}


def read_config(path: Path) -> dict[str, Any]:
    """The gate's settings in a TOML file, checked and with paths made relative to the file."""
    try:
        with open_regular(path) as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise BadOption(f"--config {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise BadOption(f"--config {path}: {exc.strerror or exc}") from None
    except UserError as exc:  # a FIFO or a folder
        raise BadOption(f"--config {exc}") from None
    table = doc.get("tool", {}).get("resnet-gate", doc) if "tool" in doc else doc
    if not isinstance(table, dict):
        raise BadOption(f"--config {path}: [tool.resnet-gate] must be a table")
    return {key.replace("-", "_"): _checked(path, key, value) for key, value in table.items()}


def _checked(path: Path, key: str, value: Any) -> Any:
    name = key.replace("-", "_")
    where = f"--config {path}: {key}"
    if name not in _FIELDS:
        known = ", ".join(sorted(k.replace("_", "-") for k in _FIELDS))
        raise BadOption(f"{where} is not a setting of resnet-gate (known: {known})")
    if name in _PATHS:
        if not isinstance(value, str) or not value:
            raise BadOption(f"{where} must be a path (a string)")
        return path.parent / value
    if name in _NUMBERS or name in _INTEGERS:
        lo, hi = _NUMBERS.get(name) or _INTEGERS[name]
        integer = name in _INTEGERS
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
                or not lo <= value <= hi:
            kind = "an integer" if integer else "a number"
            raise BadOption(f"{where} must be {kind} in {lo:g}..{hi:g}, got {value!r}")
        return value if integer else float(value)
    if name == "skip":
        if not isinstance(value, list) or any(v not in CHECK_GROUPS for v in value):
            raise BadOption(f"{where} must be a list of {', '.join(CHECK_GROUPS)}")
        return tuple(value)
    if name == "on_unresolved" and value not in ON_UNRESOLVED:
        raise BadOption(f"{where} must be one of {', '.join(ON_UNRESOLVED)}")
    if name == "overwrite" and not isinstance(value, bool):
        raise BadOption(f"{where} must be true or false")
    if name == "fmt" and not isinstance(value, str):
        raise BadOption(f"{where} must be a format name")
    return value


def merge(config: dict[str, Any], given: dict[str, Any]) -> GateOptions:
    """Defaults, then the config file, then the options given on the command line (None and
    empty tuples mean "not given")."""
    values = dict(config)
    values.update({k: v for k, v in given.items() if v is not None and v != ()})
    return GateOptions(**values)


def summary_target(options: GateOptions, environ: dict[str, str]) -> Path | None:
    """Where the Markdown summary goes: ``--markdown``, else GitHub's job summary file."""
    if options.markdown is not None:
        return options.markdown
    step_summary = environ.get("GITHUB_STEP_SUMMARY")
    return Path(step_summary) if step_summary else None


__all__ = ["CHECK_GROUPS", "DEFAULT_OUT_DIR", "GateOptions", "ON_UNRESOLVED", "merge",
           "read_config", "summary_target"]
