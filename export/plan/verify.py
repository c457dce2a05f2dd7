"""``resnet-plan verify PLAN_DIR``: is the plan's choice still right, here and now?

The chosen artifact's files (sha256) and gate are checked again (:func:`export.pipeline.
verify_artifact`), then the leaders the plan confirmed are re-timed here in short interleaved
rounds and chosen between by the same rule. The choice *holds* when the same candidate (runtime,
precision, artifact AND settings) wins, or the recorded choice is in the tie; otherwise the
message says what differs (e.g. the performance hint). Another CPU may choose differently, and
then the ISA of both machines is named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.environment import collect

from ..core.errors import UserError
from ..core.hardware import usable_cores
from ..core.models import ModelSpec
from ..pipeline import verify_artifact
from .choose import Choice, choose
from .measure import CONFIRM_ROUNDS, Phase, run_phase, timing_of
from .report import read_plan
from .space import PlanCandidate

Echo = Callable[[str], None]


@dataclass
class Verdict:
    holds: bool
    recorded: str
    now: Choice
    message: str


def _leaders(doc: dict, folder: Path) -> list[PlanCandidate]:
    found = []
    for c in doc["candidates"]:
        if not c.get("confirm") or not c.get("artifact"):
            continue
        path = Path(c["artifact"])
        found.append(PlanCandidate(c["runtime"], c["precision"], dict(c["settings"]),
                                   str(path if path.is_absolute() else folder / path), c["format"],
                                   gate=c.get("gate")))
    return found


def differences(recorded: dict[str, Any], now: PlanCandidate) -> str:
    """What tells the recorded choice from another candidate: "settings: performance_hint
    THROUGHPUT -> LATENCY", "runtime: onnxruntime -> openvino", ..."""
    parts = [f"{key}: {recorded.get(key)} -> {getattr(now, key)}"
             for key in ("runtime", "precision") if recorded.get(key) != getattr(now, key)]
    if Path(str(recorded.get("artifact"))).name != Path(str(now.artifact)).name:
        parts.append(f"artifact: {Path(str(recorded.get('artifact'))).name} -> "
                     f"{Path(str(now.artifact)).name}")
    then, here = recorded.get("settings") or {}, now.settings
    changed = [f"{k} {then.get(k, '-')} -> {here.get(k, '-')}"
               for k in sorted({*then, *here}) if then.get(k) != here.get(k)]
    if changed:
        parts.append("settings: " + ", ".join(changed))
    return "; ".join(parts) or "nothing recorded"


def verify_plan(folder: Path, seconds: float, echo: Echo) -> Verdict:
    folder = Path(folder)
    doc = read_plan(folder)
    if doc.get("partial"):
        raise UserError(f"{folder} is a partial (interrupted) plan: it chose nothing to verify")
    recorded = next((c for c in doc["candidates"] if c["status"] == "chosen"), None)
    if recorded is None:
        raise UserError(f"{folder}: the plan chose nothing ({doc['choice']['reason']})")
    verify_artifact(folder / "chosen", echo=lambda _line: None)
    echo(f"{folder / 'chosen'}: files and gate PASS")
    leaders = _leaders(doc, folder)
    cores = usable_cores()
    echo(f"re-timing {len(leaders)} leaders: {CONFIRM_ROUNDS} interleaved rounds, {seconds:g} s "
         "each")
    if not run_phase(leaders, [], ModelSpec.from_dict(doc["model"]), doc["batch_size"],
                     Phase("confirm", CONFIRM_ROUNDS, seconds), doc["objective"], cores, echo):
        raise KeyboardInterrupt
    timings = [t for c in leaders if (t := timing_of(c, "confirm", doc["objective"], (
        c.gate or {}).get("accuracy_drop"))) is not None]
    constraints = doc["constraints"]
    now = choose(timings, doc["objective"], constraints["latency_budget_ms"],
                 constraints["max_accuracy_drop"])
    by_id = {c.id: c for c in leaders}
    winner = by_id.get(now.chosen or "")
    # the full candidate: runtime, precision, artifact and settings (a settings change matters)
    holds = now.chosen == recorded["id"] or recorded["id"] in now.tied
    isa_then = doc["environment"]["cpu"]["isa"].get("isa")
    isa_now = collect(cores)["cpu"]["isa"].get("isa")
    what = f" (differs in {differences(recorded, winner)})" if winner is not None and \
        now.chosen != recorded["id"] else ""
    if holds and now.chosen == recorded["id"]:
        message = f"the choice holds here: {now.chosen} ({now.reason})"
    elif holds:
        message = (f"the choice holds here in a tie: the plan chose {recorded['id']}, this "
                   f"machine's tie goes to {now.chosen}{what} ({now.reason})")
    else:
        message = (f"the choice does NOT hold here: the plan chose {recorded['id']}, this "
                   f"machine now chooses {now.chosen or 'nothing'}{what} ({now.reason})")
        if isa_then != isa_now:
            message += f"; the plan ran on a {isa_then} CPU, this one is {isa_now}"
    return Verdict(holds, recorded["id"], now, message)


__all__ = ["Verdict", "differences", "verify_plan"]
