"""The plan folder: plan.json (versioned), plan.md, plan.csv, the latency-vs-accuracy plot, the
chosen artifact with its ``deploy`` section, and the rule for when a folder is ours to replace.

A plan folder holds exactly: plan.json, plan.md, plan.csv, plan.png, ``artifacts/`` (one
artifact folder per export, failed ones as ``<name>.FAILED``) and ``chosen/`` (a normal
artifact folder). :func:`owned_plan` accepts a folder only if it is exactly that: a plan.json of
our kind, nothing else at the top, and every artifact folder provably an artifact
(:func:`export.core.artifact.owned_artifact`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..core.artifact import artifact_file, owned_artifact, read_manifest, verify_files
from ..core.errors import UserError
from ..core.fileio import atomic_path, write_json
from ..core.manifest import write_manifest
from .space import PlanCandidate

PLAN_KIND = "resnet-deploy-plan"
PLAN_SCHEMA = 1
PLAN_NAME = "plan.json"
REPORTS = ("plan.md", "plan.csv", "plan.png")
FOLDERS = ("artifacts", "chosen")
CSV_COLUMNS = ("id", "runtime", "precision", "settings", "status", "reason", "objective",
               "p50_ms", "p99_ms", "throughput_ips", "rounds", "phase", "accuracy_drop",
               "min_cosine", "gate", "artifact", "manifest_sha256")


def read_plan(folder: Path) -> dict[str, Any]:
    """plan.json of ``folder``, checked for our kind and schema; one error line otherwise."""
    path = Path(folder) / PLAN_NAME
    if not path.is_file() or path.is_symlink():
        raise UserError(f"no {PLAN_NAME} in {folder}: not a plan folder")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != PLAN_KIND:
        raise UserError(f"{path} is not a resnet-plan document")
    if doc.get("schema_version") != PLAN_SCHEMA:
        raise UserError(f"{path} has schema_version {doc.get('schema_version')!r}; this release "
                        f"reads {PLAN_SCHEMA}")
    return doc


def owned_plan(folder: Path) -> dict[str, Any]:
    """The plan of ``folder`` if the folder is provably an earlier plan of ours (module
    docstring); anything else raises :class:`UserError` with the reason."""
    doc = read_plan(folder)
    for entry in os.scandir(folder):
        if entry.is_symlink():
            raise UserError(f"{entry.name} is a symbolic link")
        if entry.name in (PLAN_NAME, *REPORTS) and entry.is_file():
            continue
        if entry.name == "chosen" and entry.is_dir():
            owned_artifact(entry.path)
        elif entry.name == "artifacts" and entry.is_dir():
            for sub in os.scandir(entry.path):
                if sub.is_symlink() or not sub.is_dir():
                    raise UserError(f"artifacts/{sub.name} is not an artifact folder")
                owned_artifact(sub.path)
        else:
            raise UserError(f"{entry.name} is not part of a plan")
    return doc


def check_plan_out(out: Path) -> None:
    """May a plan write ``out``? Nothing there, an empty folder, or an earlier plan of ours."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out} is not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            owned_plan(out)
        except UserError as exc:
            raise UserError(f"--out {out} exists and is not an earlier plan ({exc}); nothing was "
                            "changed: choose another --out or empty it") from None


def write_chosen(into: Path, folder: Path, candidate: PlanCandidate,
                 deploy: dict[str, Any]) -> Path:
    """Copy the chosen artifact to ``into`` and give its manifest the ``deploy`` section.

    manifest.json is not among its own listed files, so every file's sha256 still matches (checked
    after the copy) and the gate verdict is carried over untouched."""
    manifest = read_manifest(folder)
    into.mkdir(parents=True)
    for entry in manifest["files"]:
        shutil.copy2(artifact_file(folder, entry["path"]), into / entry["path"])
    manifest["deploy"] = deploy
    write_manifest(into, manifest)
    verify_files(into, read_manifest(into))
    return into


def _row(c: dict[str, Any]) -> dict[str, Any]:
    timing = c.get("confirm") or c.get("screen") or {}
    gate = c.get("gate") or {}
    return {"id": c["id"], "runtime": c["runtime"], "precision": c["precision"],
            "settings": json.dumps(c["settings"], sort_keys=True), "status": c["status"],
            "reason": c.get("reason") or "", "objective": timing.get("objective"),
            "p50_ms": timing.get("p50_ms"), "p99_ms": timing.get("p99_ms"),
            "throughput_ips": timing.get("throughput_ips"), "rounds": timing.get("rounds"),
            "phase": timing.get("phase"), "accuracy_drop": gate.get("accuracy_drop"),
            "min_cosine": gate.get("min_cosine"),
            "gate": "" if not gate else ("pass" if gate.get("passed") else "FAIL"),
            "artifact": c.get("artifact") or "", "manifest_sha256": c.get("manifest_sha256")}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value == "":
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _order(doc: dict[str, Any]) -> list[dict[str, Any]]:
    sign = 1 if doc["objective"] == "latency" else -1
    rank = {s: i for i, s in enumerate(("chosen", "pareto", "dominated", "baseline",
                                        "over-budget", "unmeasured", "gate-failed", "skipped"))}

    def key(c: dict[str, Any]) -> tuple[int, float]:
        obj = (c.get("confirm") or c.get("screen") or {}).get("objective")
        return rank.get(c["status"], 9), sign * obj if obj is not None else 0.0

    return sorted(doc["candidates"], key=key)


def table(doc: dict[str, Any]) -> str:
    """The candidates as a Markdown table (also what the CLI prints)."""
    unit = "p50 ms" if doc["objective"] == "latency" else "images/s"
    lines = [f"| status | candidate | {unit} | p99 ms | rounds | accuracy drop | gate / reason |",
             "|---|---|---|---|---|---|---|"]
    for c in _order(doc):
        r = _row(c)
        why = r["reason"] if c["status"] in ("skipped", "gate-failed", "over-budget") else r["gate"]
        lines.append(f"| {c['status']} | {c['id']} | {_fmt(r['objective'])} | "
                     f"{_fmt(r['p99_ms'])} | {_fmt(r['rounds'])} | {_fmt(r['accuracy_drop'], 3)}"
                     f" | {why or '-'} |")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]["cpu"]
    choice = doc["choice"]
    isa = env["isa"].get("isa") if isinstance(env["isa"], dict) else env["isa"]
    budget = doc["constraints"]["latency_budget_ms"] or "none"
    head = [
        f"# Deployment plan: {doc['model']['name']} on {doc['device']}"
        + (" (PARTIAL: interrupted)" if doc["partial"] else ""),
        "",
        (f"- machine: {env['model']}, ISA {isa}, {env['usable_cores']} usable cores, load "
         f"average {env['load_average_1_5_15']}"),
        (f"- objective: {doc['objective']} at batch {doc['batch_size']}; constraints: latency "
         f"budget {budget} ms (p99), accuracy drop <= "
         f"{doc['constraints']['max_accuracy_drop']} points"),
        f"- time box {doc['time_budget_s']:g} s, used {doc['elapsed_s']:.0f} s",
        f"- chosen: **{choice['chosen'] or 'nothing'}** - {choice['reason']}",
        "",
    ]
    if doc.get("chosen_folder"):
        head.append(f"The chosen artifact is `{doc['chosen_folder']}`: its manifest's `deploy` "
                    "section makes load_artifact, resnet-predict and resnet-bench run it this way.")
        head.append("")
    return "\n".join(head + [table(doc), ""])


def csv_text(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS)
    writer.writeheader()
    for c in _order(doc):
        writer.writerow(_row(c))
    return buf.getvalue()


#: marker and size per status: the choice starred, the front as dots, the rest as crosses
MARKERS = {"chosen": ("*", 15), "pareto": ("o", 8), "baseline": ("s", 8)}


def figure(doc: dict[str, Any]) -> Any:
    """plan.png's figure: objective against accuracy drop, every measured candidate a marker of
    its own colour
    and a legend entry, the Pareto front joined, the choice starred. The x axis is logarithmic
    where the figures span more than 3x (the eager baseline can be tens of times slower than
    the artifacts; a linear axis put 13 candidates in one pixel column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(c, timing["objective"], (c.get("gate") or {}).get("accuracy_drop") or 0.0)
              for c in doc["candidates"]
              if (timing := c.get("confirm") or c.get("screen"))
              and timing.get("objective") is not None]
    fig, ax = plt.subplots(figsize=(11, 5))
    colours = plt.get_cmap("tab20")
    front = []
    for i, (c, x, y) in enumerate(points):
        marker, size = MARKERS.get(c["status"], ("X", 7))
        ax.plot(x, y, marker, markersize=size, color=colours(i % 20), linestyle="none",
                label=f"{c['status']}: {c['id']}")
        if c["status"] in ("chosen", "pareto"):
            front.append((x, y))
    if front:
        xs, ys = zip(*sorted(front))
        ax.step(xs, ys, where="post", color="grey", linewidth=1, label="Pareto front")
    xs_all = [x for _, x, _ in points if x > 0]
    if xs_all and max(xs_all) / min(xs_all) > 3:
        ax.set_xscale("log")
    unit = "p50 latency (ms)" if doc["objective"] == "latency" else "images/s"
    ax.set_xlabel(unit + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("top-1 accuracy drop (points; 0 where not measured)")
    ax.set_title(f"{doc['model']['name']} on {doc['device']}: {doc['choice']['chosen'] or 'none'}",
                 fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def plot(doc: dict[str, Any], path: Path) -> None:
    """:func:`figure` as plan.png (the legend beside the axes, kept whole)."""
    import matplotlib.pyplot as plt

    fig = figure(doc)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)


def write_reports(folder: Path, doc: dict[str, Any]) -> None:
    """plan.md, plan.csv, plan.png, then plan.json last (a plan.json means the rest is there)."""
    with atomic_path(folder / "plan.md") as tmp:
        tmp.write_text(markdown(doc))
    with atomic_path(folder / "plan.csv") as tmp:
        tmp.write_text(csv_text(doc))
    plot(doc, folder / "plan.png")
    write_json(folder / PLAN_NAME, doc)


__all__ = ["PLAN_KIND", "PLAN_NAME", "PLAN_SCHEMA", "check_plan_out", "csv_text", "markdown",
           "figure", "owned_plan", "plot", "read_plan", "table", "write_chosen", "write_reports"]
