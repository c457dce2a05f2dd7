"""Probe: OpenVINO on this CPU against ONNX Runtime and eager PyTorch, ResNet-50 224x224.

One process, every runner built up front, then timed round-robin (each round runs a short block
of every runner at every batch size in turn), so a shared machine's load changes hit all of them
alike; compare the ratios, not the absolute figures. Then OpenVINO's throughput mode
(benchmark_app-style: THROUGHPUT hint, AsyncInferQueue with the optimal number of requests) for
fp32 and bf16, alternated.

Rows: OpenVINO fp32 (explicit f32, ACCURACY: the runner's default), the same with PERFORMANCE
mode and with the dynamic-batch model (to show what those two choices cost), bf16 (explicit),
OpenVINO with default settings (nothing but the thread count: the plugin chooses the precision),
ONNX Runtime FP32 (CPU provider, all optimisations) and torch eager FP32.

    PYTHONPATH=. python scripts/bench_openvino_probe.py --json probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.environment import cpu_model
from bench.throughput import measure_throughput
from export.convert.onnx_export import export_onnx, save_onnx
from export.core import cpu_features
from export.core.errors import BackendUnavailable
from export.core.models import ModelSpec
from export.core.weights import fresh_source
from export.runtime.openvino_runner import OpenVINORunner, _precision_name
from export.runtime.ort_runner import OnnxRuntimeRunner
from export.runtime.torch_runner import TorchRunner


class _DefaultOpenVINO:
    """OpenVINO with its defaults (only the thread count and the static shape are set)."""

    def __init__(self, path, threads: int):
        import openvino as ov

        self.core, self.path, self.threads = ov.Core(), str(path), threads
        self.requests: dict[tuple[int, ...], Any] = {}
        self.precision: str | None = None

    def infer(self, x: np.ndarray) -> np.ndarray:
        req = self.requests.get(x.shape)
        if req is None:
            model = self.core.read_model(self.path)
            model.reshape({model.inputs[0].get_any_name(): list(x.shape)})
            compiled = self.core.compile_model(model, "CPU",
                                               {"INFERENCE_NUM_THREADS": self.threads})
            self.precision = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
            req = self.requests[x.shape] = compiled.create_infer_request()
        req.infer({0: x}, share_inputs=True)
        return req.get_output_tensor(0).data.copy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, action="append", help="default 1 and 8")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--block", type=int, default=3, help="iterations per runner per round at b=1 "
                    "(larger batches: max(1, block // batch))")
    ap.add_argument("--tput-seconds", type=float, default=5.0)
    ap.add_argument("--tput-rounds", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    batches = args.batch or [1, 8]
    torch.set_num_threads(args.threads)

    spec = ModelSpec.create("resnet50", input_size=224)
    source = fresh_source(spec)
    import tempfile

    tmp = tempfile.TemporaryDirectory()
    path = save_onnx(export_onnx(source.model, spec), os.path.join(tmp.name, "resnet50.onnx"))

    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    ov_runners: dict[str, OpenVINORunner] = {}
    rows = [
        ("openvino fp32", {"precision": "fp32"}),
        ("openvino fp32 PERFORMANCE mode", {"precision": "fp32", "execution_mode": "PERFORMANCE"}),
        ("openvino fp32 dynamic batch", {"precision": "fp32", "static_shapes": False}),
        ("openvino bf16", {"precision": "bf16"}),
    ]
    skipped: dict[str, str] = {}
    for name, kwargs in rows:
        try:
            r = OpenVINORunner(path, threads=args.threads, **kwargs)
        except BackendUnavailable as exc:
            skipped[name] = str(exc)
            continue
        r.activate()
        ov_runners[name] = r
        runners[name] = r.infer
    default = _DefaultOpenVINO(path, args.threads)
    runners["openvino default settings"] = default.infer
    ort = OnnxRuntimeRunner(path, threads=args.threads)
    ort.activate()
    runners["onnxruntime fp32"] = ort.infer
    eager = TorchRunner(source.model)
    eager.activate()
    runners["torch eager fp32"] = eager.infer

    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, 224, 224), dtype=np.float32) for b in batches}
    for fn in runners.values():  # compile per shape, warm up
        for b in batches:
            for _ in range(2):
                fn(inputs[b])
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in runners for b in batches}
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for b in batches:
            for name, fn in runners.items():
                for _ in range(max(1, args.block // b)):
                    t0 = time.perf_counter()
                    fn(inputs[b])
                    times[(name, b)].append(time.perf_counter() - t0)
    latency_s = time.perf_counter() - t_start

    throughput: dict[str, list[dict]] = {}
    for _ in range(args.tput_rounds):
        for name in ("openvino fp32", "openvino bf16"):
            if name in ov_runners:
                for b in batches:
                    res = measure_throughput(ov_runners[name], inputs[b],
                                             min_time_s=args.tput_seconds)
                    throughput.setdefault(f"{name} b={b}", []).append(res)
    load_after = os.getloadavg()

    precisions = {n: r.effective_precision for n, r in ov_runners.items()}
    precisions["openvino default settings"] = default.precision
    result: dict[str, Any] = {
        "cpu_model": cpu_model(), "isa": cpu_features.summary(),
        "native_bf16": cpu_features.native_bf16(), "threads": args.threads,
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "latency_phase_s": round(latency_s, 1), "rounds": args.rounds, "batches": batches,
        "effective_precision": precisions, "skipped": skipped,
        "latency_ms": {}, "throughput": {},
        "versions": {"openvino": __import__("openvino").get_version(),
                     "onnxruntime": __import__("onnxruntime").__version__,
                     "torch": torch.__version__},
    }
    print(f"CPU: {result['cpu_model']} ({result['isa']}), {args.threads} threads, load "
          f"{result['load_average_before']} -> {result['load_average_after']}")
    print("\n| runner | runs in | " + " | ".join(
        f"b={b} median ms | b={b} p90 ms | b={b} vs ov fp32" for b in batches) + " |")
    print("|---|---|" + "---|---|---|" * len(batches))
    for name in runners:
        cells = []
        for b in batches:
            ms = np.array(times[(name, b)]) * 1e3
            med, p90 = float(np.median(ms)), float(np.percentile(ms, 90))
            ref = float(np.median(np.array(times[("openvino fp32", b)]) * 1e3)) \
                if ("openvino fp32", b) in times else float("nan")
            result["latency_ms"][f"{name} b={b}"] = {"median": med, "p90": p90, "n": len(ms),
                                                     "ratio_to_openvino_fp32": med / ref}
            cells.append(f"{med:.1f} | {p90:.1f} | {med / ref:.2f}x")
        runs_in = precisions.get(name) or ("f32" if "fp32" in name else "?")
        print(f"| {name} | {runs_in} | " + " | ".join(cells) + " |")
    print("\n| throughput mode | batch | images/s (per round) | requests | streams |")
    print("|---|---|---|---|---|")
    for key, runs in throughput.items():
        name, b = key.rsplit(" b=", 1)
        ips = [r["images_per_s"] for r in runs]
        result["throughput"][key] = {"images_per_s": ips, "requests": runs[0]["requests"],
                                     "num_streams": runs[0]["num_streams"],
                                     "effective_precision": runs[0]["effective_precision"]}
        print(f"| {name} | {b} | " + ", ".join(f"{v:.1f}" for v in ips) +
              f" | {runs[0]['requests']} | {runs[0]['num_streams']} |")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    for r in (*ov_runners.values(), ort, eager):
        r.deactivate()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
