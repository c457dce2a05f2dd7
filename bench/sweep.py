"""The measuring engine: every candidate at every batch size, rows and skips as they come.

The CLI parses options and calls :func:`sweep`; this module builds runners, picks the clock each
runner needs, times end-to-end and compute-only modes and turns samples into report rows.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, Callable

from export.core.errors import BackendUnavailable, UserError, first_line
from export.core.models import ModelSpec
from export.runtime.base import Runner

from .plan import Candidate, Skip
from .stats import NoiseRule, summarize
from .timing import ClockTimer, CudaEventTimer, Samples, Timer, TimingConfig, measure, time_once


def make_timer(runner: Runner) -> Timer:
    """The clock the runner says its work needs: CUDA events for anything queued on a CUDA
    device (a host clock would time the launch, not the work), the host clock otherwise."""
    return CudaEventTimer() if runner.timing == "cuda_event" else ClockTimer()


class Sweep:
    """Measures each candidate at each batch size; keeps rows and skips as it goes."""

    def __init__(self, doc: dict[str, Any], timing: TimingConfig, batches: list[int], seed: int,
                 threads: int, macs: Callable[[ModelSpec], int], rule: NoiseRule, bar: Any):
        self.doc, self.timing, self.batches, self.seed = doc, timing, batches, seed
        self.threads, self.macs, self.rule, self.bar = threads, macs, rule, bar

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

    def run(self, cand: Candidate) -> None:
        if self.bar is not None:
            self.bar.set_description(cand.label)
        try:
            t0 = time.perf_counter()
            runner, setup = cand.prepare()
            runner.activate()
            setup_s = time.perf_counter() - t0 - setup.get("export_s", 0.0)
        except (BackendUnavailable, UserError) as exc:
            self.skip(cand, str(exc))
            self._advance(len(self.batches))
            return
        except Exception as exc:  # a backend that breaks on this machine: report it, go on
            self.skip(cand, f"setup failed: {first_line(exc)}")
            self._advance(len(self.batches))
            return
        try:
            for b in self.batches:
                reason = cand.batch_skip_reason(b)
                if reason:
                    self.skip(cand, reason, b)
                else:
                    self._run_batch(cand, runner, b, {**setup, "setup_s": setup_s})
                self._advance(1)
        finally:
            runner.deactivate()

    def _advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def _run_batch(self, cand: Candidate, runner: Runner, b: int, setup: dict[str, Any]) -> None:
        batch = cand.make_batch(b, self.seed)
        timer = make_timer(runner)
        modes: list[tuple[str, Callable[[], Any]]] = [("e2e", lambda: runner.infer(batch))]
        for timing, fn in modes:
            try:
                first = time_once(fn, timer)
                samples = measure(fn, self.timing, timer, progress=self._progress(
                    f"b{b} {timing}"))
            except (RuntimeError, ValueError, MemoryError) as exc:  # e.g. CUDA out of memory
                self.skip(cand, f"{timing} failed: {first_line(exc)}", b)
                return
            if samples.iterations:
                self.doc["results"].append(self._row(cand, runner, b, timing, first, samples,
                                                     setup))
            if not samples.complete:
                raise KeyboardInterrupt
            if timing == "e2e":
                try:
                    compute = runner.compute_fn(batch)  # device-resident input, where allowed
                except (RuntimeError, ValueError, MemoryError) as exc:  # e.g. graph capture
                    self.skip(cand, f"compute failed: {first_line(exc)}", b)
                    return
                if compute is not None:
                    modes.append(("compute", compute))

    def _row(self, cand: Candidate, runner: Runner, b: int, timing: str, first_s: float,
             samples: Samples, setup: dict[str, Any]) -> dict[str, Any]:
        stats = summarize(samples.latencies_s, b, samples.wall_s, self.rule)
        macs = None if cand.backend == "null" else self.macs(cand.spec)
        return {
            "backend": cand.backend, "label": cand.label, "precision": cand.precision,
            "device": runner.device, "timing": timing, "cuda_graphs": cand.cuda_graphs,
            "channels_last": cand.channels_last, "batch_size": b,
            "input_shape": [b, *cand.input_shape], "model": cand.spec.name,
            **stats,
            "gflops": (2 * macs * b / (stats["p50_ms"] / 1e3) / 1e9) if macs else None,
            "warmup_iterations": samples.warmup_iters, "warmup_s": samples.warmup_s,
            "warmup_steady": samples.warmup_steady,
            "first_infer_ms": first_s * 1e3, "setup_s": setup.get("setup_s"),
            "export_s": setup.get("export_s"), "onnx_cached": setup.get("onnx_cached"),
            "timer": samples.timer, "threads": self.threads, "complete": samples.complete,
            "artifact": cand.artifact, **cand.extra,
        }


def sweep(doc: dict[str, Any], candidates: list[Candidate], timing: TimingConfig,
           batches: list[int], seed: int, threads: int, macs: Callable[[ModelSpec], int],
           rule: NoiseRule, progress: bool) -> None:
    """Measure every candidate; Ctrl-C stops here and marks the document interrupted."""
    from tqdm import tqdm

    bar = tqdm(total=len(candidates) * len(batches), file=sys.stderr, unit="case",
               disable=not progress, dynamic_ncols=True, leave=False)
    sweep = Sweep(doc, timing, batches, seed, threads, macs, rule, bar)
    # SIGTERM (e.g. `timeout 120 resnet-bench ...`) stops the run like Ctrl-C: results are kept.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        for cand in candidates:
            sweep.run(cand)
    except KeyboardInterrupt:
        doc["interrupted"] = True
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        bar.close()


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
