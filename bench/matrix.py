"""Backend selection: which runners a benchmark run builds, and the stated reason for every other.

A run asks for backends, precisions and options; :func:`build` answers with candidates (each one
knows how to build its runner, its input shape and its batch range) and skips (backend, reason).
The backends are bench's own (:mod:`.model_backends`: eager PyTorch, torch.compile, the
harness) and every runtime of the registry, read when asked (a runtime registered later is
one); a registry runtime's runner is built by its factory. Nothing expensive happens here:
models are built, ONNX files exported and sessions created only when the CLI prepares a
candidate, so a skipped backend costs nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from export.core.artifact import read_manifest
from export.core.errors import BackendUnavailable, UserError
from export.core.manifest import Manifest
from export.core.models import ModelSpec
from export.runtime.base import Runner, RunTarget
from export.runtime.loader import load_artifact
from export.runtime.registry import EXECUTION_PRECISIONS, RUNTIMES, RuntimeInfo, runtimes_for
from export.runtime.torch_runner import TorchRunner

from .candidates import Candidate, Cases, Models, NullRunner, Request, Skip, make_input
from .discover import discover
from .discover import find_manifests as find_manifests  # where callers found it before
from .model_backends import EAGER, MODEL_BACKENDS, ModelBackend, is_model
from .onnx_cache import (
    INT8_CALIBRATION_COUNT,
    INT8_NOTE,
    cached_int8_onnx,
    cached_onnx,
    int8_quantizer_unavailable,
)


def backend_names() -> tuple[str, ...]:
    """Every name --backends accepts: bench's own backends, then the registry's runtimes."""
    return (*MODEL_BACKENDS, *RUNTIMES)


def default_backends(device: str) -> list[str]:
    """What a run without --backends measures on ``device``; the rest are listed as skipped."""
    return [*(b.name for b in MODEL_BACKENDS.values() if device in b.defaults),
            *(r.name for r in RUNTIMES.values() if r.device == device)]


def not_default_reason(device: str, name: str) -> str | None:
    """Why a run without --backends on ``device`` leaves ``name`` out (None: it does not)."""
    if name in MODEL_BACKENDS:
        return MODEL_BACKENDS[name].not_default.get(device)
    info = RUNTIMES[name]
    if info.device == device:
        return None
    return f"{info.device} runtime: measured with --device {info.device} (or --backends {name})"


def _unavailable(backend: str) -> str | None:
    """Why a registry runtime cannot run here (None: it can); the registry's probe."""
    return RUNTIMES[backend].unavailable()


def _compile_unavailable(device: str) -> str | None:
    if device == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "torch.compile on CPU needs a C++ compiler (none found on PATH)"
    if device == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # pragma: no cover - very old torch
            return None
        if not has_triton():
            return "torch.compile on CUDA needs Triton, which is not installed"
    return None


def _int8_runtimes() -> list[str]:
    """The CPU runtimes that run the on-the-fly (CPU flavour) INT8 QDQ file fast."""
    return [r.name for r in RUNTIMES.values()
            if r.device == "cpu" and r.runs("onnx-int8", "cpu") and r.slow_flavour("cpu") is None]


def _extra_precisions(name: str, own: str) -> tuple[str, ...]:
    """Precisions runtime ``name`` may run an ``own`` artifact at besides its own."""
    return tuple(p for p in EXECUTION_PRECISIONS.get((name, own), ()) if p != own)


class MatrixBuilder:
    """Turns a :class:`Request` into candidates and skips."""

    def __init__(self, request: Request):
        self.req = request
        self.models = Models(request.seed)
        self.candidates: list[Candidate] = []
        self.skipped: list[Skip] = []
        self.specs: list[ModelSpec] = []  # --artifacts: the models the manifests describe

    def _skip(self, skip: Skip) -> None:
        if skip not in self.skipped:  # e.g. the same reason for the with/without-graphs variants
            self.skipped.append(skip)

    def build(self) -> tuple[list[Candidate], list[Skip]]:
        req = self.req
        if req.artifacts is not None:
            self._from_artifacts(req.artifacts)
            # the eager baseline of each distinct model: the manifest's own model description
            # (classes, channels, input size), seeded weights (timing does not need trained ones)
            model_backends = ([EAGER] if req.backends is None else
                              [b for b in req.backends if b in MODEL_BACKENDS])
            before = len(self.candidates)
            for spec in self.specs:
                for backend in model_backends:
                    self._model_backend(backend, spec,
                                        ["fp32"] if req.backends is None else None)
            for cand in self.candidates[before:]:
                cand.baseline = is_model(cand.backend)
            # baselines first: each model's report section starts with its eager row
            self.candidates.sort(key=lambda c: c.artifact is not None)
            return self.candidates, self.skipped
        names = req.backends if req.backends is not None else default_backends(req.device)
        for backend in names:
            self._model_backend(backend, req.spec)
        if req.backends is None:
            for backend in backend_names():
                reason = not_default_reason(req.device, backend)
                if reason and backend not in names:
                    self._skip(Skip(backend, reason))
        return self.candidates, self.skipped

    # -- a model built here: eager, compiled, or exported on the fly -------------------------

    def _precisions(self) -> list[str]:
        if self.req.precisions is not None:
            return self.req.precisions
        return ["fp32", "fp16"] if self.req.device == "cuda" else ["fp32"]

    def _model_backend(self, backend: str, spec: ModelSpec,
                       precisions: list[str] | None = None) -> None:
        """A model built here: in PyTorch (bench's own backends), or exported on the fly to
        ONNX for a registry runtime that runs ONNX files."""
        precisions = precisions or self._precisions()
        if backend in MODEL_BACKENDS:
            self._own_backend(MODEL_BACKENDS[backend], spec, precisions)
            return
        if backend not in RUNTIMES:  # pragma: no cover - the CLI validates names
            raise UserError(f"unknown backend {backend!r}")
        info = RUNTIMES[backend]
        if "onnx" not in info.formats:
            self._skip(Skip(backend, f"{backend} runs {', '.join(info.formats)} artifacts, not "
                                     "the on-the-fly ONNX export: pass --artifacts DIR"))
            return
        reason = _unavailable(backend)
        for precision in precisions:
            reason_p = reason or self._onnx_precision_unavailable(info, precision)
            if reason_p:
                self._skip(Skip(backend, reason_p, precision))
                continue
            self._add_onnx(info, spec, precision)

    def _own_backend(self, backend: ModelBackend, spec: ModelSpec, precisions: list[str]) -> None:
        """Bench's own backends: the model in PyTorch (eager or compiled), or the harness."""
        if backend.harness:
            self.candidates.append(Candidate(
                backend.name, "fp32", spec, lambda: (NullRunner(spec.num_classes), {})))
            return
        reason = _compile_unavailable(self.req.device) if backend.compile else None
        for precision in precisions:
            for graphs in self.req.cuda_graphs:
                if precision == "int8":
                    self._skip(Skip(backend.name, "not measured: eager PyTorch has no INT8 path "
                                                  "here; the INT8 rows are the CPU runtimes' ("
                                                  f"{', '.join(_int8_runtimes())}) on a QDQ "
                                                  "model", precision))
                elif reason:
                    self._skip(Skip(backend.name, reason, precision))
                else:
                    self._add_torch(backend.name, spec, precision, graphs, backend.compile)

    def _add_torch(self, backend: str, spec: ModelSpec, precision: str, graphs: bool,
                   compile_: bool) -> None:
        req = self.req
        autocast = precision == "bf16" and req.device == "cpu"

        def make(model: Any) -> TorchRunner:
            return TorchRunner(model, req.device, precision, req.channels_last, compile_,
                               compile_dynamic=False if compile_ else None, cuda_graphs=graphs)

        try:
            make(None)  # the constructor's checks (device, precision, graphs) cost nothing
        except BackendUnavailable as exc:
            self._skip(Skip(backend, str(exc), precision))
            return
        extra = {"compile_mode": "reduce-overhead" if graphs else "default"} if compile_ else {}
        self.candidates.append(Candidate(
            backend, precision, spec, lambda: (make(self.models.copy(spec)), {}),
            channels_last=req.channels_last, cuda_graphs=graphs, extra=extra,
            note="CPU autocast: weights fp32, convolutions and matmuls in bf16" if autocast
            else None))

    def _onnx_precision_unavailable(self, info: RuntimeInfo, precision: str) -> str | None:
        """Why an on-the-fly ONNX row of this precision is not measured (None: it is)."""
        if precision == "fp32":
            return None
        if precision == "int8":
            if info.name not in _int8_runtimes():
                return (f"INT8 rows are measured on the CPU runtimes "
                        f"({', '.join(_int8_runtimes())}); benchmark an INT8 artifact with "
                        "--artifacts DIR")
            return int8_quantizer_unavailable()
        if precision in _extra_precisions(info.name, "fp32"):  # bf16 of the FP32 file
            return info.not_native(precision)
        if precision == "bf16":
            rows = [r for r in RUNTIMES if "bf16" in _extra_precisions(r, "fp32")]
            return (f"the on-the-fly ONNX export is FP32 and {info.name} has no BF16 inference "
                    f"setting for it (BF16 rows: {', '.join([*rows, EAGER])})")
        return ("the on-the-fly ONNX export is FP32; benchmark an FP16 ONNX from "
                "resnet-export with --artifacts DIR")

    def _onnx_file(self, spec: ModelSpec, precision: str) -> tuple[Path, dict[str, Any]]:
        """The cached FP32 ONNX of ``spec``, or its INT8 QDQ quantization (both cached)."""
        req = self.req
        path, info = cached_onnx(self.models.base(spec), spec, req.seed, req.cache_dir)
        if precision != "int8":
            return path, info
        calibration = make_input(INT8_CALIBRATION_COUNT, spec, req.seed + 1)
        int8_path, int8_info = cached_int8_onnx(path, calibration, req.cache_dir)
        # the quantization is part of the on-the-fly export's cost, like the export itself
        info = {**info, **int8_info, "export_s": info["export_s"] + int8_info["quantize_s"]}
        return int8_path, info

    def _options(self, info: RuntimeInfo) -> dict[str, Any]:
        """The run's runner options that ``info``'s runner takes (threads, ONNX Runtime's
        graph optimisation level): the same for on-the-fly files and artifacts."""
        given = {"threads": self.req.threads, "optimization_level": self.req.ort_opt_level}
        return {k: v for k, v in given.items() if k in info.options}

    def _extra(self, info: RuntimeInfo) -> dict[str, Any]:
        return {"ort_opt_level": self.req.ort_opt_level} \
            if "optimization_level" in info.options else {}

    def _add_onnx(self, info: RuntimeInfo, spec: ModelSpec, precision: str = "fp32") -> None:
        """The cached on-the-fly ONNX file of ``spec`` on a registry runtime."""
        def prepare() -> tuple[Runner, dict[str, Any]]:
            path, facts = self._onnx_file(spec, precision)
            return info.build(RunTarget(path, precision, options=self._options(info))), facts

        self.candidates.append(Candidate(
            info.name, precision, spec, prepare, extra=self._extra(info),
            throughput=self.req.throughput, note=INT8_NOTE if precision == "int8" else None))

    # -- exported artifacts (through their manifest) ------------------------------------

    def _from_artifacts(self, root: Path) -> None:
        manifests, left_out = discover(root, required=True)
        for folder, why in left_out:  # named, never skipped silently
            self._skip(Skip("artifact", why, artifact=str(folder)))
        formats = set()
        for path in manifests:
            try:  # the schema is checked in one place; a bad manifest is a skip with its line
                manifest = read_manifest(path.parent)
            except UserError as exc:
                self._skip(Skip("artifact", f"unreadable manifest: {exc}", artifact=str(path)))
                continue
            spec = ModelSpec.from_dict(manifest["model"])
            if spec not in self.specs:
                self.specs.append(spec)
            formats.add(manifest["format"])
            self._one_artifact(path.parent, manifest, spec)
        wanted = self.req.backends or default_backends(self.req.device)
        for name in wanted:  # a runtime asked for that no artifact here is for
            info = RUNTIMES.get(name)
            direct = [f for f in info.formats if info in runtimes_for(f, direct=True)] \
                if info else []
            if direct and not formats & set(direct):
                self._skip(Skip(name, f"no artifact it runs (format {', '.join(direct)}) "
                                      f"under {root}"))

    def _one_artifact(self, folder: Path, manifest: Manifest, spec: ModelSpec) -> None:
        """One artifact on every runtime of the run that runs its format and flavour."""
        fmt, precision = manifest["format"], manifest["precision"]
        rng = manifest["batch_range"]
        where: dict[str, Any] = {"batch_range": (rng["min"], rng["max"]),
                 "artifact": str(folder / manifest.get("artifact", ""))}
        if manifest.get("deploy") and self.req.backends is None:
            self._add_deployed(folder, manifest, spec, **where)
            return
        flavour = (manifest.get("int8") or {}).get("flavour")
        found = runtimes_for(fmt, flavour, direct=True)
        runtimes = ([r for r in found if r.name in self.req.backends]
                    if self.req.backends is not None
                    else [r for r in found if r.device == self.req.device])
        if not runtimes and self.req.backends is None:
            self._skip(Skip(fmt, f"no {self.req.device} runtime runs {fmt} artifacts (they "
                                 f"run on {', '.join(r.name for r in found) or 'none'})",
                            precision, artifact=where["artifact"]))
        asked = self.req.precisions
        for info in runtimes:  # another precision it may run at (an FP32 ONNX at bf16)
            for extra in _extra_precisions(info.name, precision):
                if asked is not None and extra in asked:
                    self._add_artifact(folder, info, spec, extra, fmt, where)
        if asked is not None and precision not in asked:
            self._skip(Skip(fmt, f"artifact precision {precision} is not in --precision",
                            precision, artifact=where["artifact"]))
            return
        for info in runtimes:
            self._add_artifact(folder, info, spec, precision, fmt, where, own=True)

    def _add_artifact(self, folder: Path, info: RuntimeInfo, spec: ModelSpec, precision: str,
                      fmt: str, where: dict[str, Any], own: bool = False) -> None:
        """The artifact on ``info`` at ``precision``: its own, or one the loader refuses unless
        the artifact's gate judged that contract (bf16 only where the CPU has it natively)."""
        reason = _unavailable(info.name) or (None if own else info.not_native(precision))
        if reason:
            self._skip(Skip(info.name, reason, precision, artifact=where["artifact"]))
            return
        options = self._options(info)
        if not own:
            options["precision"] = precision

        def prepare() -> tuple[Runner, dict[str, Any]]:
            return load_artifact(folder, runtime=info.name, **options), {}

        self.candidates.append(Candidate(
            info.name, precision, spec, prepare, **where, extra={"format": fmt},
            throughput=self.req.throughput))

    def _add_deployed(self, folder: Path, manifest: Manifest, spec: ModelSpec,
                      batch_range: tuple[int, int], artifact: str) -> None:
        """An artifact with a ``deploy`` section (a plan's choice) runs the way it says: its
        runtime, precision and settings (--backends measures it on others instead)."""
        deploy = manifest.get("deploy") or {}
        backend, precision = deploy["runtime"], deploy["precision"]
        if self.req.precisions is not None and precision not in self.req.precisions:
            self._skip(Skip(backend, f"deployed precision {precision} is not in --precision",
                            precision, artifact=artifact))
            return
        reason = _unavailable(backend) if backend in RUNTIMES else None
        if reason:
            self._skip(Skip(backend, reason, precision, artifact=artifact))
            return
        self.candidates.append(Candidate(
            backend, precision, spec, lambda: (load_artifact(folder), {}),
            batch_range=batch_range, artifact=artifact,
            extra={"format": manifest["format"], "deploy": dict(deploy.get("settings", {}))},
            throughput=self.req.throughput,
            note=f"as deployed: {backend} {precision} "
                 + ", ".join(f"{k}={v}" for k, v in deploy.get("settings", {}).items())))


def build(request: Request) -> Cases:
    """The candidates and skips for ``request``; ``request`` itself is left as it was."""
    builder = MatrixBuilder(request)
    candidates, skipped = builder.build()
    return Cases(candidates, skipped, builder.models, builder.specs or [request.spec])
