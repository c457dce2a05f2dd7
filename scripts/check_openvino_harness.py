"""Check the OpenVINO runner's latency against OpenVINO's own benchmark_app on the same file.

Exports ResNet-50 (fresh weights, 224x224) to ONNX in a temporary folder, then for each precision
(fp32, bf16 where the CPU has native BF16): times OpenVINORunner.infer at batch 1 (2 threads,
explicit precision; warm-up, then at least --min-time seconds and --min-iters iterations), and
right after runs

    benchmark_app -m FILE -d CPU -hint latency -api sync -infer_precision P
                  -shape [1,3,224,224] -t T -load_config {"CPU": {"INFERENCE_NUM_THREADS": "2"}}

(benchmark_app refuses -nthreads together with -hint latency, so the thread count goes through
its config file). Prints both medians and their ratio; exits 1 if any pair differs by more than
--max-diff (10%). A mismatch means the runner measures something else than OpenVINO does (other
settings, other shapes, overhead in the loop), not that either number is wrong.

    PYTHONPATH=. python scripts/check_openvino_harness.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export.convert.onnx_export import export_onnx, save_onnx
from export.core import cpu_features
from export.core.errors import BackendUnavailable
from export.core.models import ModelSpec
from export.core.weights import fresh_source
from export.runtime.openvino_runner import (
    INFERENCE_PRECISION,
    OpenVINORunner,
    OpenVINOSettings,
)

SHAPE = (1, 3, 224, 224)


def benchmark_app_path() -> str:
    here = Path(sys.executable).parent / "benchmark_app"
    found = str(here) if here.exists() else shutil.which("benchmark_app")
    if not found:
        raise SystemExit("benchmark_app not found (it ships with pip install openvino)")
    return found


def time_runner(path: Path, precision: str, threads: int, min_time: float, min_iters: int,
                warmup_s: float) -> dict:
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    runner = OpenVINORunner(path, precision, OpenVINOSettings(threads=threads))
    with runner:
        start = time.perf_counter()
        runner.infer(x)  # compiles the static-shape model
        while time.perf_counter() - start < warmup_s:
            runner.infer(x)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < min_iters or time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            runner.infer(x)
            times.append(time.perf_counter() - t0)
        info = runner.runtime_info()
    ms = np.array(times) * 1e3
    return {"median_ms": float(np.median(ms)), "mean_ms": float(ms.mean()), "count": len(ms),
            "effective_precision": info["effective_precision"],
            "kernels": info["kernels"]}


def run_benchmark_app(path: Path, precision: str, threads: int, seconds: int,
                      workdir: Path) -> dict:
    config = workdir / "benchmark_app_config.json"
    config.write_text(json.dumps({"CPU": {"INFERENCE_NUM_THREADS": str(threads)}}))
    cmd = [benchmark_app_path(), "-m", str(path), "-d", "CPU", "-hint", "latency", "-api", "sync",
           "-infer_precision", INFERENCE_PRECISION[precision], "-load_config", str(config),
           "-shape", "[" + ",".join(map(str, SHAPE)) + "]", "-t", str(seconds)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"benchmark_app failed ({proc.returncode}):\n{out[-3000:]}")

    def grab(pattern: str) -> str | None:
        m = re.search(pattern, out)
        return m.group(1) if m else None

    def need(pattern: str) -> str:
        found = grab(pattern)
        if found is None:
            raise SystemExit(f"benchmark_app printed no line matching {pattern!r}:\n{out[-3000:]}")
        return found

    return {"median_ms": float(need(r"Median:\s+([\d.]+) ms")),
            "mean_ms": float(need(r"Average:\s+([\d.]+) ms")),
            "count": int(need(r"Count:\s+(\d+) iterations")),
            "inference_precision": grab(r"INFERENCE_PRECISION_HINT: <Type: '(\w+)'>"),
            "threads": grab(r"INFERENCE_NUM_THREADS: (\d+)"),
            "command": " ".join(cmd)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", action="append", choices=["fp32", "bf16"],
                    help="repeatable; default fp32 and bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=10.0)
    ap.add_argument("--min-iters", type=int, default=100)
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds of our loop")
    ap.add_argument("--max-diff", type=float, default=0.10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate ours / benchmark_app this many times and compare the medians "
                         "of the rounds (steadier on a shared machine)")
    args = ap.parse_args(argv)
    precisions = args.precision or ["fp32", "bf16"]

    print(f"CPU: {cpu_features.describe()['isa']}, native BF16 {cpu_features.native_bf16()}, "
          f"load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} usable cores "
          "(a load above the core count makes the comparison noisy: use --rounds 3)")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        spec = ModelSpec.create("resnet50", input_size=224)
        t0 = time.perf_counter()
        path = save_onnx(export_onnx(fresh_source(spec).model, spec), tmp_path / "resnet50.onnx")
        print(f"exported {spec.name} 224x224 (fresh weights) in {time.perf_counter() - t0:.0f} s")
        for precision in precisions:
            ours_rounds, app_rounds = [], []
            try:
                for _ in range(args.rounds):  # ours, then benchmark_app right after, per round
                    ours_rounds.append(time_runner(path, precision, args.threads, args.min_time,
                                                   args.min_iters, args.warmup))
                    app_rounds.append(run_benchmark_app(path, precision, args.threads,
                                                        round(args.min_time), tmp_path))
            except BackendUnavailable as exc:
                print(f"{precision}: skipped: {exc}")
                continue
            print(f"\n{precision} b=1, {args.threads} threads")
            for r, (ours, app) in enumerate(zip(ours_rounds, app_rounds)):
                tag = f" (round {r + 1})" if args.rounds > 1 else ""
                print(f"  OpenVINORunner{tag}: median {ours['median_ms']:7.2f} ms  mean "
                      f"{ours['mean_ms']:7.2f} ms  ({ours['count']} iterations, precision "
                      f"{ours['effective_precision']}, kernels {ours['kernels']})")
                print(f"  benchmark_app{tag} : median {app['median_ms']:7.2f} ms  mean "
                      f"{app['mean_ms']:7.2f} ms  ({app['count']} iterations, precision "
                      f"{app['inference_precision']}, threads {app['threads']})")
            ratio = (statistics.median(o["median_ms"] for o in ours_rounds)
                     / statistics.median(a["median_ms"] for a in app_rounds))
            ok = abs(ratio - 1) <= args.max_diff
            failed |= not ok
            verdict = "OK" if ok else f"DIFFERS by more than {args.max_diff:.0%}"
            print(f"  ratio ours/benchmark_app (median latency): {ratio:.3f}  {verdict}")
            print(f"  command: {app_rounds[-1]['command']}")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
