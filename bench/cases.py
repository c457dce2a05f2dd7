"""Backend selection: which runners a benchmark run builds, and the stated reason for every other.

A run asks for backends, precisions and options; :func:`plan` answers with candidates (each one
knows how to build its runner, its input shape and its batch range) and skips (backend, reason).
Nothing expensive happens here: models are built, ONNX files exported and sessions created only
when the CLI prepares a candidate, so a skipped backend costs nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.core.artifact import read_manifest
from export.core.errors import BackendUnavailable, UserError
from export.core.manifest import Manifest
from export.core.models import ModelSpec
from export.runtime.base import Runner
from export.runtime.loader import load_artifact
from export.runtime.openvino_runner import OpenVINORunner
from export.runtime.ort_runner import OnnxRuntimeRunner
from export.runtime.registry import RUNTIMES, bf16_unavailable, get_runtime
from export.runtime.torch_runner import TorchRunner

#: the ONNX Runtime entries of the runtime registry (one per execution provider list)
from .candidates import Candidate, Cases, Models, NullRunner, Request, Skip, make_input
from .discover import discover
from .discover import find_manifests as find_manifests  # where callers found it before
from .onnx_cache import (
    INT8_CALIBRATION_COUNT,
    INT8_NOTE,
    cached_int8_onnx,
    cached_onnx,
    int8_quantizer_unavailable,
)

ORT_BACKENDS = tuple(name for name, info in RUNTIMES.items() if info.providers)
TORCH_BACKENDS = ("torch", "torch-compile")
#: CPU runtimes of ONNX files: what on-the-fly INT8 and --artifacts' ONNX files run on
ONNX_CPU_BACKENDS = ("onnxruntime", "openvino")
#: every name --backends accepts; "null" does nothing and measures the harness itself
BACKENDS = (*TORCH_BACKENDS, *ORT_BACKENDS, "openvino", "tensorrt", "null")
#: what a run without --backends measures, per device; the rest are listed as skipped
DEFAULT_BACKENDS = {
    "cpu": ("torch", "onnxruntime", "openvino"),
    "cuda": ("torch", "torch-compile", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt"),
}
NOT_DEFAULT_REASON = {
    ("cpu", "torch-compile"): "left out of the default CPU run: compiling takes tens of "
                              "seconds per batch size on a few cores (add it with --backends "
                              "torch-compile)",
    ("cpu", "onnxruntime-cuda"): "needs --device cuda",
    ("cpu", "onnxruntime-trt"): "needs --device cuda",
    ("cpu", "tensorrt"): "needs --device cuda and a TensorRT engine from --artifacts DIR",
    ("cuda", "onnxruntime"): "CPU backend: measured with --device cpu (or --backends onnxruntime)",
    ("cuda", "openvino"): "CPU backend: measured with --device cpu",
}


def _unavailable(backend: str) -> str | None:
    """Why a registry runtime cannot run here (None: it can); the registry's probe."""
    return get_runtime(backend).unavailable()


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


class Planner:
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

    def plan(self) -> tuple[list[Candidate], list[Skip]]:
        req = self.req
        if req.artifacts is not None:
            self._plan_artifacts(req.artifacts)
            # the eager baseline of each distinct model: the manifest's own model description
            # (classes, channels, input size), seeded weights (timing does not need trained ones)
            model_backends = (["torch"] if req.backends is None else
                              [b for b in req.backends if b in TORCH_BACKENDS or b == "null"])
            planned = len(self.candidates)
            for spec in self.specs:
                for backend in model_backends:
                    self._plan_model_backend(backend, spec,
                                             ["fp32"] if req.backends is None else None)
            for cand in self.candidates[planned:]:
                cand.baseline = cand.backend in TORCH_BACKENDS
            # baselines first: each model's report section starts with its eager row
            self.candidates.sort(key=lambda c: c.artifact is not None)
            return self.candidates, self.skipped
        names = req.backends if req.backends is not None else list(DEFAULT_BACKENDS[req.device])
        for backend in names:
            self._plan_model_backend(backend, req.spec)
        if req.backends is None:
            for backend in BACKENDS:
                reason = NOT_DEFAULT_REASON.get((req.device, backend))
                if reason and backend not in names:
                    self._skip(Skip(backend, reason))
        return self.candidates, self.skipped

    # -- backends that run a model built here ---------------------------------------------

    def _precisions(self) -> list[str]:
        if self.req.precisions is not None:
            return self.req.precisions
        return ["fp32", "fp16"] if self.req.device == "cuda" else ["fp32"]

    def _plan_model_backend(self, backend: str, spec: ModelSpec,
                            precisions: list[str] | None = None) -> None:
        req = self.req
        precisions = precisions or self._precisions()
        if backend in TORCH_BACKENDS:
            compile_ = backend == "torch-compile"
            reason = _compile_unavailable(req.device) if compile_ else None
            for precision in precisions:
                for graphs in req.cuda_graphs:
                    if precision == "int8":
                        self._skip(Skip(backend, "not measured: eager PyTorch has no INT8 path "
                                                 "here; the INT8 rows are ONNX Runtime and "
                                                 "OpenVINO on a QDQ model", precision))
                    elif reason:
                        self._skip(Skip(backend, reason, precision))
                    else:
                        self._add_torch(backend, spec, precision, graphs, compile_)
        elif backend in ORT_BACKENDS:
            reason = _unavailable(backend)
            for precision in precisions:
                reason_p = reason or self._onnx_precision_unavailable(backend, precision)
                if reason_p:
                    self._skip(Skip(backend, reason_p, precision))
                    continue
                self._add_ort(backend, spec, precision)
        elif backend == "openvino":
            reason = ("CPU backend: measured with --device cpu" if req.device != "cpu"
                      else _unavailable("openvino"))
            for precision in precisions:
                reason_p = reason or self._onnx_precision_unavailable(backend, precision)
                if reason_p:
                    self._skip(Skip(backend, reason_p, precision))
                    continue
                self._add_openvino(spec, precision)
        elif backend == "tensorrt":
            self._skip(Skip(backend, "TensorRT engines are benchmarked from the export's "
                                     "artifacts: pass --artifacts DIR"))
        elif backend == "null":
            self.candidates.append(Candidate(
                "null", "fp32", spec, lambda: (NullRunner(spec.num_classes), {})))
        else:  # pragma: no cover - the CLI validates names
            raise UserError(f"unknown backend {backend!r}")

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

    def _onnx_precision_unavailable(self, backend: str, precision: str) -> str | None:
        """Why an on-the-fly ONNX row of this precision is not measured (None: it is)."""
        if precision == "fp32":
            return None
        if precision == "int8":
            if backend not in ONNX_CPU_BACKENDS:
                return ("INT8 rows are measured on the CPU runtimes (onnxruntime, openvino); "
                        "benchmark an INT8 artifact with --artifacts DIR")
            return int8_quantizer_unavailable()
        if backend == "openvino" and precision == "bf16":
            return bf16_unavailable("openvino")
        if backend == "openvino":
            return ("the OpenVINO runner sets fp32, bf16 or int8 explicitly (FP16 inference "
                    "is not measured on the CPU)")
        if precision == "bf16":
            return ("the on-the-fly ONNX export is FP32 and ONNX Runtime has no BF16 "
                    "inference setting for it (BF16 rows: openvino, torch)")
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

    def _add_ort(self, backend: str, spec: ModelSpec, precision: str = "fp32") -> None:
        req = self.req

        def prepare() -> tuple[Runner, dict[str, Any]]:
            path, info = self._onnx_file(spec, precision)
            runner = OnnxRuntimeRunner(path, list(get_runtime(backend).providers), req.threads,
                                       precision, optimization_level=req.ort_opt_level)
            return runner, info

        self.candidates.append(Candidate(
            backend, precision, spec, prepare, extra={"ort_opt_level": req.ort_opt_level},
            note=INT8_NOTE if precision == "int8" else None))

    def _add_openvino(self, spec: ModelSpec, precision: str) -> None:
        req = self.req

        def prepare() -> tuple[Runner, dict[str, Any]]:
            path, info = self._onnx_file(spec, precision)
            return OpenVINORunner(path, precision, req.threads), info

        self.candidates.append(Candidate(
            "openvino", precision, spec, prepare, throughput=req.throughput,
            note=INT8_NOTE if precision == "int8" else None))

    # -- exported artifacts (through their manifest) ------------------------------------

    def _plan_artifacts(self, root: Path) -> None:
        manifests, left_out = discover(root, required=True)
        for folder, why in left_out:  # named, never skipped silently
            self._skip(Skip("artifact", why, artifact=str(folder)))
        first_spec = None
        formats = set()
        for path in manifests:
            try:  # the schema is checked in one place; a bad manifest is a skip with its line
                manifest = read_manifest(path.parent)
            except UserError as exc:
                self._skip(Skip("artifact", f"unreadable manifest: {exc}",
                                         artifact=str(path)))
                continue
            fmt = manifest["format"]
            precision = manifest["precision"]
            spec = ModelSpec.from_dict(manifest["model"])
            rng = manifest["batch_range"]
            batch_range = (rng["min"], rng["max"])
            first_spec = first_spec or spec
            if spec not in self.specs:
                self.specs.append(spec)
            formats.add(fmt)
            artifact = str(path.parent / manifest.get("artifact", ""))
            if manifest.get("deploy") and self.req.backends is None:
                self._add_deployed(path.parent, manifest, spec, batch_range, artifact)
                continue
            if (fmt == "onnx" and precision == "fp32" and "bf16" in (self.req.precisions or [])
                    and "openvino" in (self.req.backends or ONNX_CPU_BACKENDS)
                    and self.req.device == "cpu"):
                self._add_openvino_bf16_artifact(path.parent, spec, batch_range, artifact)
            if self.req.precisions is not None and precision not in self.req.precisions:
                self._skip(Skip(fmt, f"artifact precision {precision} is not in "
                                              f"--precision", precision, artifact=artifact))
                continue
            if fmt in ("onnx", "onnx-fp16", "onnx-int8"):  # every ONNX runtime present
                wanted = ([b for b in self.req.backends if b in ORT_BACKENDS or b == "openvino"]
                          if self.req.backends is not None else
                          list(ONNX_CPU_BACKENDS) if self.req.device == "cpu"
                          else ["onnxruntime-cuda", "onnxruntime-trt"])
            elif fmt == "trt":
                wanted = ["tensorrt"] if (self.req.backends is None
                                          or "tensorrt" in self.req.backends) else []
            else:
                self._skip(Skip(fmt, f"unknown artifact format {fmt!r}", precision,
                                         artifact=artifact))
                continue
            for backend in wanted:
                reason = _unavailable(backend)
                if reason:
                    self._skip(Skip(backend, reason, precision, artifact=artifact))
                    continue
                self.candidates.append(Candidate(
                    backend, precision, spec, self._artifact_loader(path.parent, backend),
                    batch_range=batch_range, artifact=artifact, extra={"format": fmt},
                    throughput=backend == "openvino" and self.req.throughput))
        wanted_trt = "tensorrt" in (self.req.backends or DEFAULT_BACKENDS[self.req.device])
        if wanted_trt and "trt" not in formats:
            self._skip(Skip("tensorrt", f"no TensorRT engine (format trt) under {root}"))

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
            throughput=backend == "openvino" and self.req.throughput,
            note=f"as deployed: {backend} {precision} "
                 + ", ".join(f"{k}={v}" for k, v in deploy.get("settings", {}).items())))

    def _add_openvino_bf16_artifact(self, folder: Path, spec: ModelSpec,
                                    batch_range: tuple[int, int] | None, artifact: str) -> None:
        """An FP32 ONNX artifact at bf16 on OpenVINO, where the CPU has native BF16 (the loader
        then refuses it unless the artifact's gate judged the bf16 contract)."""
        reason = _unavailable("openvino") or bf16_unavailable("openvino")
        if reason:
            self._skip(Skip("openvino", reason, "bf16", artifact=artifact))
            return
        self.candidates.append(Candidate(
            "openvino", "bf16", spec, self._artifact_loader(folder, "openvino", "bf16"),
            batch_range=batch_range, artifact=artifact, extra={"format": "onnx"},
            throughput=self.req.throughput))

    def _artifact_loader(self, folder: Path, backend: str, precision: str | None = None
                         ) -> Callable[[], tuple[Runner, dict[str, Any]]]:
        def prepare() -> tuple[Runner, dict[str, Any]]:
            if backend in ORT_BACKENDS:  # the same thread count and options as on-the-fly ONNX
                return load_artifact(folder, providers=list(get_runtime(backend).providers),
                                     threads=self.req.threads,
                                     optimization_level=self.req.ort_opt_level), {}
            if backend == "openvino":
                # the artifact's precision set explicitly (an FP16 file compiles at f32, a QDQ
                # file as int8: the row records what ran), or bf16 for an FP32 artifact whose
                # gate judged the bf16 contract (the loader refuses it otherwise)
                return load_artifact(folder, runtime="openvino", precision=precision,
                                     threads=self.req.threads), {}
            return load_artifact(folder), {}

        return prepare


def plan(request: Request) -> Cases:
    """The candidates and skips for ``request``; ``request`` itself is left as it was."""
    planner = Planner(request)
    candidates, skipped = planner.plan()
    return Cases(candidates, skipped, planner.models, planner.specs or [request.spec])
