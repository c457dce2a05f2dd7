"""The run's plot: latency (log scale) and throughput per batch size, one colour per series and
one pair of panels per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.core.fileio import atomic_path

from .model_backends import HARNESS
from .schema import model_key


def _series_key(row: dict[str, Any]) -> str:
    return f"{row.get('label') or row['backend']} [{row['timing']}]"


def _plot_model(ax_lat: Any, ax_tput: Any, rows_plotted: list[dict[str, Any]], title: str) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    series: dict[str, list[dict[str, Any]]] = {}
    for row in rows_plotted:
        series.setdefault(_series_key(row), []).append(row)
    import matplotlib.pyplot as plt

    palette = plt.rcParams["axes.prop_cycle"].by_key().get("color") or ["C0"]
    for k, (name, rows) in enumerate(series.items()):
        color = palette[k % len(palette)]  # one colour per series in both panels
        rows = sorted(rows, key=lambda r: r["batch_size"])
        xs = [r["batch_size"] for r in rows]
        if rows[0]["timing"] != "throughput":  # a throughput row's latency is under load
            p50 = [r["p50_ms"] for r in rows]
            low = [r["p50_ms"] - r.get("min_ms", r["p50_ms"]) for r in rows]
            high = [r.get("p99_ms", r["p50_ms"]) - r["p50_ms"] for r in rows]
            ax_lat.errorbar(xs, p50, yerr=[low, high], marker="o", capsize=3, label=name,
                            color=color)
        ax_tput.plot(xs, [r["throughput_ips"] for r in rows], marker="o", label=name,
                     color=color, linestyle="--" if rows[0]["timing"] == "throughput" else "-")
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
        ax.set_title(title, fontsize=9)
    if series:
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        latency_rows = [r for r in rows_plotted if r["timing"] != "throughput"]
        for ax, key, subset in ((ax_lat, "p50_ms", latency_rows),
                                (ax_tput, "throughput_ips", rows_plotted)):
            values = [r[key] for r in subset if r[key] > 0]
            # latency always (runtimes and batches differ by orders of magnitude); throughput
            # only when the range needs it
            if values and (ax is ax_lat or max(values) / min(values) > 20):
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(plain)
                ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
                ax.yaxis.set_minor_formatter(plain)
            else:
                ax.set_ylim(bottom=0)
        ax_tput.legend(fontsize=7, loc="best")


def write_png(doc: dict[str, Any], path: Path) -> None:
    """Per model (one row of panels each): p50 latency (bars: min..p99 whiskers) and throughput
    against batch size; throughput-mode rows are dashed, in the throughput panel only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models: dict[str, list[dict[str, Any]]] = {}
    for row in doc["results"]:
        if row["backend"] != HARNESS:  # the harness, not a model
            models.setdefault(model_key(row), []).append(row)
    if not models:
        models = {"": []}
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.8 * len(models)), squeeze=False)
    for (name, rows), (ax_lat, ax_tput) in zip(models.items(), axes):
        _plot_model(ax_lat, ax_tput, rows, name if len(models) > 1 else "")
    cfg = doc["config"]
    if len(models) > 1:
        model = f"{len(models)} models"
    elif isinstance(cfg.get("model"), dict):
        size = cfg.get("input_size")
        model = f"{cfg['model'].get('name')} {size}x{size}"
    else:
        model = next(iter(models)) or "merged runs"
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
