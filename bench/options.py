"""``resnet-bench run``'s options: the parsers of the comma lists and the warm-up, their bounds,
and :class:`RunOptions`, the one object the command builds from what it was given."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from export.core.cli import resolve_model_name
from export.core.models import ModelSpec, default_spec

from . import matrix
from .candidates import Request

#: Bounds of the timing options: far beyond any useful measurement, yet a run that keeps them
#: all still ends (``inf`` seconds or 10^12 iterations would not).
MAX_SECONDS = 3600
SECONDS_REASON = "an hour per row is far beyond what settles any latency"
MAX_ITERS = 1_000_000
ITERS_REASON = "a million timed iterations per row already pin the median to < 0.1%"
MAX_ROUNDS = 1000
MAX_SEED = 2**32 - 1


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_batches(_ctx: Any, _param: Any, value: str | None) -> list[int] | None:
    if value is None:
        return None
    items = _split(value)
    if not items or not all(v.isdigit() and int(v) > 0 for v in items):
        raise click.BadParameter(f"{value!r}: give positive integers separated by commas, e.g. 1,8")
    return list(dict.fromkeys(int(v) for v in items))


def parse_choices(choices: Callable[[], tuple[str, ...]], what: str
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


class BackendsOption(click.Option):
    """--backends, whose help lists the backends there are when it is shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = (f"Comma list from: {', '.join(matrix.backend_names())}. [default: every "
                     "backend of the device; 'null' measures the harness itself]")
        return super().get_help_record(ctx)


def parse_warmup(_ctx: Any, _param: Any, value: str) -> tuple[int, float]:
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


@dataclass(frozen=True)
class RunOptions:
    """What ``resnet-bench run`` was given, as click parsed it (one field per option)."""

    depth: int | None
    model: str | None
    input_size: int | None
    artifacts: Path | None
    backends: list[str] | None
    batch_sizes: list[int] | None
    precisions: list[str] | None
    device: str
    channels_last: bool
    cuda_graphs: str  # off, on, both
    warmup: tuple[int, float]  # iterations, seconds
    steady_warmup: bool
    warmup_max_time: float
    min_iters: int
    min_time: float
    rounds: int
    throughput: bool
    threads: int | None
    ort_opt_level: str
    seed: int
    cache_dir: Path | None
    out: Path | None
    overwrite: bool
    progress: bool | None

    def spec(self) -> ModelSpec:
        """The model asked for (ResNet-50 unless named), at --input-size."""
        named = self.depth is not None or self.model is not None
        name = resolve_model_name(self.depth, self.model) if named else "resnet50"
        return default_spec(name, input_size=self.input_size)

    @property
    def graphs(self) -> tuple[bool, ...]:
        """--cuda-graphs as the variants to measure: without, with, or both."""
        return {"off": (False,), "on": (True,), "both": (False, True)}[self.cuda_graphs]

    def request(self, spec: ModelSpec, device: str, threads: int) -> Request:
        """What the matrix is built from: these options on a resolved device and thread count."""
        return Request(spec, device, backends=self.backends, precisions=self.precisions,
                       channels_last=self.channels_last, cuda_graphs=self.graphs,
                       threads=threads, seed=self.seed, ort_opt_level=self.ort_opt_level,
                       cache_dir=self.cache_dir, artifacts=self.artifacts,
                       throughput=self.throughput)
