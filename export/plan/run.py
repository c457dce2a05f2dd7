"""One plan, start to finish: export and gate -> candidate space -> screen -> confirm -> choose ->
the plan folder. Written in a staging folder beside the output and renamed into place at the end
(also when interrupted: a partial plan, marked as such, replaces nothing but an earlier plan).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.environment import collect

from ..core.errors import UserError
from ..core.fileio import current_umask
from ..core.folders import recover_interrupted, replace_folder, staging_prefix
from ..core.hardware import usable_cores
from ..core.manifest import STAGING_SUFFIX
from ..core.models import ModelSpec, default_spec
from ..core.shapes import BatchRange
from ..pipeline import ExportRequest, resolve_source
from ..runtime.registry import RUNTIMES
from .choose import Choice, choose, constraint_failure, pareto_front
from .exports import Gated, artifacts_in, export_plan_artifacts
from .measure import LEADERS, baseline, phases, run_phase, timing_of
from .report import PLAN_KIND, PLAN_SCHEMA, check_plan_out, write_chosen, write_reports
from .space import PlanCandidate, candidates_for, export_space

Echo = Callable[[str], None]
#: the default time box: ImageNet-sized models (a ResNet-50 CPU plan on 2 cores in about 15
#: minutes), and the small-image ones (tiny per image: about 3 minutes)
DEFAULT_TIME_BUDGET_S = 900.0
SMALL_MODEL_TIME_BUDGET_S = 150.0


def default_time_budget(spec: ModelSpec) -> float:
    return SMALL_MODEL_TIME_BUDGET_S if spec.architecture.kind == "cifar" \
        else DEFAULT_TIME_BUDGET_S


@dataclass
class PlanOptions:
    checkpoint: Path | None = None
    model: str | None = None
    input_size: int | None = None
    seed: int = 0
    artifacts: Path | None = None
    device: str | None = None
    objective: str = "latency"
    batch_size: int = 1
    latency_budget_ms: float | None = None
    max_accuracy_drop: float = 1.0
    time_budget_s: float | None = None  # None: default_time_budget(the model)
    out: Path | None = None


def default_device() -> str:
    """cuda where a CUDA runtime of the registry can run here, else cpu."""
    return "cuda" if any(i.device == "cuda" and i.available for i in RUNTIMES.values()) \
        else "cpu"


def plan_spec(opts: PlanOptions) -> tuple[ModelSpec, list[Gated] | None]:
    if opts.artifacts is not None:
        found = artifacts_in(opts.artifacts)
        if not found:
            raise UserError(f"no artifact under {opts.artifacts}")
        return ModelSpec.from_dict(found[0].manifest["model"]), found
    if opts.checkpoint is not None:
        return resolve_source(ExportRequest(checkpoint=opts.checkpoint, model=opts.model,
                                            input_size=opts.input_size)).spec, None
    return default_spec(opts.model or "resnet50", None, None, opts.input_size), None


def default_out(spec: ModelSpec, device: str) -> Path:
    return Path("artifacts/plan") / f"{spec.name}-{device}"


class Plan:
    """The state of one plan run, so an interruption can still write what it has."""

    def __init__(self, opts: PlanOptions, echo: Echo, warn: Echo):
        self.opts, self.echo, self.warn = opts, echo, warn
        self.started = time.perf_counter()
        self.device = opts.device or default_device()
        self.spec, self.given = plan_spec(opts)
        if opts.time_budget_s is None:
            opts.time_budget_s = default_time_budget(self.spec)
        self.out = Path(opts.out) if opts.out else default_out(self.spec, self.device)
        self.cores = usable_cores()
        self.environment = collect(self.cores)
        self.candidates: list[PlanCandidate] = []
        self.choice = Choice(None, reason="not chosen yet")
        self.staging: Path | None = None
        self.chosen_folder: str | None = None

    # -- the steps -------------------------------------------------------------------------

    def _gated(self, root: Path) -> list[Gated]:
        if self.given is not None:
            return self.given
        wanted, pruned = export_space(self.device)
        self.candidates += pruned
        spec = self.spec
        default = BatchRange.default_for(spec)
        req = ExportRequest(checkpoint=self.opts.checkpoint, model=self.opts.model or spec.name,
                            input_size=self.opts.input_size, seed=self.opts.seed,
                            batch_parts=(None, None, max(default.max, self.opts.batch_size)))
        self.echo(f"exporting {', '.join(p.folder for p in wanted)} of {spec.name} through the "
                  "pipeline and its gate")
        log: list[str] = []
        gated = export_plan_artifacts(req, wanted, root / "artifacts",
                                      self.opts.max_accuracy_drop, log.append, log.append)
        for g in gated:
            self.echo(f"  {g.folder.name}: gate {gate_line(g.manifest)}")
        return gated

    def run(self) -> None:
        recover_interrupted(self.out)
        check_plan_out(self.out)
        if self.opts.artifacts is not None and _inside(Path(self.opts.artifacts), self.out):
            raise UserError(f"--artifacts {self.opts.artifacts} is inside --out {self.out}, "
                            "which the plan replaces: choose another --out")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=staging_prefix(self.out),
                                             suffix=STAGING_SUFFIX, dir=self.out.parent))
        self.staging.chmod(0o777 & ~current_umask())
        try:
            gated = self._gated(self.staging)
        except KeyboardInterrupt:  # keep the artifacts already gated in the partial plan
            exported = self.staging / "artifacts"
            gated = artifacts_in(exported) if exported.is_dir() and any(exported.iterdir()) \
                else []
            self._add(gated)
            raise
        self._add(gated)
        self._measure()

    def _add(self, gated: list[Gated]) -> None:
        for g in gated:
            self.candidates += candidates_for(g.folder, g.manifest, g.sha256, self.device,
                                              self.cores, self.opts.objective)

    def _measure(self) -> None:
        todo = [c for c in self.candidates if c.status == "unmeasured"]
        self.echo(f"{len(todo)} candidates to time, {len(self.candidates) - len(todo)} pruned")
        extra = []
        fp32 = next((c for c in todo if c.precision == "fp32" and c.fmt == "onnx"), None)
        if fp32 is not None and self.device == "cpu":
            base, cand = baseline(Path(str(fp32.artifact)), self.spec, self.opts.batch_size)
            self.candidates.append(base)
            extra.append((base, cand))
        left = float(self.opts.time_budget_s or 0) - (time.perf_counter() - self.started)
        screen, confirm = phases(left, len(todo) + len(extra))
        self.echo(f"screening: {screen.rounds} interleaved rounds, {screen.seconds:.2g} s each "
                  f"candidate")
        if not run_phase(todo, extra, self.spec, self.opts.batch_size, screen,
                         self.opts.objective, self.cores, self.echo):
            raise KeyboardInterrupt
        leaders = self._leaders(todo)
        if leaders:
            self.echo(f"confirming {len(leaders)} leaders: {confirm.rounds} interleaved rounds, "
                      f"{confirm.seconds:.2g} s each")
            if not run_phase(leaders, [], self.spec, self.opts.batch_size, confirm,
                             self.opts.objective, self.cores, self.echo):
                raise KeyboardInterrupt
        self._decide(todo, leaders)

    def _timing(self, c: PlanCandidate, phase: str) -> Any:
        return timing_of(c, phase, self.opts.objective, (c.gate or {}).get("accuracy_drop"))

    def _leaders(self, todo: list[PlanCandidate]) -> list[PlanCandidate]:
        sign = -1 if self.opts.objective == "throughput" else 1
        eligible = [(t, c) for c in todo if (t := self._timing(c, "screen")) is not None
                    and constraint_failure(t, self.opts.latency_budget_ms,
                                           self.opts.max_accuracy_drop) is None]
        eligible.sort(key=lambda tc: sign * tc[0].value)
        return [c for _, c in eligible[:LEADERS]]

    def _decide(self, todo: list[PlanCandidate], leaders: list[PlanCandidate]) -> None:
        opts = self.opts
        confirmed = [t for c in leaders if (t := self._timing(c, "confirm")) is not None]
        screened = [t for c in todo if (t := self._timing(c, "screen")) is not None]
        # no leader: every screened candidate broke a constraint (choose says which)
        self.choice = choose(confirmed or screened, opts.objective, opts.latency_budget_ms,
                             opts.max_accuracy_drop)
        best = {c.id: self._timing(c, "confirm") or self._timing(c, "screen") for c in todo}
        measured = [t for t in best.values() if t is not None]
        over = {t.id: why for t in measured if (why := constraint_failure(
            t, opts.latency_budget_ms, opts.max_accuracy_drop))}
        front = set(pareto_front([t for t in measured if t.id not in over], opts.objective))
        for c in todo:
            if best[c.id] is None:
                continue
            c.status = ("chosen" if c.id == self.choice.chosen else "over-budget" if c.id in over
                        else "pareto" if c.id in front else "dominated")
            c.reason = over.get(c.id) or c.reason
        self.choice.over_budget = over
        self.choice.pareto = sorted(front)
        chosen = next((c for c in todo if c.id == self.choice.chosen), None)
        if chosen is not None and self.staging is not None:
            write_chosen(self.staging / "chosen", Path(str(chosen.artifact)), chosen,
                         self._deploy(chosen))
            self.chosen_folder = str(self.out / "chosen")

    def _deploy(self, c: PlanCandidate) -> dict[str, Any]:
        return {"runtime": c.runtime, "precision": c.precision, "settings": dict(c.settings),
                "objective": self.opts.objective, "batch_size": self.opts.batch_size,
                "plan": {"id": c.id, "tie": self.choice.tie, "reason": self.choice.reason,
                         "cpu_isa": self.environment["cpu"]["isa"].get("isa"),
                         "cpu_model": self.environment["cpu"]["model"],
                         "figures": c.confirm}}

    # -- the plan folder -------------------------------------------------------------------

    def document(self, partial: bool) -> dict[str, Any]:
        cands = []
        for c in self.candidates:
            d = c.to_dict()
            if c.artifact and self.staging is not None and _inside(Path(c.artifact),
                                                                   self.staging):
                d["artifact"] = str(Path(c.artifact).relative_to(self.staging))
            cands.append(d)
        choice = self.choice
        return {
            "kind": PLAN_KIND, "schema_version": PLAN_SCHEMA, "partial": partial,
            "model": self.spec.to_dict(), "device": self.device,
            "environment": self.environment,
            "objective": self.opts.objective, "batch_size": self.opts.batch_size,
            "constraints": {"latency_budget_ms": self.opts.latency_budget_ms,
                            "max_accuracy_drop": self.opts.max_accuracy_drop},
            "time_budget_s": self.opts.time_budget_s,
            "elapsed_s": time.perf_counter() - self.started,
            "source": {"checkpoint": str(self.opts.checkpoint) if self.opts.checkpoint else None,
                       "artifacts": str(self.opts.artifacts) if self.opts.artifacts else None,
                       "seed": self.opts.seed},
            "choice": {"chosen": None if partial else choice.chosen,
                       "tie": choice.tie, "tied": choice.tied, "runner_up": choice.runner_up,
                       "ratio": choice.ratio, "ratio_iqr": choice.spread,
                       "reason": "interrupted: nothing chosen" if partial else choice.reason,
                       "rule": "winner ahead of the runner-up beyond the interquartile range "
                               "of the per-round ratios; otherwise a tie, won by the stricter "
                               "contract (fp32 > fp16 > bf16 > int8)"},
            "chosen_folder": None if partial else self.chosen_folder,
            "candidates": cands,
        }

    def finish(self, partial: bool) -> dict[str, Any]:
        """Write the reports into the staging folder and move it into place."""
        assert self.staging is not None
        if partial:
            shutil.rmtree(self.staging / "chosen", ignore_errors=True)
        doc = self.document(partial)
        write_reports(self.staging, doc)
        check_plan_out(self.out)  # again: it may have changed while the plan ran
        replace_folder(self.staging, self.out)
        self.staging = None
        return doc

    def abandon(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def gate_line(manifest: dict[str, Any]) -> str:
    """Each runtime's verdict, as the gate recorded it: "PASS on openvino[cpu,int8]; FAIL on
    onnxruntime[CPU,int8]" (never one word for all of them)."""
    runs = manifest["parity"].get("runs", [])
    parts = [f"{word} on {', '.join(r['candidate'] for r in runs if bool(r.get('passed')) is ok)}"
             for word, ok in (("PASS", True), ("FAIL", False))
             if any(bool(r.get("passed")) is ok for r in runs)]
    return "; ".join(parts) or "judged on no runtime"


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


__all__ = ["DEFAULT_TIME_BUDGET_S", "SMALL_MODEL_TIME_BUDGET_S", "Plan", "PlanOptions",
           "default_device", "default_out", "default_time_budget", "gate_line"]
