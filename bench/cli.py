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

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
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
    resolve_model_name,
    thread_option,
)
from export.core.errors import UserError, first_line
from export.core.hardware import (
    available_memory,
    inference_bytes,
    resolve_device,
    usable_cores,
)
from export.core.manifest import MAX_INPUT_SIZE
from export.core.models import default_spec
from export.runtime.ort_runner import ORT_OPTIMIZATION_LEVELS
from export.runtime.registry import PRECISIONS

from . import environment, report
from .candidates import Candidate, Request, Skip
from .cases import backend_names, plan
from .load import others_cores
from .load import snapshot as load_snapshot
from .outdir import check_claimable, check_not_in_artifact, claim_out, probe_folder
from .stats import NoiseRule, thread_collapse
from .sweep import sweep
from .timing import TimingConfig

DEFAULT_BATCHES = {"cpu": [1, 8], "cuda": [1, 32]}
#: Bounds of the timing options: far beyond any useful measurement, yet a run that keeps them
#: all still ends (``inf`` seconds or 10^12 iterations would not).
MAX_SECONDS = 3600
SECONDS_REASON = "an hour per row is far beyond what settles any latency"
MAX_ITERS = 1_000_000
ITERS_REASON = "a million timed iterations per row already pin the median to < 0.1%"
MAX_ROUNDS = 1000
MAX_SEED = 2**32 - 1


# -- option parsing --------------------------------------------------------------------------


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_batches(_ctx: Any, _param: Any, value: str | None) -> list[int] | None:
    if value is None:
        return None
    items = _split(value)
    if not items or not all(v.isdigit() and int(v) > 0 for v in items):
        raise click.BadParameter(f"{value!r}: give positive integers separated by commas, e.g. 1,8")
    return list(dict.fromkeys(int(v) for v in items))


def _parse_choices(choices: Callable[[], tuple[str, ...]], what: str
                   ) -> Callable[..., list[str] | None]:
    """A comma-list callback; ``choices`` is read when the option is parsed (a runtime
    registered after import is one of them)."""
    def parse(_ctx: Any, _param: Any, value: str | None) -> list[str] | None:
        if value is None:
            return None
        choices_now = choices()
        items = [v.lower() for v in _split(value)]
        bad = [v for v in items if v not in choices_now]
        if not items or bad:
            raise click.BadParameter(f"unknown {what} {bad[0] if bad else value!r}; choose from "
                                     f"{', '.join(choices_now)}")
        return list(dict.fromkeys(items))

    return parse


class _BackendsOption(click.Option):
    """--backends, whose help lists the backends there are when it is shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = (f"Comma list from: {', '.join(backend_names())}. [default: every backend "
                     "of the device; 'null' measures the harness itself]")
        return super().get_help_record(ctx)


def _parse_warmup(_ctx: Any, _param: Any, value: str) -> tuple[int, float]:
    """"5" = 5 iterations, "0.5s" = 0.5 seconds, "5,0.5s" = at least both."""
    iters, seconds = 0, 0.0
    try:
        for item in _split(value):
            if item.endswith("s"):
                seconds = float(item[:-1])
            else:
                iters = int(item)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give iterations and/or seconds, e.g. 5, 0.5s or "
                                 "5,0.5s") from None
    if not math.isfinite(seconds):
        raise click.BadParameter(f"{value!r}: warm-up seconds must be a finite number")
    if iters < 0 or seconds < 0:
        raise click.BadParameter(f"{value!r}: warm-up cannot be negative")
    if iters > MAX_ITERS or seconds > MAX_SECONDS:
        raise click.BadParameter(f"{value!r}: warm-up is at most {MAX_ITERS} iterations and "
                                 f"{MAX_SECONDS} s ({SECONDS_REASON})")
    return iters, seconds


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


def free_threads(window_s: float = 1.0) -> tuple[int, str | None]:
    """Threads the machine can give: the usable cores less what other processes used over
    ``window_s`` (at least 1), and a line saying so where that is fewer than the cores. Eager
    torch's OpenMP threads spin while they wait for a core, so more threads than free cores
    collapse it (the issue's 674 ms at batch 8 against 6.7 ms at batch 1)."""
    cores = usable_cores()
    before = load_snapshot()
    time.sleep(window_s)
    others = others_cores(before, load_snapshot())
    if others is None:
        return cores, None
    free = max(1, min(cores, int(cores - others + 0.5)))
    if free >= cores:
        return cores, None
    return free, (f"the machine is busy (other processes used {others:.1f} of {cores} cores): "
                  f"{free} thread(s), so eager torch's threads do not spin against them "
                  "(--threads to choose)")


@main.command("run", cls=DefaultCommand)
@model_options(default="resnet50")
@click.option("--list-models", is_flag=True, expose_value=False, is_eager=True,
              callback=print_family_table, help="Print the model family table and exit.")
@click.option("--input-size", type=click.IntRange(min=16, max=MAX_INPUT_SIZE), default=None,
              help="Input side length [default: the model's, 224 for ImageNet models].")
@click.option("--artifacts", type=click.Path(path_type=Path), default=None,
              help="Benchmark exported artifacts: a folder with manifest.json (or sub-folders "
                   "with one each), as written by resnet-export.")
@click.option("--backends", cls=_BackendsOption, callback=_parse_choices(backend_names, "backend"),
              default=None)
@click.option("--batch-sizes", callback=_parse_batches, default=None,
              help="Comma list, e.g. 1,8. [default: 1,8 on CPU, 1,32 on CUDA]")
@click.option("--precision", "precisions", callback=_parse_choices(lambda: PRECISIONS, "precision"),
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
@click.option("--warmup", default="2,0.5s", show_default=True, callback=_parse_warmup,
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
def run(depth: int | None, model: str | None, input_size: int | None, artifacts: Path | None,
        backends: list[str] | None, batch_sizes: list[int] | None, precisions: list[str] | None,
        device: str, channels_last: bool, cuda_graphs: str, warmup: tuple[int, float],
        steady_warmup: bool, warmup_max_time: float, min_iters: int, min_time: float,
        rounds: int, throughput: bool, threads: int | None, ort_opt_level: str, seed: int,
        cache_dir: Path | None, out: Path | None, overwrite: bool, progress: bool) -> None:
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
    name = resolve_model_name(depth, model) if (depth is not None or model is not None) \
        else "resnet50"
    spec = default_spec(name, input_size=input_size)
    dev = resolve_device(device)
    threads_note = None
    if threads is None:
        threads, threads_note = free_threads()
    if progress is None:
        progress = sys.stderr.isatty()
    batches = batch_sizes or DEFAULT_BATCHES[dev]
    timing = TimingConfig(warmup[0], warmup[1], min_iters, min_time, steady=steady_warmup,
                          warmup_max_time=warmup_max_time, rounds=rounds)
    rule = NoiseRule()
    graphs = {"off": (False,), "on": (True,), "both": (False, True)}[cuda_graphs]
    if out is not None:  # someone else's files, or our earlier run without --overwrite
        check_claimable(out, overwrite)
    if cache_dir is not None:
        check_out_folder(cache_dir, "--cache-dir")
        probe_folder(cache_dir, "--cache-dir", "nothing was measured")

    previous_threads = torch.get_num_threads()
    previous_benchmark = torch.backends.cudnn.benchmark
    torch.set_num_threads(threads)
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution per shape
    try:
        request = Request(spec, dev, backends, precisions, channels_last, graphs, threads, seed,
                          ort_opt_level, cache_dir, artifacts, throughput)
        cases = plan(request)
        candidates, skipped, models = cases.candidates, cases.skipped, cases.models
        if not candidates:  # one line, and no report that holds nothing
            reasons = list(dict.fromkeys(s.reason for s in skipped))
            raise UserError("nothing to measure: " + "; ".join(reasons))
        spec = cases.spec  # --artifacts: the first manifest's model (all: "models")
        config = {
            "model": spec.to_dict(), "input_size": spec.input_size,
            "models": [s.to_dict() for s in cases.specs], "device": dev,
            "backends": backends or "default", "batch_sizes": batches,
            "precisions": precisions or "default", "channels_last": channels_last,
            "cuda_graphs": cuda_graphs, "threads": threads, "threads_note": threads_note,
            "seed": seed,
            "ort_opt_level": ort_opt_level, "artifacts": str(artifacts) if artifacts else None,
            "timing": timing.to_dict(),
            "throughput_rows": throughput,
            "noise_rule": rule.to_dict(), "percentiles": "numpy linear interpolation",
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "input": "seeded uniform [0,1) pixels normalised with the model's mean/std",
            "macs_per_image": models.macs(spec) if candidates else None,
        }
        measured, too_big = memory_skips(candidates, batches, dev)
        if not measured:
            raise UserError("nothing to measure: " + too_big[0].reason)
        if threads_note:  # once the run goes ahead
            click.echo(f"note: {threads_note}", err=True)
        # new, empty or ours; creatable and writable: before the first measurement
        out, _created = claim_out(out, overwrite)
        doc = report.new_document(environment.collect(threads), config)
        doc["skipped"] = [s.to_dict() for s in [*skipped, *too_big]]
        failure = None
        try:
            sweep(doc, candidates, timing, measured, seed, threads, models.macs, rule, progress)
            thread_collapse(doc["results"])
        except Exception as exc:  # not turned into a skip by the sweep: keep what was measured
            failure = first_line(exc)
            doc["interrupted"] = True
            doc["skipped"].append(Skip("run", f"the run stopped: {failure}").to_dict())
        doc["environment"]["cpu"]["load_average_end"] = environment.load_average()
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.cudnn.benchmark = previous_benchmark

    _write_and_end(doc, out, failure)


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
