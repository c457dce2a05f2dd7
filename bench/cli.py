"""``resnet-bench``: latency percentiles and throughput per backend, precision and batch size.

``resnet-bench`` alone measures ResNet-50 at 224x224 on every backend this machine has, at batch 1
and a larger batch, and writes bench.json/.csv/.md/.png under artifacts/bench/<time>/.
``resnet-bench report RUN ...`` rebuilds (and merges) the CSV/Markdown/PNG from JSON files.

Nothing measured is lost: the output folder is checked to be creatable and writable before the
first measurement; a batch size that cannot fit in memory is a skip (estimated before, or a
MemoryError while making its input); a failure the sweep does not turn into a skip stops the run
but keeps and writes every finished row; and if the report cannot be written after all (a full
disk), the table is printed and the JSON document saved in the system's temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import torch

from export.core.cli import (
    DefaultCommand,
    DefaultGroup,
    OneLineCommand,
    bounded,
    model_options,
    one_line_errors,
    print_family_table,
    thread_option,
)
from export.core.errors import UserError, first_line
from export.core.hardware import (
    available_memory,
    inference_bytes,
    resolve_device,
)
from export.core.manifest import MAX_INPUT_SIZE
from export.runtime.ort_runner import ORT_OPTIMIZATION_LEVELS
from export.runtime.registry import PRECISIONS

from . import environment, matrix, report
from .candidates import Candidate, Cases, Skip
from .load import free_threads
from .options import (
    ITERS_REASON,
    MAX_ITERS,
    MAX_ROUNDS,
    MAX_SECONDS,
    MAX_SEED,
    SECONDS_REASON,
    BackendsOption,
    RunOptions,
    parse_batches,
    parse_choices,
    parse_warmup,
)
from .outdir import check_claimable, check_not_in_artifact, claim_out, probe_folder
from .stats import NoiseRule, thread_collapse
from .sweep import SweepSettings, sweep
from .timing import TimingConfig

DEFAULT_BATCHES = {"cpu": [1, 8], "cuda": [1, 32]}


# -- the output folder and memory: checked before anything is measured ----------------------


def check_out_folder(out: Path, option: str = "--out") -> None:
    """See :func:`.outdir.check_not_in_artifact` (kept here for callers of this module)."""
    check_not_in_artifact(out, option)


def memory_skips(candidates: list[Candidate], batches: list[int], device: str
                 ) -> tuple[list[int], list[Skip]]:
    """Batch sizes whose input (and, on the CPU, activations) cannot fit in memory: a skip for
    every candidate, before anything is built. Returns the sizes to measure and the skips."""
    have = available_memory()
    if have is None or not candidates:
        return batches, []
    keep, skips = [], []
    for b in batches:
        need = max(inference_bytes(b, *c.input_shape[:2], activations=device == "cpu")
                   for c in candidates)
        if need <= have:
            keep.append(b)
            continue
        reason = (f"batch {b} needs about {need / 2**30:.1f} GiB of memory; "
                  f"{have / 2**30:.1f} GiB is available")
        skips += [Skip(c.backend, reason, c.precision, b, c.artifact) for c in candidates]
    return keep, skips


def write_report(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    """The four files; if they cannot be written, the table still reaches stdout and the JSON a
    temporary file, and the one-line error says where."""
    report.add_speedups(doc["results"])
    try:
        return report.write_all(doc, out)
    except (OSError, ValueError) as exc:  # a full disk, or a row the schema refuses
        click.echo(report.markdown(doc), nl=False)
        saved = None
        try:
            fd, saved = tempfile.mkstemp(prefix="resnet-bench-", suffix=".json")
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=2)
        except OSError:
            saved = None
        kept = f"the {len(doc['results'])} result(s) are printed above" + (
            f" and saved in {saved}" if saved else "")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        raise UserError(f"cannot write the report to {out}: {reason}; {kept}") from None


@click.group(cls=DefaultGroup, default_command="run",
             context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmark the ResNet family on every backend this machine has."""


@main.command("run", cls=DefaultCommand)
@model_options(default="resnet50")
@click.option("--list-models", is_flag=True, expose_value=False, is_eager=True,
              callback=print_family_table, help="Print the model family table and exit.")
@click.option("--input-size", type=click.IntRange(min=16, max=MAX_INPUT_SIZE), default=None,
              help="Input side length [default: the model's, 224 for ImageNet models].")
@click.option("--artifacts", type=click.Path(path_type=Path), default=None,
              help="Benchmark exported artifacts: a folder with manifest.json (or sub-folders "
                   "with one each), as written by resnet-export.")
@click.option("--backends", cls=BackendsOption, default=None,
              callback=parse_choices(matrix.backend_names, "backend"))
@click.option("--batch-sizes", callback=parse_batches, default=None,
              help="Comma list, e.g. 1,8. [default: 1,8 on CPU, 1,32 on CUDA]")
@click.option("--precision", "precisions", callback=parse_choices(lambda: PRECISIONS, "precision"),
              default=None, help="Comma list from fp32, fp16, bf16, int8 (bf16: torch autocast "
                                 "and OpenVINO where the CPU has native BF16; int8: ONNX Runtime "
                                 "and OpenVINO on a QDQ model quantized on the fly). "
                                 "[default: fp32; fp32,fp16 on CUDA]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Where torch runs; auto = cuda when PyTorch sees a GPU.")
@click.option("--channels-last", is_flag=True, help="torch: channels_last (NHWC) weights/inputs.")
@click.option("--cuda-graphs", type=click.Choice(["off", "on", "both"]), default="off",
              is_flag=False, flag_value="on", show_default=True,
              help="torch on CUDA: replay the forward as a CUDA graph (eager: CUDAGraph capture; "
                   "torch.compile: mode=reduce-overhead); 'both' measures with and without.")
@click.option("--warmup", default="2,0.5s", show_default=True, callback=parse_warmup,
              help="Warm-up: iterations and/or seconds, e.g. 5, 0.5s, 5,0.5s (at least both).")
@click.option("--steady-warmup/--no-steady-warmup", default=True, show_default=True,
              help="Also warm up until the latency settles (median of the last 3 iterations "
                   "within 15% of the 3 before; at most --warmup-max-time).")
@click.option("--warmup-max-time", type=bounded(float, 0, MAX_SECONDS, SECONDS_REASON),
              default=30.0, show_default=True,
              help="Seconds after which a warm-up that has not settled stops (the row says so).")
@click.option("--min-iters", type=bounded(int, 1, MAX_ITERS, ITERS_REASON),
              default=10, show_default=True,
              help="Timed loop: at least this many iterations...")
@click.option("--min-time", type=bounded(float, 0, MAX_SECONDS, SECONDS_REASON),
              default=2.0, show_default=True,
              help="...and at least this many seconds.")
@click.option("--rounds", type=bounded(int, 1, MAX_ROUNDS, "more rounds than this only "
                                                   "repeat what the rounds already say"),
              default=10, show_default=True,
              help="Interleave: at each batch size, time every backend in turn for 1/ROUNDS of "
                   "the timed loop, ROUNDS times, so load that comes and goes hits all alike "
                   "(1: each backend in one go).")
@click.option("--throughput/--no-throughput", default=True, show_default=True,
              help="OpenVINO: also measure throughput the way benchmark_app does (several "
                   "asynchronous requests in flight), as separate rows with timing 'throughput'.")
@click.option("--threads", type=thread_option("--threads"), default=None,
              help="CPU threads for torch and onnxruntime intra-op [default: the usable cores "
                   "that other processes leave free, at least 1].")
@click.option("--ort-opt-level", type=click.Choice(list(ORT_OPTIMIZATION_LEVELS)),
              default="all", show_default=True, help="ONNX Runtime graph optimisation level.")
@click.option("--seed", type=bounded(int, 0, MAX_SEED, "the seed generators take 32 bits"),
              default=0, show_default=True,
              help="Seed for the inputs and the (untrained) weights.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where on-the-fly ONNX exports are kept [default: "
                   "$XDG_CACHE_HOME/resnet-deploy/bench-onnx, or "
                   "~/.cache/resnet-deploy/bench-onnx without XDG_CACHE_HOME].")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Output folder: new, empty, or an earlier run's (with --overwrite); never a "
                   "folder holding other files [default: artifacts/bench/<UTC time>-<pid>].")
@click.option("--overwrite", is_flag=True,
              help="Replace the earlier resnet-bench run in --out.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr. [default: only when stderr is a terminal]")
@one_line_errors
def run(**given: Any) -> None:
    """Measure latency and throughput; write bench.json, .csv, .md and .png.

    \b
    resnet-bench                                   ResNet-50, every backend here
    resnet-bench --depth 18 --batch-sizes 1,4,16   another model and batches
    resnet-bench --device cuda --precision fp16 --channels-last --cuda-graphs both
    resnet-bench --precision fp32,bf16,int8        every runtime x precision on this CPU
    resnet-bench --artifacts artifacts/resnet50-onnx   an exported artifact
    resnet-bench --artifacts artifacts/            every exported artifact below
    resnet-bench --backends null,torch --depth 18 --batch-sizes 1   the harness's own overhead
    resnet-bench report RUN1 RUN2                  merge runs into one table and plot
    """
    opts = RunOptions(**given)
    spec, dev = opts.spec(), resolve_device(opts.device)
    threads, threads_note = (opts.threads, None) if opts.threads is not None \
        else free_threads()
    warmup_iters, warmup_s = opts.warmup
    timing = TimingConfig(warmup_iters, warmup_s, opts.min_iters, opts.min_time,
                          steady=opts.steady_warmup, warmup_max_time=opts.warmup_max_time,
                          rounds=opts.rounds)
    if opts.out is not None:  # someone else's files, or our earlier run without --overwrite
        check_claimable(opts.out, opts.overwrite)
    if opts.cache_dir is not None:
        check_out_folder(opts.cache_dir, "--cache-dir")
        probe_folder(opts.cache_dir, "--cache-dir", "nothing was measured")
    with _torch_settings(threads, cudnn_benchmark=dev == "cuda"):
        cases = matrix.build(opts.request(spec, dev, threads))
        if not cases.candidates:  # one line, and no report that holds nothing
            reasons = list(dict.fromkeys(s.reason for s in cases.skipped))
            raise UserError("nothing to measure: " + "; ".join(reasons))
        batches = opts.batch_sizes or DEFAULT_BATCHES[dev]
        measured, too_big = memory_skips(cases.candidates, batches, dev)
        if not measured:
            raise UserError("nothing to measure: " + too_big[0].reason)
        if threads_note:  # once the run goes ahead
            click.echo(f"note: {threads_note}", err=True)
        # new, empty or ours; creatable and writable: before the first measurement
        out, _created = claim_out(opts.out, opts.overwrite)
        rule = NoiseRule()
        config = _config(opts, cases, dev, threads, threads_note, batches, timing, rule)
        doc = report.new_document(environment.collect(threads), config)
        doc["skipped"] = [s.to_dict() for s in [*cases.skipped, *too_big]]
        failure = None
        try:
            progress = sys.stderr.isatty() if opts.progress is None else opts.progress
            sweep(doc, cases.candidates,
                  SweepSettings(timing, measured, opts.seed, threads, rule, progress),
                  cases.models.macs)
            thread_collapse(doc["results"])
        except Exception as exc:  # not turned into a skip by the sweep: keep what was measured
            failure = first_line(exc)
            doc["interrupted"] = True
            doc["skipped"].append(Skip("run", f"the run stopped: {failure}").to_dict())
        doc["environment"]["cpu"]["load_average_end"] = environment.load_average()
    _write_and_end(doc, out, failure)


@contextlib.contextmanager
def _torch_settings(threads: int, cudnn_benchmark: bool) -> Iterator[None]:
    """torch's intra-op threads (and cuDNN's per-shape algorithm search on CUDA) for the run,
    put back as they were afterwards."""
    previous_threads = torch.get_num_threads()
    previous_benchmark = torch.backends.cudnn.benchmark
    torch.set_num_threads(threads)
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution per shape
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.cudnn.benchmark = previous_benchmark


def _config(opts: RunOptions, cases: Cases, dev: str, threads: int, threads_note: str | None,
            batches: list[int], timing: TimingConfig, rule: NoiseRule) -> dict[str, Any]:
    """The run's configuration as the report records it."""
    spec = cases.spec  # --artifacts: the first manifest's model (all: "models")
    return {
        "model": spec.to_dict(), "input_size": spec.input_size,
        "models": [s.to_dict() for s in cases.specs], "device": dev,
        "backends": opts.backends or "default", "batch_sizes": batches,
        "precisions": opts.precisions or "default", "channels_last": opts.channels_last,
        "cuda_graphs": opts.cuda_graphs, "threads": threads, "threads_note": threads_note,
        "seed": opts.seed, "ort_opt_level": opts.ort_opt_level,
        "artifacts": str(opts.artifacts) if opts.artifacts else None,
        "timing": timing.to_dict(), "throughput_rows": opts.throughput,
        "noise_rule": rule.to_dict(), "percentiles": "numpy linear interpolation",
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "input": "seeded uniform [0,1) pixels normalised with the model's mean/std",
        "macs_per_image": cases.models.macs(spec),
    }


def _write_and_end(doc: dict[str, Any], out: Path, failure: str | None) -> None:
    """Write the report, print the table, and end as the run did: a failure is one line (exit
    1), an interruption exits 130, a run that measured nothing says where the reasons are."""
    doc["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    paths = write_report(doc, out)
    click.echo(report.markdown(doc), nl=False)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)
    if failure is not None:
        raise UserError(f"the run stopped: {failure}; kept {len(doc['results'])} result(s) in "
                        f"{out}")
    if doc["interrupted"]:
        click.echo(f"interrupted: kept {len(doc['results'])} result(s) in {out}", err=True)
        sys.exit(130)
    if not doc["results"]:
        raise click.ClickException(f"nothing was measured: every backend was skipped "
                                   f"(reasons in {paths['md']})")


@main.command("report", cls=OneLineCommand)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for the merged bench.json, .csv, .md and .png "
                   "[default: artifacts/bench/report-<UTC time>-<pid>]; as for a run, never a "
                   "folder holding other files.")
@click.option("--overwrite", is_flag=True, help="Replace the earlier report or run in --out.")
@one_line_errors
def report_cmd(runs: tuple[Path, ...], out: Path | None, overwrite: bool) -> None:
    """Rebuild CSV/Markdown/PNG from bench.json files (or run folders), merging several runs."""
    docs, names = [], []
    for path in runs:
        path = path / report.FILES["json"] if path.is_dir() else path
        try:
            docs.append(report.load(path))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        names.append(str(path))
    doc = docs[0] if len(docs) == 1 else report.merge(docs, names)
    out, _created = claim_out(out, overwrite, prefix="report-")
    paths = write_report(doc, out)
    click.echo(report.markdown(doc), nl=False)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)


if __name__ == "__main__":
    main()
