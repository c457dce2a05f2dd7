"""Reports of one run: the versioned JSON document, a CSV, a Markdown table and a PNG plot.

The JSON document is the source of truth; CSV, Markdown and PNG are derived from it, so
``resnet-bench report RUN.json ...`` can rebuild (or merge) them later. Every file is written to a
temporary name and renamed, so an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from export.core.fileio import atomic_path, write_json

from .model_backends import EAGER, HARNESS
from .plot import write_png
from .schema import SCHEMA, SCHEMA_VERSION, check_document, model_key, read_document
from .stats import QUOTABLE_SPREAD, quotable, ratio_spread, round_ratios

FILES = {"json": "bench.json", "csv": "bench.csv", "md": "bench.md", "png": "bench.png"}

#: CSV columns, in order (a row's lists are joined with "; ")
COLUMNS = ["backend", "label", "precision", "device", "timing", "cuda_graphs", "channels_last",
           "batch_size", "iterations", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
           "max_ms", "std_ms", "cv", "throughput_ips", "gflops", "speedup_vs_torch",
           "speedup_vs_torch_rounds", "speedup_vs_torch_rounds_iqr", "speedup_quotable",
           "speedup_vs_fp32", "speedup_vs_fp32_rounds", "speedup_vs_fp32_rounds_iqr", "wall_s",
           "warmup_iterations", "warmup_s", "warmup_steady",
           "first_infer_ms", "setup_s", "export_s", "timer", "threads", "noisy", "noise_reasons",
           "complete", "artifact", "model_label", "effective_precision", "rounds",
           "round_p50_ms", "round_spread", "rounds_disagree", "load_before", "load_after",
           "others_cores", "busy", "flags", "flag_reasons", "note"]


def new_document(environment: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": None,
            "interrupted": False, "environment": environment, "config": config,
            "results": [], "skipped": []}


def validate(doc: dict[str, Any]) -> None:
    """Raise ValueError (one line naming the key) if ``doc`` is not a resnet-bench document
    this code can read: the schema lives in :mod:`.schema` alone."""
    check_document(doc)


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-ups over eager torch FP32 NCHW without graphs, of the same model, device, batch and
    timing: ``speedup_vs_torch`` = its p50 / this row's p50; ``speedup_vs_torch_rounds`` = the
    median over rounds of the same ratio of round medians (rows timed in the same rounds only):
    each round's ratio is measured under one load, so it holds when the load changes."""
    base: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        if (row["backend"] == EAGER and row["precision"] == "fp32" and not row.get("cuda_graphs")
                and not row.get("channels_last")):
            key = (model_key(row), row["device"], row["batch_size"], row["timing"])
            base.setdefault(key, row)
    for row in rows:
        ref = base.get((model_key(row), row["device"], row["batch_size"], row["timing"]))
        ok = ref is not None and row["p50_ms"] > 0 and row["backend"] != HARNESS
        ref = ref or {}  # (only read when ok)
        row["speedup_vs_torch"] = ref["p50_ms"] / row["p50_ms"] if ok else None
        same_rounds = ok and row.get("round_group") and \
            ref.get("round_group") == row.get("round_group")
        ratios = round_ratios(ref.get("round_p50_ms") or [], row.get("round_p50_ms") or []) \
            if same_rounds else []
        row["speedup_vs_torch_rounds"] = float(np.median(ratios)) if ratios else None
        row["speedup_vs_torch_rounds_iqr"] = ratio_spread(ratios) if row is not ref else None
        row["speedup_quotable"] = quotable(row["speedup_vs_torch_rounds_iqr"])
    add_precision_speedups(rows)


def _same_runtime(row: dict[str, Any]) -> tuple[Any, ...]:
    return (model_key(row), row["backend"], row["device"], row["batch_size"], row["timing"],
            bool(row.get("channels_last")), bool(row.get("cuda_graphs")))


def add_precision_speedups(rows: list[dict[str, Any]]) -> None:
    """FP16, BF16 and INT8 rows against FP32 of the same model, runtime, batch and timing:
    ``speedup_vs_fp32`` (ratio of p50s) and ``speedup_vs_fp32_rounds`` (median per-round ratio,
    rows timed in the same rounds only): what a lower precision buys on this runtime."""
    fp32: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        if row["precision"] == "fp32" and row["backend"] != HARNESS:
            fp32.setdefault(_same_runtime(row), row)
    for row in rows:
        ref = fp32.get(_same_runtime(row)) if row["precision"] != "fp32" else None
        row["speedup_vs_fp32"] = row["speedup_vs_fp32_rounds"] = None
        row["speedup_vs_fp32_rounds_iqr"] = None
        if ref is None or row["p50_ms"] <= 0:
            continue
        row["speedup_vs_fp32"] = ref["p50_ms"] / row["p50_ms"]
        if row.get("round_group") and ref.get("round_group") == row.get("round_group"):
            ratios = round_ratios(ref.get("round_p50_ms") or [], row.get("round_p50_ms") or [])
            row["speedup_vs_fp32_rounds"] = float(np.median(ratios)) if ratios else None
            row["speedup_vs_fp32_rounds_iqr"] = ratio_spread(ratios)


# -- Markdown -------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if 0 < abs(value) < 0.1:  # the null runner's microseconds stay readable
            return f"{value:.2g}"
        return f"{value:.{digits}f}"
    return str(value)


def environment_lines(env: dict[str, Any]) -> list[str]:
    cpu = env.get("cpu", {})
    versions = env.get("versions", {})
    threads = env.get("threads", {})
    gpu = env.get("gpu")
    isa = cpu.get("isa") or {}
    features = ", ".join(k for k, v in (isa.get("features") or {}).items() if v)
    end = cpu.get("load_average_end")
    lines = [f"- CPU: {cpu.get('model')} ({cpu.get('usable_cores')} usable of "
             f"{cpu.get('logical_cores')} logical cores; load average at start "
             f"{cpu.get('load_average_1_5_15')}" + (f", at the end {end}" if end else "") + ")"]
    if isa:
        lines.append(f"- ISA: {isa.get('isa')}, native BF16: {_fmt(isa.get('native_bf16'))}"
                     + (f" ({features})" if features else ""))
    if gpu:
        lines.append(f"- GPU: {gpu.get('name')} (sm {gpu.get('compute_capability')}, "
                     f"{gpu.get('memory_gib')} GiB), driver {gpu.get('driver')}, CUDA "
                     f"{gpu.get('cuda_runtime')}, cuDNN {gpu.get('cudnn')}, TF32 allowed in "
                     f"cuDNN: {gpu.get('cudnn_allow_tf32')}")
    else:
        lines.append("- GPU: none")
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()
                                            if v is not None))
    lines.append(f"- Threads: torch intra-op {threads.get('torch_intra_op')}, onnxruntime "
                 f"intra-op {threads.get('onnxruntime_intra_op')}")
    return lines


def _flags(r: dict[str, Any]) -> str:
    """NOISY / BUSY / ROUNDS-DISAGREE with their reasons, and what else the row must say."""
    flags = r.get("flags")
    if flags is None:  # a document from before the BUSY and ROUNDS-DISAGREE flags
        flags = ["NOISY"] if r.get("noisy") else []
    reasons = r.get("flag_reasons", r.get("noise_reasons", []))
    extra = ([] if r.get("complete", True) else ["interrupted"]) + \
        (["warm-up never settled"] if r.get("warmup_steady") is False else [])
    text = " ".join(flags)
    details = "; ".join([*reasons, *extra])
    return f"{text}: {details}" if text and details else text or details


def _round_speedup(r: dict[str, Any]) -> str:
    value, iqr = r.get("speedup_vs_torch_rounds"), r.get("speedup_vs_torch_rounds_iqr")
    if not value:
        return "-"
    if iqr is not None and not quotable(iqr):  # the rounds disagree: no headline figure
        return f"not quotable ({iqr[0]:.2f}-{iqr[1]:.2f}x)"
    return f"{value:.2f}x" + (f" ({iqr[0]:.2f}-{iqr[1]:.2f})" if iqr else "")


def _speedup(r: dict[str, Any]) -> str:
    value = r.get("speedup_vs_torch_rounds") or r.get("speedup_vs_torch")
    text = f"{value:.2f}x" if value else "-"
    if r.get("speedup_vs_torch_rounds") and not quotable(r.get("speedup_vs_torch_rounds_iqr")):
        lo, hi = r["speedup_vs_torch_rounds_iqr"]
        text = f"not quotable, {lo:.2f}-{hi:.2f}x"
    return text + (f"; {_fp32_speedup(r)} fp32" if r.get("speedup_vs_fp32") else "")


def _fp32_speedup(r: dict[str, Any]) -> str:
    """A lower precision against FP32 of the same runtime, or its range where not quotable."""
    iqr = r.get("speedup_vs_fp32_rounds_iqr")
    if iqr is not None and not quotable(iqr):
        return f"not quotable {iqr[0]:.2f}-{iqr[1]:.2f}x"
    return f"{r.get('speedup_vs_fp32_rounds') or r['speedup_vs_fp32']:.2f}x"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ["backend", "precision", "runs in", "layout", "graphs", "timing", "batch", "iters",
            "rounds (max/min round p50)", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms",
            "max ms", "CV", "img/s",
            "GFLOP/s", "vs torch (p50)", "vs torch (rounds)", "vs fp32 (rounds)", "setup s",
            "first ms", "flags"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        spread = r.get("round_spread")
        rounds = (f"{r['rounds']} ({spread:.2f}x)" if spread else str(r["rounds"])) \
            if r.get("rounds") else "-"
        cells = [r.get("label") or r["backend"], r["precision"],
                 r.get("effective_precision") or "-",
                 "NHWC" if r.get("channels_last") else "NCHW",
                 "yes" if r.get("cuda_graphs") else "no", r["timing"], r["batch_size"],
                 r.get("iterations"), rounds, _fmt(r["p50_ms"]), _fmt(r.get("p90_ms")),
                 _fmt(r.get("p99_ms")), _fmt(r.get("mean_ms")),
                 _fmt(r.get("min_ms")), _fmt(r.get("max_ms")),
                 f"{r['cv']:.1%}" if r.get("cv") is not None else "-",
                 _fmt(r["throughput_ips"], 1), _fmt(r.get("gflops"), 1),
                 (f"{r['speedup_vs_torch']:.2f}x" if r.get("speedup_vs_torch") else "-"),
                 _round_speedup(r),
                 _fp32_speedup(r) if r.get("speedup_vs_fp32") else "-",
                 _fmt(r.get("setup_s")), _fmt(r.get("first_infer_ms"), 1), _flags(r)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _series(row: dict[str, Any]) -> tuple[Any, ...]:
    """What one line of the summary is: a runtime at a precision, layout, graphs and timing."""
    return (row.get("label") or row["backend"], row["precision"], bool(row.get("channels_last")),
            bool(row.get("cuda_graphs")), row["timing"])


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Every runtime x precision side by side: one line each, one column per batch size
    (latency rows: p50 ms and the speed-up over eager FP32; throughput rows: images/s)."""
    batches = sorted({r["batch_size"] for r in rows})
    series: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(_series(r), {}).setdefault(r["batch_size"], r)
    head = ["runtime", "precision", "runs in", "timing", *[f"b={b}" for b in batches], "flags"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for (label, precision, nhwc, graphs, timing), by_batch in series.items():
        first = next(iter(by_batch.values()))
        name = label + (" NHWC" if nhwc and "channels_last" not in label else "") + \
            (" graphs" if graphs and "graphs" not in label else "")
        cells = [name, precision, first.get("effective_precision") or "-", timing]
        for b in batches:
            at = by_batch.get(b)
            if at is None:
                cells.append("-")
            elif timing == "throughput":
                cells.append(f"{_fmt(at['throughput_ips'], 1)} img/s")
            else:
                cells.append(f"{_fmt(at['p50_ms'])} ms ({_speedup(at)})")
        flags = sorted({f for r in by_batch.values()
                        for f in (r.get("flags") or (["NOISY"] if r.get("noisy") else []))})
        cells.append(" ".join(flags) or "-")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _method_lines(cfg: dict[str, Any]) -> list[str]:
    if "timing" not in cfg:
        return []
    t = cfg["timing"]
    rule = cfg["noise_rule"]
    steady = (f" and until steady (median of the last {t['steady_window']} within "
              f"{t['steady_tol']:.0%} of the {t['steady_window']} before, at most "
              f"{t['warmup_max_time']:g} s)") if t.get("steady_warmup") else ""
    rounds = t.get("rounds", 1)
    untimed = (f"after {t.get('round_warmup', 0)} untimed iteration(s) for rows faster than "
               f"{t['round_warmup_max']:g} s, " if t.get("round_warmup") and
               "round_warmup_max" in t else "")
    timed = (f"then {rounds} interleaved rounds at each batch size (each round times every "
             f"row once, {untimed}in a rotating order), >= {t['min_iters']} iterations and "
             f">= {t['min_time']} s per row in all"
             if rounds > 1 else f"then >= {t['min_iters']} iterations and >= {t['min_time']} s")
    lines = [f"- Method: warm-up >= {t['warmup_iters']} iterations and >= {t['warmup_time']} s"
             f"{steady}, {timed}"]
    flags = (f"- Flags: NOISY when CV > {rule['cv_max']:.0%} or p99/p50 > {rule['tail_max']}")
    if "rounds_max" in rule:
        flags += (f"; ROUNDS-DISAGREE when the largest round median is > {rule['rounds_max']}x "
                  f"the smallest; BUSY when the 1-minute load average exceeded the usable cores "
                  f"or other processes took > {rule['busy_others']:.0%} of them")
    lines.append(flags)
    if rounds > 1:
        lines.append("- vs torch: eager torch FP32 of the same model, batch and timing over this "
                     "row; \"rounds\" is the median of the per-round ratios (the one to quote; "
                     "in brackets their interquartile range), \"p50\" the ratio of the pooled "
                     "medians")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    rows = doc["results"]
    models: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        models.setdefault(model_key(r), []).append(r)
    if len(models) > 1:
        title = f"{len(models)} models"
    elif isinstance(cfg.get("model"), dict):
        title = f"{cfg['model'].get('name')} at {cfg.get('input_size')}x{cfg.get('input_size')}"
    else:
        title = next(iter(models), None) or "merged runs"
    parts = [f"# resnet-bench: {title}", ""]
    if doc.get("interrupted"):
        parts += ["**Interrupted (Ctrl-C): only what was measured before is shown.**", ""]
    parts += environment_lines(doc["environment"])
    if cfg.get("threads_note"):
        parts.append(f"- Threads chosen: {cfg['threads_note']}")
    parts += _method_lines(cfg)
    if not rows:
        parts += ["", "(no results)"]
    for name, group in models.items():
        if len(models) > 1:
            parts += ["", f"## {name}"]
        parts += ["", summary_table(group), "", markdown_table(group)]
        notes = list(dict.fromkeys(r["note"] for r in group if r.get("note")))
        for note in notes:
            which = sorted({_series(r)[0] for r in group if r.get("note") == note})
            parts.append(("\n" if note == notes[0] else "") + f"- {', '.join(which)}: {note}")
    flagged = {f for r in rows for f in (r.get("flags") or [])} & {"BUSY", "ROUNDS-DISAGREE"}
    if flagged:
        parts += ["", f"**{' and '.join(sorted(flagged))} rows:** the machine's speed changed "
                      "while they were measured. Quote the per-round speed-ups (\"vs torch "
                      "(rounds)\"), not absolute latencies; where their interquartile range is "
                      "wide, more rounds narrow it (e.g. `--rounds 40 --min-iters 40`), and a "
                      "quiet machine gives the absolute figures."]
    loose = [r for r in rows if r.get("speedup_vs_torch_rounds")
             and not quotable(r.get("speedup_vs_torch_rounds_iqr"))]
    if loose:
        parts += ["", (f"**Not quotable ({len(loose)} of {len(rows)} rows):** their per-round "
                       f"speed-ups spread more than {QUOTABLE_SPREAD:g}x between the quartiles, "
                       "so no single figure stands for them; the range is shown instead. More "
                       "rounds or a quieter machine narrow it.")]
    collapsed = [r for r in rows if "THREADS-COLLAPSE" in (r.get("flags") or [])]
    if collapsed:
        parts += ["", ("**THREADS-COLLAPSE rows:** eager torch's per-image time grew with the "
                       "batch: its OpenMP threads outnumber the cores the machine can give and "
                       "spin against the other load. Its figures (and every ratio against it) "
                       "describe the contention, not the model; rerun with `--threads 1`.")]
    if doc["skipped"]:
        parts += ["", "Skipped:", ""]
        for s in doc["skipped"]:
            what = " ".join(str(v) for v in (s["backend"], s.get("precision"),
                                             s.get("batch_size") and f"batch {s['batch_size']}")
                            if v)
            parts.append(f"- {what}: {s['reason']}")
    return "\n".join(parts) + "\n"


# -- CSV, PNG, files ---------------------------------------------------------------------------


def csv_text(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("; ".join(map(str, v)) if isinstance(v, list) else v)
                         for k, v in row.items()})
    return buf.getvalue()


def write_all(doc: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """JSON, CSV, Markdown and PNG into ``out_dir``; returns the paths."""
    add_speedups(doc["results"])
    validate(doc)
    out_dir = Path(out_dir)
    paths = {kind: out_dir / name for kind, name in FILES.items()}
    write_json(paths["json"], doc)
    with atomic_path(paths["csv"]) as tmp:
        tmp.write_text(csv_text(doc["results"]))
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(markdown(doc))
    write_png(doc, paths["png"])
    return paths


def load(path: Path) -> dict[str, Any]:
    """Read one bench.json, checked against the schema before anything reads it."""
    return read_document(Path(path))


def merge(docs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One document from several runs (same schema): rows and skips concatenated in order.

    Rows describe themselves (backend, precision, layout, graphs, timing), so the merged table
    stays unambiguous; each run's own config is kept under ``config["runs"]``.
    """
    out = new_document(docs[0]["environment"],
                       {"merged_from": names, "runs": [d["config"] for d in docs]})
    out["created"] = max((d.get("created") or "") for d in docs) or None
    out["interrupted"] = any(d["interrupted"] for d in docs)
    for d in docs:
        out["results"] += d["results"]
        out["skipped"] += d["skipped"]
    return out
