"""The measuring engine: every candidate at every batch size, interleaved; rows and skips.

The CLI parses options and calls :func:`sweep`; this module builds runners, picks the clock each
runner needs, and turns samples into report rows. At each batch size, every candidate's modes
(end-to-end; compute-only where the runner has a device; OpenVINO's throughput mode) are timed
together in round-robin rounds (:func:`bench.timing.measure_rounds`), so the load a shared machine
puts on the run hits all of them alike; the machine's load is sampled around the rounds and every
round, and each row says whether it was BUSY and whether its rounds disagreed.
"""

from __future__ import annotations

import functools
import itertools
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.core.cli import signals_as_interrupt
from export.core.errors import BackendUnavailable, UserError, first_line
from export.core.hardware import usable_cores
from export.core.models import ModelSpec
from export.runtime.base import Runner

from . import load
from .candidates import Candidate, Skip
from .model_backends import HARNESS
from .stats import NoiseRule, round_summary, summarize
from .throughput import measure_throughput
from .timing import (
    ClockTimer,
    Contender,
    CudaEventTimer,
    Samples,
    Timer,
    TimingConfig,
    measure_rounds,
    time_once,
)

_RUNS = itertools.count()


def make_timer(runner: Runner) -> Timer:
    """The clock the runner says its work needs: CUDA events for anything queued on a CUDA
    device (a host clock would time the launch, not the work), the host clock otherwise."""
    return CudaEventTimer() if runner.timing == "cuda_event" else ClockTimer()


class _Timed(Contender):
    """A runner call timed per iteration; its first call is timed apart (first_infer_ms)."""

    def __init__(self, fn: Callable[[], Any], timer: Timer, progress: Any):
        super().__init__(fn, timer, progress=progress)
        self.first_s: float | None = None

    def warm_up(self, config: TimingConfig) -> tuple[int, float, bool | None]:
        self.first_s = time_once(self.fn, self.timer)
        return super().warm_up(config)


class _Throughput(Contender):
    """A runtime's own throughput mode, benchmark_app-style: a window of asynchronous requests
    in flight per slice (:func:`.throughput.measure_throughput`); one latency per completed
    request."""

    def __init__(self, runner: Any, batch: Any):
        super().__init__(lambda: None)
        self.runner, self.batch = runner, batch
        self.first_s: float | None = None
        self.info: dict[str, Any] = {}

    @property
    def timer_name(self) -> str:
        return "perf_counter (async requests)"

    def warm_up(self, config: TimingConfig) -> tuple[int, float, bool | None]:
        t0 = time.perf_counter()
        first = measure_throughput(self.runner, self.batch, min_time_s=0.0, min_iters=1)
        self.first_s = time.perf_counter() - t0  # includes the THROUGHPUT model's compilation
        self.info["compile_s"] = first["compile_s"]
        if not (config.warmup_iters or config.warmup_time):
            return 0, 0.0, None
        res = measure_throughput(self.runner, self.batch, min_time_s=config.warmup_time,
                                             min_iters=config.warmup_iters)
        return res["iterations"], res["duration_s"], None

    def run_slice(self, min_iters: int, min_time: float, discard: int, sink: array) -> float:
        # each window starts with one untimed round of every request
        res = measure_throughput(self.runner, self.batch, min_time_s=min_time,
                                 min_iters=min_iters)
        sink.extend(v / 1e3 for v in res["latencies_ms"])
        self.info.update({k: res[k] for k in ("requests", "num_streams", "inference_num_threads",
                                              "effective_precision")})
        return res["duration_s"]


class _Entry:
    """One contender of a batch size, with what its row needs to know."""

    def __init__(self, cand: Candidate, runner: Runner, setup: dict[str, Any], timing: str,
                 contender: Any):
        self.cand, self.runner, self.setup = cand, runner, setup
        self.timing, self.contender = timing, contender


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep measures: the timing, the batch sizes, the inputs' seed, the threads the row
    records, the noise rule, and whether a progress bar is shown."""

    timing: TimingConfig
    batches: list[int]
    seed: int
    threads: int
    rule: NoiseRule
    progress: bool = False


class Sweep:
    """Measures each candidate at each batch size; keeps rows and skips as it goes."""

    def __init__(self, doc: dict[str, Any], settings: SweepSettings,
                 macs: Callable[[ModelSpec], int], bar: Any):
        self.doc, self.timing, self.batches = doc, settings.timing, settings.batches
        self.seed, self.threads, self.rule = settings.seed, settings.threads, settings.rule
        self.macs, self.bar = macs, bar
        self.active: list[tuple[Candidate, Runner, dict[str, Any]]] = []
        self.run_id = f"{int(time.time())}-{next(_RUNS)}"
        self.cores = usable_cores()

    def skip(self, cand: Candidate, reason: str, batch_size: int | None = None) -> None:
        self.doc["skipped"].append(Skip(cand.backend, reason, cand.precision, batch_size,
                                        cand.artifact).to_dict())

    def _progress(self, text: str) -> Callable[[str, int, float], None] | None:
        if self.bar is None or self.bar.disable:
            return None
        last = [0.0]

        def update(phase: str, n: int, elapsed: float) -> None:
            if n == 1 or elapsed - last[0] >= 0.25:
                last[0] = elapsed
                self.bar.set_postfix_str(f"{text} {phase} {n} it {elapsed:.1f}s", refresh=True)

        return update

    # -- setup -----------------------------------------------------------------------------

    def prepare(self, cand: Candidate) -> None:
        """Build and activate the candidate's runner; kept active for every batch size."""
        if self.bar is not None:
            self.bar.set_description(f"setup {cand.label}")
        runner = None
        try:
            t0 = time.perf_counter()
            runner, setup = cand.prepare()
            runner.activate()
            setup_s = time.perf_counter() - t0 - setup.get("export_s", 0.0)
        except (BackendUnavailable, UserError) as exc:
            self.skip(cand, str(exc))
            return
        except Exception as exc:  # a backend that breaks on this machine: report it, go on
            self.skip(cand, f"setup failed: {first_line(exc)}")
            if runner is not None:
                runner.deactivate()
            return
        self.active.append((cand, runner, {**setup, "setup_s": setup_s}))

    def drop_lonely_baselines(self) -> None:
        """--artifacts: an eager baseline is measured only beside an artifact of its model that
        could be loaded; alone it compares nothing."""
        loaded = {c.model_label for c, _, _ in self.active if c.artifact}
        for entry in list(self.active):
            cand, runner, _ = entry
            if cand.baseline and cand.model_label not in loaded:
                self.skip(cand, f"baseline of {cand.model_label}: no artifact of this model "
                                "could be loaded")
                runner.deactivate()
                self.active.remove(entry)

    def close(self) -> None:
        for _cand, runner, _setup in self.active:
            runner.deactivate()
        self.active = []

    # -- one batch size: every candidate, interleaved ----------------------------------------

    def _entries(self, b: int) -> list[_Entry]:
        entries = []
        for cand, runner, setup in self.active:
            reason = cand.batch_skip_reason(b)
            if reason:
                self.skip(cand, reason, b)
                continue
            try:
                batch = cand.make_batch(b, self.seed)
                np.shape(batch)  # an input that could not be allocated says so here
            except MemoryError as exc:  # a batch size too large for memory is a skip of that size
                self.skip(cand, f"no memory for the batch-{b} input ({first_line(exc)})", b)
                continue
            timer = make_timer(runner)
            progress = self._progress(f"{cand.label} b{b}")
            entries.append(_Entry(cand, runner, setup, "e2e", _Timed(
                functools.partial(runner.infer, batch), timer, progress)))
            try:
                compute = runner.compute_fn(batch)  # device-resident input, where allowed
            except (RuntimeError, ValueError, MemoryError) as exc:  # e.g. graph capture
                self.skip(cand, f"compute failed: {first_line(exc)}", b)
                compute = None
            if compute is not None:
                entries.append(_Entry(cand, runner, setup, "compute",
                                      _Timed(compute, make_timer(runner), progress)))
            if cand.throughput and runner.throughput_mode:
                entries.append(_Entry(cand, runner, setup, "throughput",
                                      _Throughput(runner, batch)))
        return entries

    def run_batch(self, b: int) -> None:
        entries = self._entries(b)
        if not entries:
            self._advance(self.timing.rounds)
            return
        snaps: list[load.CpuSnapshot] = []
        round_others: list[float | None] = []

        def on_slice(r: int, i: int) -> None:
            if len(snaps) == r:  # the first slice of round r: the rounds' clock starts here
                snaps.append(load.snapshot())
            if self.bar is not None:
                self.bar.set_description(f"b{b} round {r + 1}/{self.timing.rounds} "
                                         f"{entries[i].cand.label} {entries[i].timing}")

        def on_round(r: int) -> None:
            round_others.append(load.others_cores(snaps[r], load.snapshot())
                                if len(snaps) > r else None)
            self._advance(1)

        if self.bar is not None:
            self.bar.set_description(f"b{b} warm-up")
        results = measure_rounds([e.contender for e in entries], self.timing, on_round, on_slice)
        end = load.snapshot()
        start = snaps[0] if snaps else end
        machine = load.busy_verdict(start, end, self.cores, round_others, self.rule.busy_others)
        group = f"{self.run_id}:b{b}"
        for entry, samples in zip(entries, results):
            if samples.error is not None:
                self.skip(entry.cand, f"{entry.timing} failed: {first_line(samples.error)}", b)
            if samples.iterations:
                self.doc["results"].append(self._row(entry, b, samples, machine, group))
        if not all(s.complete for s in results):
            raise KeyboardInterrupt

    def _advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    # -- rows ------------------------------------------------------------------------------

    def _row(self, entry: _Entry, b: int, samples: Samples, machine: dict[str, Any],
             group: str) -> dict[str, Any]:
        cand, runner, setup = entry.cand, entry.runner, entry.setup
        stats = summarize(samples.latencies_s, b, samples.wall_s, self.rule)
        rounds = round_summary(samples.rounds or [samples.latencies_s], self.rule)
        macs = None if cand.backend == HARNESS else self.macs(cand.spec)
        flags = [name for name, on in (("NOISY", stats["noisy"]), ("BUSY", machine["busy"]),
                                       ("ROUNDS-DISAGREE", rounds["rounds_disagree"])) if on]
        row = {
            "backend": cand.backend, "label": cand.label, "precision": cand.precision,
            "device": runner.device, "timing": entry.timing, "cuda_graphs": cand.cuda_graphs,
            "channels_last": cand.channels_last, "batch_size": b,
            "input_shape": [b, *cand.input_shape], "model": cand.spec.name,
            "model_label": cand.model_label, "num_classes": cand.spec.num_classes,
            **stats,
            "gflops": (2 * macs * b / (stats["p50_ms"] / 1e3) / 1e9) if macs else None,
            "effective_precision": runner.executed_precision(),
            "warmup_iterations": samples.warmup_iters, "warmup_s": samples.warmup_s,
            "warmup_steady": samples.warmup_steady,
            "first_infer_ms": (entry.contender.first_s * 1e3
                               if entry.contender.first_s is not None else None),
            "setup_s": setup.get("setup_s"),
            "export_s": setup.get("export_s"), "onnx_cached": setup.get("onnx_cached"),
            "timer": samples.timer, "threads": self.threads, "complete": samples.complete,
            "artifact": cand.artifact,
            **{k: v for k, v in rounds.items() if k != "rounds_reason"},
            "round_group": group,
            **machine,
            "flags": flags,
            "flag_reasons": [*stats["noise_reasons"], *machine["busy_reasons"],
                             *([rounds["rounds_reason"]] if rounds["rounds_reason"] else [])],
            "note": cand.note,
            **cand.extra,
        }
        if "int8_method" in setup:
            row["int8"] = {k: setup.get(k) for k in ("int8_method", "int8_calibration",
                                                     "int8_cached", "quantize_s")}
        if entry.timing == "throughput":
            row["throughput_mode"] = {
                "how": "benchmark_app-style: PERFORMANCE_HINT THROUGHPUT, AsyncInferQueue, "
                       "requests kept in flight; latencies are per request under that load",
                **entry.contender.info}
        facts = _runtime_facts(runner)
        if facts is not None:
            row["runtime_facts"] = facts
        return row


def _runtime_facts(runner: Runner) -> dict[str, Any] | None:
    """What the runtime says it ran (:meth:`Runner.report_facts`); a failure is a note."""
    try:
        return runner.report_facts()
    except Exception as exc:  # noqa: BLE001 - a report detail, never a reason to fail the row
        return {"error": first_line(exc)}


def sweep(doc: dict[str, Any], candidates: list[Candidate], settings: SweepSettings,
          macs: Callable[[ModelSpec], int]) -> None:
    """Measure every candidate; Ctrl-C stops here and marks the document interrupted."""
    from tqdm import tqdm

    bar = tqdm(total=len(settings.batches) * settings.timing.rounds, file=sys.stderr,
               unit="round", disable=not settings.progress, dynamic_ncols=True, leave=False)
    run = Sweep(doc, settings, macs, bar)
    # SIGTERM/SIGHUP (`timeout 120 resnet-bench ...`, a closed terminal) stop the run like
    # Ctrl-C: results are kept.
    try:
        with signals_as_interrupt():
            for cand in candidates:
                run.prepare(cand)
            run.drop_lonely_baselines()
            for b in settings.batches:
                run.run_batch(b)
    except KeyboardInterrupt:
        doc["interrupted"] = True
    finally:
        run.close()
        bar.close()

