"""Reports of one run: the versioned JSON document, a CSV, a Markdown table and a PNG plot.

The JSON document is the source of truth; CSV, Markdown and PNG are derived from it, so
``resnet-bench report RUN.json ...`` can rebuild (or merge) them later. Every file is written to a
temporary name and renamed, so an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable

from export.core.fileio import atomic_path, write_json

SCHEMA = "resnet-bench"
SCHEMA_VERSION = 1
FILES = {"json": "bench.json", "csv": "bench.csv", "md": "bench.md", "png": "bench.png"}

#: required result keys and their JSON types (the rest of a row is documented in docs/benchmarks.md)
REQUIRED_ROW = {"backend": str, "precision": str, "batch_size": int, "device": str,
                "timing": str, "p50_ms": float, "throughput_ips": float}
REQUIRED_TOP = {"schema": str, "schema_version": int, "environment": dict, "config": dict,
                "results": list, "skipped": list, "interrupted": bool}

#: CSV columns, in order (a row's lists are joined with "; ")
COLUMNS = ["backend", "label", "precision", "device", "timing", "cuda_graphs", "channels_last",
           "batch_size", "iterations", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
           "max_ms", "std_ms", "cv", "throughput_ips", "gflops", "speedup_vs_torch", "wall_s",
           "warmup_iterations", "warmup_s", "warmup_steady", "first_infer_ms", "setup_s",
           "export_s", "timer", "threads", "noisy", "noise_reasons", "complete", "artifact"]


def new_document(environment: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": None,
            "interrupted": False, "environment": environment, "config": config,
            "results": [], "skipped": []}


def validate(doc: dict[str, Any]) -> None:
    """Raise ValueError if ``doc`` is not a resnet-bench document this code can read."""
    for key, kind in REQUIRED_TOP.items():
        if not isinstance(doc.get(key), kind):
            raise ValueError(f"bench document: {key!r} missing or not {kind.__name__}")
    if doc["schema"] != SCHEMA or doc["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"not a {SCHEMA} v{SCHEMA_VERSION} document "
                         f"({doc['schema']!r} v{doc['schema_version']!r})")
    for i, row in enumerate(doc["results"]):
        for key, kind in REQUIRED_ROW.items():
            value = row.get(key)
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if not ok or isinstance(value, bool):
                raise ValueError(f"bench document: results[{i}].{key} missing or not "
                                 f"{kind.__name__}")


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_torch``: eager torch FP32 p50 (same device, batch, timing) over this row's."""
    base = {}
    for row in rows:
        if (row["backend"] == "torch" and row["precision"] == "fp32" and not row.get("cuda_graphs")
                and not row.get("channels_last")):
            base.setdefault((row["device"], row["batch_size"], row["timing"]), row["p50_ms"])
    for row in rows:
        ref = base.get((row["device"], row["batch_size"], row["timing"]))
        ok = ref and row["p50_ms"] > 0 and row["backend"] != "null"
        row["speedup_vs_torch"] = ref / row["p50_ms"] if ok else None


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
    lines = [f"- CPU: {cpu.get('model')} ({cpu.get('usable_cores')} usable of "
             f"{cpu.get('logical_cores')} logical cores; load average at start "
             f"{cpu.get('load_average_1_5_15')})"]
    if gpu:
        lines.append(f"- GPU: {gpu.get('name')} (sm {gpu.get('compute_capability')}, "
                     f"{gpu.get('memory_gib')} GiB), driver {gpu.get('driver')}, CUDA "
                     f"{gpu.get('cuda_runtime')}, cuDNN {gpu.get('cudnn')}, TF32 allowed in "
                     f"cuDNN: {gpu.get('cudnn_allow_tf32')}")
    else:
        lines.append("- GPU: none")
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append(f"- Threads: torch intra-op {threads.get('torch_intra_op')}, onnxruntime "
                 f"intra-op {threads.get('onnxruntime_intra_op')}")
    return lines


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ["backend", "precision", "layout", "graphs", "timing", "batch", "iters", "p50 ms",
            "p90 ms", "p95 ms", "p99 ms", "mean ms", "min ms", "max ms", "CV", "img/s",
            "GFLOP/s", "vs torch", "setup s", "first ms", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        note = "; ".join([*r.get("noise_reasons", [])]
                         + ([] if r.get("complete", True) else ["interrupted"])
                         + (["warm-up never settled"] if r.get("warmup_steady") is False else []))
        cells = [r.get("label") or r["backend"], r["precision"],
                 "NHWC" if r.get("channels_last") else "NCHW",
                 "yes" if r.get("cuda_graphs") else "no", r["timing"], r["batch_size"],
                 r.get("iterations"), _fmt(r["p50_ms"]), _fmt(r.get("p90_ms")),
                 _fmt(r.get("p95_ms")), _fmt(r.get("p99_ms")), _fmt(r.get("mean_ms")),
                 _fmt(r.get("min_ms")), _fmt(r.get("max_ms")),
                 f"{r['cv']:.1%}" if r.get("cv") is not None else "-",
                 _fmt(r["throughput_ips"], 1), _fmt(r.get("gflops"), 1),
                 (f"{r['speedup_vs_torch']:.2f}x" if r.get("speedup_vs_torch") else "-"),
                 _fmt(r.get("setup_s")), _fmt(r.get("first_infer_ms"), 1),
                 ("NOISY: " + note) if r.get("noisy") else note]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    title = cfg.get("model", {}).get("name") if isinstance(cfg.get("model"), dict) else None
    parts = [f"# resnet-bench: {title or 'merged runs'}"
             + (f" at {cfg.get('input_size')}x{cfg.get('input_size')}" if title else ""), ""]
    if doc.get("interrupted"):
        parts += ["**Interrupted (Ctrl-C): only what was measured before is shown.**", ""]
    parts += environment_lines(doc["environment"])
    if "timing" in cfg:
        t = cfg["timing"]
        steady = (f" and until steady (median of the last {t['steady_window']} within "
                  f"{t['steady_tol']:.0%} of the {t['steady_window']} before, at most "
                  f"{t['warmup_max_time']:g} s)") if t.get("steady_warmup") else ""
        parts.append(f"- Method: warm-up >= {t['warmup_iters']} iterations and "
                     f">= {t['warmup_time']} s{steady}, then >= {t['min_iters']} iterations and "
                     f">= {t['min_time']} s; noisy when CV > {cfg['noise_rule']['cv_max']:.0%} "
                     f"or p99/p50 > {cfg['noise_rule']['tail_max']}")
    parts += ["", markdown_table(doc["results"]) if doc["results"] else "(no results)"]
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


def _series_key(row: dict[str, Any]) -> str:
    return f"{row.get('label') or row['backend']} [{row['timing']}]"


def write_png(doc: dict[str, Any], path: Path) -> None:
    """p50 latency (bars: p90..p99 whiskers from min) and throughput against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    series: dict[str, list[dict[str, Any]]] = {}
    rows_plotted = [r for r in doc["results"] if r["backend"] != "null"]  # harness, not a model
    for row in rows_plotted:
        series.setdefault(_series_key(row), []).append(row)
    fig, (ax_lat, ax_tput) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, rows in series.items():
        rows = sorted(rows, key=lambda r: r["batch_size"])
        xs = [r["batch_size"] for r in rows]
        p50 = [r["p50_ms"] for r in rows]
        low = [r["p50_ms"] - r.get("min_ms", r["p50_ms"]) for r in rows]
        high = [r.get("p99_ms", r["p50_ms"]) - r["p50_ms"] for r in rows]
        ax_lat.errorbar(xs, p50, yerr=[low, high], marker="o", capsize=3, label=name)
        ax_tput.plot(xs, [r["throughput_ips"] for r in rows], marker="o", label=name)
    batches = sorted({r["batch_size"] for r in rows_plotted})
    for ax, ylabel in ((ax_lat, "latency p50 ms (whiskers: min..p99)"),
                       (ax_tput, "throughput, images/s")):
        if len(batches) > 1 and batches[-1] / max(batches[0], 1) >= 8:
            ax.set_xscale("log", base=2)
        if batches:
            ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if series:
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        for ax, key in ((ax_lat, "p50_ms"), (ax_tput, "throughput_ips")):
            values = [r[key] for r in rows_plotted if r[key] > 0]
            if values and max(values) / min(values) > 20:  # log only when the range needs it
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(plain)
                ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
                ax.yaxis.set_minor_formatter(plain)
            else:
                ax.set_ylim(bottom=0)
        ax_tput.legend(fontsize=7, loc="best")
    cfg = doc["config"]
    if isinstance(cfg.get("model"), dict):
        size = cfg.get("input_size")
        model = f"{cfg['model'].get('name')} {size}x{size}"
    else:
        model = "merged runs"
    gpu = (doc["environment"].get("gpu") or {}).get("name")
    cpu = doc["environment"].get("cpu", {})
    threads = doc["environment"].get("threads", {}).get("torch_intra_op")
    where = gpu or f"{cpu.get('model')}, {cpu.get('usable_cores')} cores, {threads} threads"
    fig.suptitle(f"resnet-bench: {model} on {where}" + (" (interrupted)" if doc["interrupted"]
                                                         else ""))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


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
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    validate(doc)
    return doc


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
