"""resnet-gate: a candidate model checked against the last release, as a CI step.

One process runs every check (the parity gate and ``verify`` of each artifact, accuracy of
candidate vs release on a labelled folder with paired statistics, speed of candidate vs release
timed in interleaved rounds) and writes what CI systems display: JUnit XML, a Markdown job
summary, JSON. Exit 0 pass, 1 a check failed, 2 a usage error (docs/ci.md).

Stands on the pipeline (export, verify), prediction (labelled folders), the parity gate's paired
statistics and the benchmark's interleaved timing; nothing imports it.
"""

from .checks import Check, Status
from .config import GateOptions

__all__ = ["Check", "GateOptions", "Status"]
