"""Check a plan's clock against the runtimes' own clocks on the same files.

    python scripts/check_plan_clock.py artifacts/plan/resnet50-cpu [--seconds 2] [--rounds 3]

For every candidate the plan timed (its confirmation figure, else its screening one), the same
file is timed again by the runtime's own tool, with the candidate's settings and at the plan's
batch size: a bare ``onnxruntime.InferenceSession`` loop (same intra-op threads, graph
optimisation level, one inter-op thread), OpenVINO's ``benchmark_app`` (``-api sync``, the
candidate's hint, threads and inference precision; a bare ``ov.Core`` compiled-model loop where
the openvino wheel ships no benchmark_app), and for the eager baseline a bare torch loop on the
free cores. The outside clocks run interleaved in ``--rounds`` rounds, each tool in a process of
its own (no thread pool of one runtime spins beside another's), so load that comes and goes hits
them alike; the ratios to the fastest gated candidate are what to read on a shared machine.

Beside the outside clocks, each round also times the same candidates with the plan's own
harness (``export.plan.measure.run_phase``, the eager baseline included, one interleaved round),
so the harness's ratios and the outside ratios are measured side by side under the same load.

The rule checked (exit 1 when broken): the plan's choice is within 10% of the fastest gated
candidate as the outside clocks time it.
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
import textwrap
from pathlib import Path
from typing import Any

#: the promise: the choice within this factor of the fastest gated candidate, outside clocks
TOLERANCE = 1.10
OV_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f32"}

ORT_LOOP = textwrap.dedent("""
    import sys, time, numpy as np, onnxruntime as ort
    path, threads, level, batch, seconds = sys.argv[1:6]
    o = ort.SessionOptions()
    o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    o.intra_op_num_threads, o.inter_op_num_threads = int(threads), 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((int(batch), *i.shape[1:])).astype(np.float32)
    for _ in range(3):
        s.run(None, {i.name: x})
    t, end = [], time.perf_counter() + float(seconds)
    while time.perf_counter() < end or len(t) < 5:
        t0 = time.perf_counter(); s.run(None, {i.name: x}); t.append(time.perf_counter() - t0)
    print(np.median(t) * 1e3)
""")
OV_LOOP = textwrap.dedent("""
    import sys, time, numpy as np, openvino as ov
    path, threads, hint, precision, batch, seconds = sys.argv[1:7]
    core = ov.Core()
    m = core.read_model(path)
    m.reshape([int(batch), *list(m.input(0).get_partial_shape())[1:]])
    c = core.compile_model(m, "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS":
                                      int(threads), "INFERENCE_PRECISION_HINT": precision})
    r = c.create_infer_request()
    x = np.random.default_rng(0).standard_normal(tuple(m.input(0).get_shape())).astype(np.float32)
    for _ in range(3):
        r.infer({0: x})
    t, end = [], time.perf_counter() + float(seconds)
    while time.perf_counter() < end or len(t) < 5:
        t0 = time.perf_counter(); r.infer({0: x}); t.append(time.perf_counter() - t0)
    print(np.median(t) * 1e3)
""")
TORCH_LOOP = textwrap.dedent("""
    import sys, time, torch
    from export.core.artifact import read_manifest
    from export.core.weights import source_from_manifest
    folder, threads, batch, seconds = sys.argv[1:5]
    torch.set_num_threads(int(threads))
    model = source_from_manifest(read_manifest(folder), folder).model.eval()
    spec = read_manifest(folder)["model"]
    x = torch.randn(int(batch), spec["in_chans"], spec["input_size"], spec["input_size"])
    with torch.inference_mode():
        t0 = time.perf_counter()  # warm up until steady (as resnet-bench), at most 30 s
        w = []
        while time.perf_counter() - t0 < 30 and (len(w) < 6 or abs(
                sorted(w[-3:])[1] - sorted(w[-6:-3])[1]) > 0.15 * sorted(w[-3:])[1]):
            a = time.perf_counter(); model(x); w.append(time.perf_counter() - a)
        t, end = [], time.perf_counter() + float(seconds)
        while time.perf_counter() < end or len(t) < 5:
            a = time.perf_counter(); model(x); t.append(time.perf_counter() - a)
    print(sorted(t)[len(t) // 2] * 1e3)
""")


def _python(code: str, *args: Any) -> float:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                         text=True, env=env, timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _benchmark_app(path: Path, settings: dict[str, Any], precision: str, batch: int,
                   seconds: float) -> float:
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    shape = _input_shape(path, batch)
    # benchmark_app takes -nthreads only with -hint none: the candidate's settings go in a
    # config file instead, so its hint, threads and precision are exactly the plan's
    config = {"CPU": {"PERFORMANCE_HINT": str(settings.get("performance_hint", "LATENCY")),
                      "INFERENCE_NUM_THREADS": str(settings.get("threads", os.cpu_count())),
                      "INFERENCE_PRECISION_HINT": OV_PRECISION[precision]}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    cmd = [tool, "-m", str(path), "-d", "CPU", "-api", "sync", "-t", str(max(1, round(seconds))),
           "-load_config", f.name, "-shape", shape]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    finally:
        os.unlink(f.name)
    found = re.search(r"Median:\s+([0-9.]+)\s*ms", out)
    if found is None:
        raise RuntimeError(f"benchmark_app printed no median latency: {out[-300:]}")
    return float(found.group(1))


def _input_shape(path: Path, batch: int) -> str:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
    return "[" + ",".join([str(batch)] + [str(d.dim_value) for d in list(dims.dim)[1:]]) + "]"


def _free_threads() -> int:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH
    from bench.load import free_threads

    return free_threads()[0]


def outside(plan: Path, c: dict[str, Any], batch: int, seconds: float, threads: int) -> float:
    """The candidate's p50 ms by its runtime's own tool (a process of its own)."""
    if c["runtime"] == "torch":
        folder = next(x for x in json.loads((plan / "plan.json").read_text())["candidates"]
                      if x.get("format") == "onnx" and x.get("artifact"))["artifact"]
        return _python(TORCH_LOOP, plan / folder, threads, batch, seconds)
    folder = plan / c["artifact"]
    path = folder / json.loads((folder / "manifest.json").read_text())["artifact"]
    settings = c["settings"]
    if c["runtime"] == "onnxruntime":
        level = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
                 "basic": "ORT_ENABLE_BASIC"}[settings.get("optimization_level", "all")]
        return _python(ORT_LOOP, path, settings.get("threads", threads), level, batch, seconds)
    try:
        return _benchmark_app(path, settings, c["precision"], batch, seconds)
    except (OSError, RuntimeError):
        return _python(OV_LOOP, path, settings.get("threads", threads),
                       settings.get("performance_hint", "LATENCY"),
                       OV_PRECISION[c["precision"]], batch, seconds)


def harness(plan: Path, pick: list[dict[str, Any]], doc: dict[str, Any],
            seconds: float) -> dict[str, float]:
    """One interleaved round of the plan's own harness (``run_phase``, the baseline beside the
    candidates as a plan times it) over the same candidates: p50 ms by id."""
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH
    from export.core.hardware import usable_cores
    from export.core.models import ModelSpec
    from export.plan.measure import Phase, baseline, run_phase
    from export.plan.space import PlanCandidate

    spec = ModelSpec.from_dict(doc["model"])
    cands = [PlanCandidate(c["runtime"], c["precision"], dict(c["settings"]),
                           str(plan / c["artifact"]), c["format"])
             for c in pick if c["status"] != "baseline"]
    fp32 = next(x for x in doc["candidates"] if x.get("format") == "onnx" and x.get("artifact"))
    extra = [baseline(plan / fp32["artifact"], spec)] if any(
        c["status"] == "baseline" for c in pick) else []
    run_phase(cands, extra, spec, doc["batch_size"], Phase("confirm", 1, seconds), "latency",
              usable_cores(), lambda _line: None)
    ids = [c["id"] for c in pick if c["status"] != "baseline"]
    found = {i: c.confirm["objective"] for i, c in zip(ids, cands) if c.confirm}
    for base, _cand in extra:
        if base.confirm:
            found[next(c["id"] for c in pick if c["status"] == "baseline")] = \
                base.confirm["objective"]
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan", type=Path)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per tool run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--top", type=int, default=6,
                    help="the plan's fastest N candidates (the choice and baseline always)")
    args = ap.parse_args(argv)
    doc = json.loads((args.plan / "plan.json").read_text())
    if doc["objective"] != "latency":
        print("only latency plans are checked (p50 at the plan's batch size)", file=sys.stderr)
        return 2
    timed = [c for c in doc["candidates"] if (c.get("confirm") or c.get("screen"))]
    gated = sorted((c for c in timed if c["status"] != "baseline"),
                   key=lambda c: (c.get("confirm") or c["screen"])["objective"])
    pick = gated[:args.top] + [c for c in timed if c["status"] in ("chosen", "baseline")
                               and c not in gated[:args.top]]
    threads = _free_threads()
    print(f"load average {os.getloadavg()}, torch threads {threads} (free cores)")
    rounds: dict[str, list[float]] = {c["id"]: [] for c in pick}
    ours: dict[str, list[float]] = {c["id"]: [] for c in pick}
    for r in range(args.rounds):
        for cid, ms in harness(args.plan, pick, doc, args.seconds).items():
            ours[cid].append(ms)
        for k in range(len(pick)):
            c = pick[(r + k) % len(pick)]
            rounds[c["id"]].append(outside(args.plan, c, doc["batch_size"], args.seconds,
                                           threads))
    median = {cid: statistics.median(v) for cid, v in rounds.items()}
    fastest = min((c for c in pick if c["status"] != "baseline"), key=lambda c: median[c["id"]])
    print(f"{'':6s} {'candidate':63s} {'plan.json':>9s} {'harness':>9s} {'/fastest':>8s} "
          f"{'outside':>9s} {'/fastest':>8s}")
    for c in pick:
        plan_ms = (c.get("confirm") or c["screen"])["objective"]
        ratio = statistics.median(a / b for a, b in zip(rounds[c["id"]], rounds[fastest["id"]]))
        mine = ours[c["id"]]
        ours_ratio = statistics.median(a / b for a, b in zip(mine, ours[fastest["id"]])) \
            if mine and ours[fastest["id"]] else float("nan")
        print(f"{c['status'][:6]:6s} {c['id'][:63]:63s} {plan_ms:9.3f} "
              f"{statistics.median(mine) if mine else float('nan'):9.3f} {ours_ratio:8.3f} "
              f"{median[c['id']]:9.3f} {ratio:8.3f}")
    chosen = next((c for c in pick if c["status"] == "chosen"), None)
    if chosen is None:
        print("the plan chose nothing")
        return 1
    ratio = statistics.median(a / b for a, b in zip(rounds[chosen["id"]], rounds[fastest["id"]]))
    verdict = ratio <= TOLERANCE
    print(f"{'PASS' if verdict else 'FAIL'}: the choice is {ratio:.3f}x the fastest gated "
          f"candidate by the outside clocks ({fastest['id']}); the promise is "
          f"<= {TOLERANCE:.2f}x; load average now {os.getloadavg()}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
