"""One gate run, start to finish: the artifact checks, accuracy, speed, then the reports.

The order matters only for cost: artifacts first (a candidate that fails its own gate is not
worth timing), then accuracy, then speed. A check that cannot run is an error of that check; the
rest still run, so a CI report always shows every check.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.environment import cpu_model, load_average

from ..core import cpu_features
from ..core.artifact import read_manifest
from ..core.errors import BadOption, UserError
from ..core.fileio import write_json
from .accuracy import accuracy_check
from .artifacts import Artifacts, artifact_checks, check_candidate_path
from .checks import Check, Status, gate_fails, run_check, timed
from .config import GateOptions, summary_target
from .plot import plot_speed
from .reports import document, markdown, write_junit, write_summary
from .speed import SpeedRequest, default_batches, speed_checks

Echo = Callable[[str], None]


@dataclass
class Outcome:
    checks: list[Check]
    passed: bool
    exit_code: int
    meta: dict[str, Any]


def check_inputs(candidate: Path, options: GateOptions) -> None:
    """Usage errors (exit 2) before anything runs: a wrong path is not a failed gate."""
    check_candidate_path(candidate)
    if options.data is not None and not options.data.is_dir():
        raise BadOption(f"--data {options.data}: not a folder (give a folder with one "
                        "sub-folder of images per class)")
    if options.baseline is None and options.data is not None:
        raise BadOption("--data needs --baseline: the accuracy check compares the candidate "
                        "with the release")
    if options.baseline is not None and options.baseline.resolve() == candidate.resolve():
        raise BadOption("the candidate and --baseline are the same folder: give the release's "
                        "artifact as --baseline")


def _not_run(name: str, group: str, why: str) -> Check:
    return Check(name, group, Status.SKIPPED, why)


def _blocked(arts: Artifacts, options: GateOptions, what: str) -> str | None:
    """Why a comparison cannot run, or None."""
    if what in options.skip:
        return f"--skip {what}"
    if options.baseline is None:
        return "no --baseline (the release's artifact) to compare with"
    if arts.candidate is None or arts.release is None:
        side = "candidate" if arts.candidate is None else "release"
        return f"the {side} failed its artifact checks"
    return None


def _same_classes(arts: Artifacts) -> None:
    assert arts.candidate is not None and arts.release is not None
    cand, rel = read_manifest(arts.candidate), read_manifest(arts.release)
    if cand["model"]["num_classes"] != rel["model"]["num_classes"] or \
            (cand.get("class_names") or None) != (rel.get("class_names") or None):
        raise UserError("the candidate's classes differ from the release's: a model of other "
                        "classes is not a candidate for this release")


def accuracy(arts: Artifacts, options: GateOptions) -> Check:
    name = "top-1 accuracy vs release"
    blocked = _blocked(arts, options, "accuracy") or \
        (None if options.data is not None else "no --data (a labelled folder)")
    if blocked:
        return _not_run(name, "accuracy", blocked)
    candidate, release, data = arts.candidate, arts.release, options.data
    assert candidate is not None and release is not None and data is not None

    def body(check: Check) -> None:
        _same_classes(arts)
        manifest = read_manifest(release)
        names = [str(n) for n in manifest.get("class_names") or
                 range(manifest["model"]["num_classes"])]
        accuracy_check(check, candidate, release, data, options.max_accuracy_drop, names)

    return run_check(Check(name, "accuracy"), body)


def speed(arts: Artifacts, options: GateOptions, echo: Echo) -> list[Check]:
    blocked = _blocked(arts, options, "speed")
    if blocked:
        return [_not_run("speed vs release", "speed", blocked)]
    assert arts.candidate is not None and arts.release is not None
    check = Check("speed vs release", "speed")
    checks = [check]  # an error before the timing is reported as this one check
    started = time.perf_counter()
    with timed(check):
        _same_classes(arts)
        req = SpeedRequest(arts.candidate, arts.release, options.max_slowdown, options.rounds,
                           options.seconds, default_batches(arts.release, options.latency_batch,
                                                            options.throughput_batch))
        checks = speed_checks(req, echo)
    for c in checks:
        c.seconds = (time.perf_counter() - started) / len(checks)
    return checks


def machine(environ: Mapping[str, str]) -> dict[str, Any]:
    load = load_average()
    return {"cpu": f"{cpu_model()} ({cpu_features.summary()})",
            "load_average": ", ".join(f"{v:.2f}" for v in load) if load else "unknown",
            "runner": environ.get("RUNNER_NAME") or environ.get("CI_RUNNER_DESCRIPTION") or ""}


def run_gate(candidate: Path, options: GateOptions, echo: Echo = print,
             environ: Mapping[str, str] | None = None) -> Outcome:
    """Every check, then every report asked for; the outcome says the exit code."""
    environ = os.environ if environ is None else environ
    check_inputs(candidate, options)
    checks, arts = artifact_checks(candidate, options, echo)
    checks.append(accuracy(arts, options))
    checks += speed(arts, options, echo)
    passed = not gate_fails(checks, options.on_unresolved)
    meta = {"candidate": str(candidate),
            "candidate_artifact": str(arts.candidate) if arts.candidate else None,
            "release": str(options.baseline) if options.baseline else None,
            **options.thresholds(), **machine(environ)}
    outcome = Outcome(checks, passed, 0 if passed else 1, meta)
    write_reports(outcome, options, environ, echo)
    return outcome


def write_reports(outcome: Outcome, options: GateOptions, environ: Mapping[str, str],
                  echo: Echo) -> None:
    """JUnit, JSON, Markdown (or GitHub's job summary) and the plot, as asked."""
    checks, meta = outcome.checks, outcome.meta
    if options.plot is not None and plot_speed(options.plot, checks):
        meta["plot"] = str(options.plot)
    if options.junit is not None:
        write_junit(options.junit, checks, meta)
        echo(f"wrote {options.junit}")
    if options.json is not None:
        write_json(options.json, document(checks, meta, outcome.passed, outcome.exit_code))
        echo(f"wrote {options.json}")
    target = summary_target(options, dict(environ))
    if target is not None:
        write_summary(target, markdown(checks, meta, outcome.passed),
                      step_summary=options.markdown is None)
        echo(f"wrote the summary to {target}")


def format_outcome(outcome: Outcome) -> str:
    """The console's last lines: one per check, then the verdict."""
    from .checks import LABELS

    lines = [f"{LABELS[c.status]:>12}  {c.group}: {c.name}: {c.message}" for c in outcome.checks]
    lines.append(f"resnet-gate: {'PASS' if outcome.passed else 'FAIL'} (exit {outcome.exit_code})")
    return "\n".join(lines)


__all__ = ["Outcome", "accuracy", "check_inputs", "format_outcome", "machine", "run_gate",
           "speed", "write_reports"]
