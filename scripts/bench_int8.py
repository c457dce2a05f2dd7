"""INT8 probe: speed of FP32 vs INT8 QDQ ResNet-50 on ONNX Runtime and OpenVINO CPU, and accuracy
of INT8 on trained digits models per calibration method and count.

    PYTHONPATH=. python scripts/bench_int8.py speed --work /tmp/int8-speed [--nncf] \
        [--runtimes ort,openvino] [--reuse]
    PYTHONPATH=. python scripts/bench_int8.py accuracy --checkpoint /tmp/int8-r20/best.pt \
        [--checkpoint /tmp/int8-r18/best.pt] [--counts 32,64,256,512] [--nncf]

speed: ResNet-50 at 224x224 with fresh weights (export.core.weights.fresh_source), exported once to
FP32 ONNX, quantized into each INT8 variant (minmax on 64 seeded N(0,1) images: the method
changes ranges, not speed). All sessions are created first, warmed up, then timed round-robin,
one inference of each variant in turn, so machine noise hits every variant alike. 2 threads
everywhere. Reports p50/p90 latency and the speed-up over FP32 on the same runtime.

accuracy: each checkpoint is exported to FP32 ONNX; calibration images are a seeded random
subset of the checkpoint's TRAINING split, judged on its TEST split (never the same images):
top-1 of FP32 and INT8, top-1 agreement with FP32, minimum and mean cosine of the logits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from export.convert import int8, qdq
from export.convert.onnx_export import export_onnx, save_onnx

THREADS = 2


def cpu_description() -> dict:
    info = {"machine": platform.machine(), "model": None, "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and info["model"] is None:
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not info["flags"]:
                flags = line.split(":", 1)[1].split()
                info["flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    import os

    info["logical_cpus"] = os.cpu_count()
    return info


def versions() -> dict:
    import onnx
    import onnxruntime
    import openvino
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
           "openvino": openvino.__version__}
    try:
        import nncf

        out["nncf"] = nncf.__version__
    except ImportError:
        out["nncf"] = None
    return out


# ---------------------------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------------------------


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
             "INFERENCE_NUM_THREADS": THREADS}


def ov_session(path: Path):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", OV_CONFIG)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)]


RUNTIMES = {"ort": ort_session, "openvino": ov_session}


def nncf_quantize(fp32: Path, out: Path, calibration: np.ndarray, batch: int = 16) -> dict:
    """NNCF's post-training quantization of the ONNX model (default preset: performance)."""
    import nncf
    import onnx

    model = onnx.load(str(fp32))
    name = model.graph.input[0].name
    batches = [calibration[i:i + batch] for i in range(0, len(calibration), batch)]
    started = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(batches, lambda x: {name: x}),
                              subset_size=len(batches))
    onnx.save(quantized, str(out))
    return {"quantizer": "nncf.quantize", "version": nncf.__version__,
            "seconds": round(time.perf_counter() - started, 1),
            **{k: v for k, v in qdq.describe_qdq(quantized).items()
               if k in ("qdq_nodes", "activation_dtypes", "zero_points_all_zero")}}


# ---------------------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------------------


def speed_variants(include_nncf: bool) -> dict:
    cpu = int8.RECIPES["cpu"]
    variants = {
        "int8-cpu (u8 asym act, s8 sym w)": cpu,
        "int8-cpu reduce_range": dataclasses.replace(cpu, reduce_range=True),
        "int8-cpu but s8 sym act": dataclasses.replace(cpu, activation_type="int8",
                                                       activation_symmetric=True),
        "int8-tensorrt (s8 sym act+w)": int8.RECIPES["tensorrt"],
    }
    if include_nncf:
        variants["int8-nncf"] = "nncf"
    return variants


def time_round_robin(fns: dict, batch: np.ndarray, iterations: int, warmup: int = 3) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn(batch)
    samples = {name: [] for name in fns}
    for _ in range(iterations):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn(batch)
            samples[name].append((time.perf_counter() - started) * 1e3)
    return samples


def summarise(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
            "min_ms": round(ordered[0], 2), "n": len(ordered),
            "cv": round(statistics.pstdev(ordered) / statistics.mean(ordered), 3)}


def run_speed(args) -> dict:
    from export.core.models import ModelSpec
    from export.core.weights import fresh_source

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec.create("resnet50")
    fp32 = work / "resnet50-fp32.onnx"
    if not fp32.exists():
        started = time.perf_counter()
        save_onnx(export_onnx(fresh_source(spec).model, spec), fp32)
        print(f"exported {fp32} in {time.perf_counter() - started:.0f}s", flush=True)
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((64, 3, 224, 224), dtype=np.float32)
    models = {"fp32": fp32}
    reports = {}
    for name, recipe in speed_variants(args.nncf).items():
        path = work / (name.split(" ")[0] + ("-rr" if "reduce" in name else "")
                       + ("-s8act" if "but s8" in name else "") + ".onnx")
        started = time.perf_counter()
        if args.reuse and path.exists():
            reports[name] = {"reused": str(path)}
        elif recipe == "nncf":
            reports[name] = nncf_quantize(fp32, path, calibration)
        else:
            report = int8.quantize_qdq(fp32, path, calibration, method="minmax", recipe=recipe)
            reports[name] = {k: report[k] for k in ("activations", "weights", "bias", "qdq_nodes",
                                                     "zero_points_all_zero", "seconds")}
        print(f"{name}: {path.name} in {time.perf_counter() - started:.0f}s", flush=True)
        models[name] = path
    results = {"cpu": cpu_description(), "versions": versions(), "threads": THREADS,
               "openvino_config": OV_CONFIG, "quantization": reports, "batches": {}}
    for batch_size, iterations in ((1, args.iterations_b1), (8, args.iterations_b8)):
        batch = rng.standard_normal((batch_size, 3, 224, 224), dtype=np.float32)
        fns = {}
        for runtime in args.runtimes.split(","):
            factory = RUNTIMES[runtime]
            for name, path in models.items():
                fns[f"{runtime} | {name}"] = factory(path)
        started = time.perf_counter()
        samples = time_round_robin(fns, batch, iterations)
        stats = {k: summarise(v) for k, v in samples.items()}
        for key, value in stats.items():
            runtime = key.split(" | ")[0]
            value["speedup_vs_fp32_same_runtime"] = round(
                stats[f"{runtime} | fp32"]["p50_ms"] / value["p50_ms"], 2)
        results["batches"][batch_size] = stats
        print(f"batch {batch_size}: {iterations} rounds in {time.perf_counter() - started:.0f}s",
              flush=True)
        del fns
    return results


def speed_table(results: dict) -> str:
    lines = ["| runtime | model | b=1 p50 | b=1 vs FP32 | b=8 p50 | b=8 vs FP32 | b=8 img/s "
             "| b=1 cv |",
             "|---|---|---|---|---|---|---|---|"]
    b1, b8 = results["batches"][1], results["batches"][8]
    for key in b1:
        runtime, model = key.split(" | ")
        lines.append(f"| {runtime} | {model} | {b1[key]['p50_ms']:.1f} ms | "
                     f"{b1[key]['speedup_vs_fp32_same_runtime']:.2f}x | {b8[key]['p50_ms']:.1f} ms "
                     f"| {b8[key]['speedup_vs_fp32_same_runtime']:.2f}x | "
                     f"{8000 / b8[key]['p50_ms']:.1f} | {b1[key]['cv']:.2f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------------------------


def judge(ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict:
    cosine = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {"top1": round(float((got.argmax(1) == labels).mean()), 4),
            "agreement": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4),
            "min_cos": round(float(cosine.min()), 5), "mean_cos": round(float(cosine.mean()), 5),
            "finite": bool(np.isfinite(got).all())}


def run_accuracy(args) -> dict:
    from export.core.checkpoint import load_checkpoint, model_from_checkpoint
    from export.data import load_training_data, normalise, to_channels

    counts = [int(c) for c in args.counts.split(",")]
    out = {"cpu": cpu_description(), "versions": versions(), "models": []}
    for ckpt_path in args.checkpoint:
        ckpt = load_checkpoint(ckpt_path)
        spec = ckpt.spec
        work = Path(args.work) / spec.name
        work.mkdir(parents=True, exist_ok=True)
        fp32 = save_onnx(export_onnx(model_from_checkpoint(ckpt), spec), work / "fp32.onnx")
        data = load_training_data(ckpt.meta["dataset"], spec.input_size)
        def prepare(part: str, spec=spec, data=data) -> np.ndarray:
            return normalise(to_channels(data.images[part], spec.in_chans), spec.mean, spec.std)

        train, test, labels = prepare("train"), prepare("test"), data.labels["test"]
        ref = ort_session(fp32)(test)
        entry = {"checkpoint": str(ckpt_path), "model": spec.to_dict(),
                 "train_images": len(train), "test_images": len(test),
                 "fp32_top1": round(float((ref.argmax(1) == labels).mean()), 4), "runs": []}
        print(f"{spec.name}: FP32 test top-1 {entry['fp32_top1']:.4f} on {len(test)} images",
              flush=True)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(train))
        for count in counts:
            calibration = train[np.sort(order[:count])]
            variants = [(f, m) for f in int8.FLAVOURS for m in int8.METHODS]
            if args.nncf:
                variants.append(("nncf", "nncf-default"))
            for flavour, method in variants:
                path = work / f"{flavour}-{method}-{count}.onnx"
                started = time.perf_counter()
                if flavour == "nncf":
                    nncf_quantize(fp32, path, calibration)
                else:
                    int8.quantize_qdq(fp32, path, calibration, flavour=flavour, method=method)
                seconds = time.perf_counter() - started
                run = {"flavour": flavour, "method": method, "count": count,
                       "quantize_s": round(seconds, 1), **judge(ref, ort_session(path)(test),
                                                                labels)}
                entry["runs"].append(run)
                print(json.dumps(run), flush=True)
        out["models"].append(entry)
    return out


def accuracy_table(results: dict) -> str:
    parts = []
    for entry in results["models"]:
        parts.append(f"**{entry['model']['name']}** ({entry['model']['input_size']}x"
                     f"{entry['model']['input_size']}, FP32 test top-1 "
                     f"{entry['fp32_top1'] * 100:.2f}% on {entry['test_images']} test images; "
                     f"calibration from {entry['train_images']} training images)\n")
        parts.append("| flavour | method | calib. images | INT8 top-1 | agreement with FP32 | "
                     "min cosine | mean cosine | quantize time |")
        parts.append("|---|---|---|---|---|---|---|---|")
        for r in sorted(entry["runs"], key=lambda r: (r["flavour"], r["method"], r["count"])):
            parts.append(f"| {r['flavour']} | {r['method']} | {r['count']} | "
                         f"{r['top1'] * 100:.2f}% "
                         f"| {r['agreement'] * 100:.2f}% | {r['min_cos']:.4f} | "
                         f"{r['mean_cos']:.5f} | {r['quantize_s']:.1f} s |")
        parts.append("")
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed")
    speed.add_argument("--work", default="/tmp/int8-speed")
    speed.add_argument("--iterations-b1", type=int, default=40)
    speed.add_argument("--iterations-b8", type=int, default=12)
    speed.add_argument("--nncf", action="store_true")
    speed.add_argument("--runtimes", default="ort,openvino")
    speed.add_argument("--reuse", action="store_true",
                       help="keep INT8 files already in --work instead of quantizing again")
    speed.add_argument("--json", default=None)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--checkpoint", action="append", required=True)
    acc.add_argument("--counts", default="32,64,256,512")
    acc.add_argument("--work", default="/tmp/int8-accuracy")
    acc.add_argument("--nncf", action="store_true")
    acc.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.command == "speed":
        results = run_speed(args)
        table = speed_table(results)
    else:
        results = run_accuracy(args)
        table = accuracy_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
