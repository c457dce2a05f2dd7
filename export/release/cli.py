"""``resnet-gate``: gate a candidate model against the last release, in CI.

    resnet-gate artifacts/train/resnet20-digits/best.pt --baseline release/resnet20-digits-onnx \\
        --data data/gate --junit reports/gate.xml
    resnet-gate candidate-artifact/ --config gate.toml

Exit 0: every check passed; 1: a check failed (or could not run); 2: a usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..core.cli import OneLineCommand, one_line_errors
from ..core.manifest import FORMATS
from .config import CHECK_GROUPS, DEFAULT_OUT_DIR, ON_UNRESOLVED, merge, read_config
from .run import format_outcome, run_gate

_PATH = click.Path(path_type=Path)


@click.command("resnet-gate", cls=OneLineCommand,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("candidate", type=_PATH)
@click.option("--baseline", type=_PATH, default=None,
              help="The release's artifact folder, the model the candidate would replace.")
@click.option("--data", type=_PATH, default=None,
              help="A labelled folder (one sub-folder of images per class) for the accuracy "
                   "check.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 100), default=None,
              metavar="POINTS", help="Top-1 points the candidate may lose on --data; it fails "
                                     "only where the paired (McNemar) test shows the loss is "
                                     "real [default: 1.0].")
@click.option("--max-slowdown", type=click.FloatRange(0, 1000), default=None, metavar="PERCENT",
              help="How much slower (p50, per interleaved round) the candidate may be "
                   "[default: 10].")
@click.option("--junit", type=_PATH, default=None, help="Write JUnit XML here.")
@click.option("--json", "json_path", type=_PATH, default=None, help="Write the JSON report here.")
@click.option("--markdown", type=_PATH, default=None,
              help="Write the Markdown summary here [default: append to $GITHUB_STEP_SUMMARY "
                   "when set].")
@click.option("--plot", type=_PATH, default=None,
              help="Write a PNG of the per-round speed ratios here.")
@click.option("--config", "config_path", type=_PATH, default=None,
              help="A TOML file with these settings (top level or [tool.resnet-gate]); "
                   "options given here win.")
@click.option("--out-dir", type=_PATH, default=None,
              help=f"Where a checkpoint candidate is exported [default: {DEFAULT_OUT_DIR}].")
@click.option("--fmt", type=click.Choice(list(FORMATS)), default=None,
              help="Format a checkpoint candidate is exported to [default: the release's].")
@click.option("--rounds", type=click.IntRange(3, 100), default=None,
              help="Interleaved timing rounds [default: 10].")
@click.option("--seconds", type=click.FloatRange(0.1, 600), default=None,
              help="Timed seconds per model and batch size [default: 3].")
@click.option("--latency-batch", type=click.IntRange(1, 4096), default=None,
              help="Batch size of the latency check [default: 1].")
@click.option("--throughput-batch", type=click.IntRange(1, 4096), default=None,
              help="Batch size of the throughput check [default: the release's opt batch].")
@click.option("--skip", type=click.Choice(list(CHECK_GROUPS)), multiple=True,
              help="Leave a group of checks out (repeatable).")
@click.option("--on-unresolved", type=click.Choice(list(ON_UNRESOLVED)), default=None,
              help="A check the data or runner cannot resolve: report it (JUnit skipped, exit "
                   "0) or fail the gate [default: report].")
@click.option("--overwrite", is_flag=True, default=None,
              help="Replace an artifact of other weights in --out-dir (the default folder is "
                   "always the gate's own).")
@one_line_errors
def main(candidate: Path, config_path: Path | None, json_path: Path | None,
         **given: Any) -> None:
    """Check CANDIDATE (a checkpoint, exported through the parity gate first, or an artifact
    folder) against the release: parity gate and verify of every artifact, accuracy on a
    labelled folder, speed timed side by side. Exit 0 pass, 1 failed, 2 usage error."""
    config = read_config(config_path) if config_path is not None else {}
    given["json"] = json_path
    given["skip"] = tuple(given["skip"])
    given["overwrite"] = given["overwrite"] or None  # absent: the config file's, else False
    options = merge(config, given)
    outcome = run_gate(candidate, options, echo=lambda line: click.echo(line, err=True))
    click.echo(format_outcome(outcome))
    raise SystemExit(outcome.exit_code)


if __name__ == "__main__":
    main()
