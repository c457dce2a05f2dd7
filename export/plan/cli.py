"""resnet-plan: the fastest artifact that keeps its precision contract on this machine, proven.

    resnet-plan --checkpoint best.pt               export, gate, time, choose (CPU here)
    resnet-plan --depth 50                         the same for seeded ResNet-50 weights
    resnet-plan --artifacts artifacts/             choose among artifacts already exported
    resnet-plan verify artifacts/plan/resnet50-cpu does the choice still hold here?
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..core.cli import (
    DefaultCommand,
    DefaultGroup,
    OneLineCommand,
    OneLineUsageError,
    model_options,
    one_line_errors,
    resolve_model_name,
    signals_as_interrupt,
)
from ..core.errors import UserError
from ..gate.parity import TOLERANCES
from .choose import OBJECTIVES
from .report import table
from .run import DEFAULT_TIME_BUDGET_S, SMALL_MODEL_TIME_BUDGET_S, Plan, PlanOptions

INT8_DROP: float = TOLERANCES["int8"].max_accuracy_drop or 1.0


@click.group(cls=DefaultGroup, default_command="run",
             context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Choose the fastest artifact and runtime settings that keep their contract here."""


@main.command("run", cls=DefaultCommand, hidden=True)
@model_options(default="resnet50")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Weights: a resnet-train checkpoint [default: seeded untrained weights].")
@click.option("--input-size", type=click.IntRange(min=8), default=None,
              help="Input side length [default: the model's].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of fresh weights.")
@click.option("--artifacts", type=click.Path(path_type=Path), default=None,
              help="Plan over artifacts already exported (a folder, or folders below it).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Target [default: cuda where a CUDA runtime runs here, else cpu].")
@click.option("--objective", type=click.Choice(list(OBJECTIVES)), default="latency",
              show_default=True, help="latency: p50 at --batch-size; throughput: images/s.")
@click.option("--batch-size", type=click.IntRange(min=1, max=1024), default=1,
              show_default=True, help="Batch size the objective is measured at.")
@click.option("--latency-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Largest acceptable p99 latency in ms at the batch size.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=INT8_DROP,
              show_default=True, help="Largest top-1 drop (points, held-out split) against "
                                      "eager FP32; the INT8 contract's limit by default.")
@click.option("--time-budget", type=click.FloatRange(min=1), default=None,
              help="Seconds for the whole plan; exports take what they take, the timing shares "
                   f"what is left [default: {DEFAULT_TIME_BUDGET_S:g} for ImageNet-sized models, "
                   f"{SMALL_MODEL_TIME_BUDGET_S:g} for small-image ones].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Plan folder [default: artifacts/plan/<model>-<device>].")
@one_line_errors
def run(depth: int | None, model: str | None, checkpoint: Path | None, input_size: int | None,
        seed: int, artifacts: Path | None, device: str | None, objective: str, batch_size: int,
        latency_budget: float | None, max_accuracy_drop: float, time_budget: float | None,
        out: Path | None) -> None:
    """Export, gate, time and choose; write artifacts/plan/<model>-<device>/."""
    if artifacts is not None and (checkpoint or depth or model):
        raise OneLineUsageError("--artifacts plans over existing artifacts: leave out "
                               "--checkpoint, --depth and --model")
    name = resolve_model_name(depth, model) if (depth or model) else None
    if max_accuracy_drop > INT8_DROP:
        click.echo(f"note: the INT8 gate still holds its own {INT8_DROP:g}-point limit", err=True)
    opts = PlanOptions(checkpoint, name, input_size, seed, artifacts, device, objective,
                       batch_size, latency_budget, max_accuracy_drop, time_budget, out)
    plan = Plan(opts, click.echo, lambda line: click.echo(line, err=True))
    try:
        with signals_as_interrupt():
            plan.run()
    except KeyboardInterrupt:
        doc = plan.finish(partial=True) if plan.staging is not None else None
        if doc is not None:
            click.echo(table(doc))
            click.echo(f"interrupted: partial plan written to {plan.out}", err=True)
        sys.exit(130)
    except BaseException:
        plan.abandon()
        raise
    doc = plan.finish(partial=False)
    click.echo(table(doc))
    if doc["choice"]["chosen"] is None:
        raise UserError(f"{doc['choice']['reason']}; nothing chosen (plan in {plan.out})")
    click.echo(f"chosen: {doc['choice']['chosen']} - {doc['choice']['reason']}")
    click.echo(f"wrote {plan.out}/: plan.json, plan.md, plan.csv, plan.png, chosen/")


@main.command("verify", cls=OneLineCommand)
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--seconds", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Timed seconds per leader.")
@one_line_errors
def verify(folder: Path, seconds: float) -> None:
    """Check the chosen artifact and re-time the leaders here (exit 1 if the choice changed)."""
    from .verify import verify_plan

    with signals_as_interrupt():
        verdict = verify_plan(folder, seconds, click.echo)
    click.echo(verdict.message)
    if not verdict.holds:
        sys.exit(1)


__all__ = ["main"]
