#!/usr/bin/env python3
"""The benchmark harness's own cost per iteration, against ResNet-18's batch-1 latency.

Runs ``resnet-bench --depth 18 --batch-sizes 1 --backends null,torch`` (one process, one run):
the ``null`` runner does nothing, so its time per iteration is what the harness itself adds to
every measured iteration (timer calls, the loop's stopping rules, the progress callback, the
runner's ``infer`` wrapper). The target: under 1% of ResNet-18's batch-1 p50.

    PYTHONPATH=. python3 scripts/bench_overhead.py [--device cpu] [--out DIR] [-- extra options]
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

LIMIT = 0.01


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Output folder [default: artifacts/bench/overhead-<UTC time>].")
@click.argument("extra", nargs=-1)
def main(device: str, out: Path | None, extra: tuple[str, ...]) -> None:
    """Measure the harness overhead and compare it with ResNet-18 at batch 1."""
    from bench.cli import main as bench

    out = out or Path("artifacts/bench") / datetime.now(timezone.utc).strftime(
        "overhead-%Y%m%d-%H%M%S")
    args = ["run", "--depth", "18", "--batch-sizes", "1", "--backends", "null,torch",
            "--device", device, "--out", str(out), *extra]
    try:
        bench.main(args, standalone_mode=False)
    except SystemExit as exc:  # Ctrl-C (130) or an error: nothing to compare
        sys.exit(exc.code)
    doc = json.loads((out / "bench.json").read_text())
    rows = {r["backend"]: r for r in doc["results"] if r["timing"] == "e2e"}
    null, model = rows["null"], rows["torch"]
    per_iter_ms = null["wall_s"] / null["iterations"] * 1e3  # loop wall time / iterations
    ratio = per_iter_ms / model["p50_ms"]
    click.echo(f"harness overhead: {per_iter_ms * 1e3:.2f} us per iteration (null runner: "
               f"{null['iterations']} iterations, p50 {null['p50_ms'] * 1e3:.2f} us, "
               f"p99 {null['p99_ms'] * 1e3:.2f} us)")
    click.echo(f"ResNet-18 batch 1 ({model['device']}, torch eager): p50 {model['p50_ms']:.2f} ms")
    verdict = "OK" if ratio < LIMIT else "TOO HIGH"
    click.echo(f"overhead / latency = {ratio:.5%} (limit {LIMIT:.0%}): {verdict}")
    sys.exit(0 if ratio < LIMIT else 1)


if __name__ == "__main__":
    main()
