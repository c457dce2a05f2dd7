"""What a benchmark run measures, as data: a candidate (how to build its runner, what to feed
it), a skip with its reason, the request after option parsing, the cases :func:`bench.matrix.build`
decides, and the models built once per run."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.core.counting import count_macs
from export.core.models import ModelSpec
from export.runtime.base import Runner

from .model_backends import HARNESS


@dataclass
class Skip:
    """A backend (or one batch size of it) that was not measured, and why."""

    backend: str
    reason: str
    precision: str | None = None
    batch_size: int | None = None
    artifact: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision,
                "batch_size": self.batch_size, "artifact": self.artifact, "reason": self.reason}


@dataclass
class Candidate:
    """One runner to measure over the batch sizes: how to build it and what to feed it."""

    backend: str
    precision: str
    spec: ModelSpec
    prepare: Callable[[], tuple[Runner, dict[str, Any]]]  # -> runner, setup facts (export_s, ...)
    channels_last: bool = False
    cuda_graphs: bool = False
    batch_range: tuple[int, int] | None = None
    artifact: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: also measure benchmark_app-style throughput (timing "throughput"; OpenVINO runners)
    throughput: bool = False
    note: str | None = None  # said in the row, e.g. what an on-the-fly INT8 row is
    #: --artifacts: the eager baseline of a model, measured only beside an artifact of it
    baseline: bool = False

    @property
    def label(self) -> str:
        parts = [self.backend, self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.cuda_graphs:
            parts.append("cuda-graphs")
        if self.artifact:
            parts.append(f"({Path(self.artifact).parent.name or self.artifact})")
        return " ".join(parts)

    @property
    def model_label(self) -> str:
        return model_label(self.spec)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.spec.in_chans, self.spec.input_size, self.spec.input_size)

    def batch_skip_reason(self, batch_size: int) -> str | None:
        if self.batch_range and not self.batch_range[0] <= batch_size <= self.batch_range[1]:
            lo, hi = self.batch_range
            return f"batch {batch_size} is outside the artifact's batch range {lo}..{hi}"
        return None

    def make_batch(self, batch_size: int, seed: int) -> np.ndarray:
        return make_input(batch_size, self.spec, seed)


def model_label(spec: ModelSpec) -> str:
    """What tells models apart in a report: "resnet18 32x32x1, 10 classes"."""
    return (f"{spec.name} {spec.input_size}x{spec.input_size}x{spec.in_chans}, "
            f"{spec.num_classes} classes")


def make_input(batch_size: int, spec: ModelSpec, seed: int) -> np.ndarray:
    """Seeded uniform pixels in [0, 1), normalised with the model's mean/std: never constant."""
    rng = np.random.default_rng([seed, batch_size])
    shape = (batch_size, spec.in_chans, spec.input_size, spec.input_size)
    pixels = rng.random(shape, dtype=np.float32)
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)


class NullRunner(Runner):
    """Does nothing and returns a preallocated output: the harness's own cost per iteration."""

    backend = HARNESS

    def __init__(self, num_classes: int = 1000):
        super().__init__("fp32", "cpu")
        self.num_classes = num_classes
        self._out = np.zeros((1, num_classes), np.float32)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self._out.shape[0] != batch.shape[0]:
            self._out = np.zeros((batch.shape[0], self.num_classes), np.float32)
        return self._out


@dataclass
class Request:
    """What the user asked for, after option parsing."""

    spec: ModelSpec
    device: str  # "cpu" or "cuda"
    backends: list[str] | None = None  # None: the device's defaults
    precisions: list[str] | None = None  # None: fp32 (fp32+fp16 on CUDA; all with --artifacts)
    channels_last: bool = False
    cuda_graphs: tuple[bool, ...] = (False,)
    threads: int | None = None
    seed: int = 0
    ort_opt_level: str = "all"
    cache_dir: Path | None = None
    artifacts: Path | None = None
    throughput: bool = True  # OpenVINO: also benchmark_app-style throughput rows


@dataclass
class Cases:
    """What :func:`bench.matrix.build` decided: the candidates to measure, the skips with their
    reasons, the models (built once, MACs counted once) and every distinct model the run covers
    (the request's, or with --artifacts those the manifests describe, first one first)."""

    candidates: list[Candidate]
    skipped: list[Skip]
    models: Models
    specs: list[ModelSpec]

    @property
    def spec(self) -> ModelSpec:
        """The run's headline model: the request's, or the first artifact's."""
        return self.specs[0]


class Models:
    """Builds each model description once (seeded), hands out copies, counts MACs once."""

    def __init__(self, seed: int):
        self.seed = seed
        self._models: dict[str, torch.nn.Module] = {}
        self._macs: dict[str, int] = {}

    def base(self, spec: ModelSpec) -> torch.nn.Module:
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self._models:
            torch.manual_seed(self.seed)
            self._models[key] = spec.build().eval()
        return self._models[key]

    def copy(self, spec: ModelSpec) -> torch.nn.Module:
        return copy.deepcopy(self.base(spec))

    def macs(self, spec: ModelSpec) -> int:
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self._macs:
            self._macs[key] = count_macs(copy.deepcopy(self.base(spec)), spec.input_size,
                                         spec.in_chans)
        return self._macs[key]
