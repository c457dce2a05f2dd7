"""``resnet-batch``: classify a folder, a list, WebDataset shards or Parquet files in bulk, into
Parquet, resumable with every image exactly once (docs/batch.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.cli import LazyChoice, OneLineCommand, OneLineUsageError, one_line_errors, thread_option
from ..core.errors import UserError, printable
from ..predict.runtimes import runtime_choices
from ..predict.scoring import format_score
from .options import BatchOptions


def say(line: str) -> None:
    click.echo(line, err=True)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("source", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The job's folder: predictions/, errors.parquet, job.json. Rerun the same "
                   "command to continue a stopped job.")
@click.option("--top-k", "top", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes kept per image.")
@click.option("--logits", is_flag=True, help="Also keep every image's logits.")
@click.option("--column", default=None,
              help="The Parquet sources' column of encoded image bytes.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per runner call [default: the plan's, else the artifact's opt].")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Images per committed shard (the unit of resumption).")
@click.option("--workers", type=thread_option("--workers", minimum=0), default=None,
              help="Decode worker processes [default: half the cores; 0: decode in the main "
                   "process].")
@click.option("--threads", type=thread_option("--threads"), default=None,
              help="Runtime threads [default: the cores the workers leave].")
@click.option("--runtime", type=LazyChoice(runtime_choices), default="auto",
              show_default=True, help="What runs the artifact (as resnet-predict --runtime).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="local: this machine's processes; ray: Ray Data.")
@click.option("--address", default=None,
              help="A Ray cluster's address (implies --engine ray), e.g. 127.0.0.1:6379.")
@click.option("--restart", is_flag=True,
              help="Start over: remove this job's earlier output in --out (nothing else).")
@one_line_errors
def main(artifact: Path, source: tuple[Path, ...], out: Path, top: int, logits: bool,
         column: str | None, batch_size: int | None, shard_size: int, workers: int | None,
         threads: int | None, runtime: str, engine: str, address: str | None,
         restart: bool) -> None:
    """Classify every image of SOURCE... with ARTIFACT, into Parquet in --out.

    SOURCE: a folder (searched recursively for PNG/JPEG files), a .txt file of image paths
    (one a line, relative to the file's folder), WebDataset .tar shards, or .parquet files with
    --column. Each image is read and preprocessed exactly as resnet-predict does. An image
    that cannot be read goes to errors.parquet and the job goes on. Interrupted (Ctrl-C,
    kill -9, a full disk), the same command continues from the committed shards, and the
    output holds every image exactly once; another artifact or a changed source refuses unless
    --restart. A folder whose images sit in sub-folders named after the classes is scored.

    \b
    resnet-batch artifacts/resnet20-digits-onnx photos/ --out predictions-2024-06-01
    resnet-batch artifacts/plan/resnet50-cpu/chosen shards/*.tar --out out/ --top-k 1
    resnet-batch model/ images.parquet --column jpeg --out out/ --engine ray
    """
    options = BatchOptions(artifact, list(source), out, top, logits, column, batch_size,
                           shard_size, workers, threads, runtime,
                           "ray" if address else engine, address, restart)
    if options.top < 1:
        raise OneLineUsageError("--top-k must be at least 1")
    try:
        import pyarrow  # noqa: F401 - the output format
    except ImportError:
        raise UserError("resnet-batch needs pyarrow: pip install 'resnet-deploy[batch]'"
                        ) from None
    from .run import run_job

    totals, scored = run_job(options, say)
    rate = totals.run_images / totals.seconds if totals.seconds else 0.0
    say(f"{totals.images} image(s) in {totals.shards} shard(s): {totals.predicted} predicted, "
        f"{totals.errors} unreadable" + (" (listed in errors.parquet)" if totals.errors else ""))
    say(f"this run: {totals.run_images} image(s) in {totals.seconds:.1f}s ({rate:.0f} images/s)"
        + (f", {totals.skipped_shards} shard(s) already committed" if totals.skipped_shards
           else "")
        + (f", first shard committed after {totals.first_commit_s:.1f}s"
           if totals.first_commit_s is not None else "")
        + (f" ({totals.extra['first_commit_since_process_start_s']:.1f}s since the command "
           "started)" if totals.extra.get("first_commit_since_process_start_s") else ""))
    if scored is not None:
        click.echo(format_score(scored, 10).replace("in --json", "in job.json"))
    say(f"wrote {printable(out)}/predictions/ and {printable(out)}/job.json")


if __name__ == "__main__":
    main()
