"""Measure resnet-gate against issue 26's targets on the digits model, one gate run at a time.

    python scripts/gate_targets.py WORKDIR --release-checkpoint R.pt --deeper D.pt

In WORKDIR: a 1,000-image labelled folder (1,000 of the 1,797 digits, their own labels), the
release artifact exported from R.pt, and a candidate exactly 2 points less accurate there
(R.pt with one class's bias raised: tests/gate_data.py). Then, each a full ``resnet-gate`` run
with JUnit and JSON: the same checkpoint as the release 3 times, 3 times more beside a busy
neighbour (``timeout 120 python -c "while True: pass"``), the 2-points-worse candidate and the
deeper family member D.pt (e.g. resnet56 trained on the same digits); with ``--only
resnet50``, the same checkpoint of a ResNet-50 (seeded weights) against its release. Prints
one line per run: exit code, wall time, each check's status and the figures that decided it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
GATE = [sys.executable, "-c", "from export.release.cli import main; main()"]


def prepare(work: Path, release_ckpt: Path) -> tuple[Path, Path, Path]:
    from export.pipeline import ExportRequest, export_artifact

    from gate_data import worse_checkpoint, write_digits_folder

    data = work / "digits1000"
    if not data.is_dir():
        write_digits_folder(data, 1000)
    release = work / "release" / "resnet20-digits-onnx"
    if not release.is_dir():
        export_artifact(ExportRequest(checkpoint=release_ckpt, out=release),
                        echo=lambda _: None, warn=lambda _: None)
    worse = work / "worse.pt"
    if not worse.is_file():
        worse_checkpoint(release_ckpt, worse, data, lost=20)
    return data, release, worse


def resnet50(work: Path) -> tuple[Path, Path]:
    """A ResNet-50 checkpoint (seeded weights, the digits' 10 classes, RGB 224 px: the
    grayscale PNGs are replicated to RGB as prediction does) and its release artifact."""
    from export.core.checkpoint import save_checkpoint
    from export.core.models import ModelSpec
    from export.pipeline import ExportRequest, export_artifact

    ckpt = work / "resnet50.pt"
    if not ckpt.is_file():
        spec = ModelSpec.create("resnet50", num_classes=10, in_chans=3)
        save_checkpoint(ckpt, spec.build().eval(), spec, [str(i) for i in range(10)])
    release = work / "release" / "resnet50-onnx"
    if not release.is_dir():
        export_artifact(ExportRequest(checkpoint=ckpt, out=release), echo=lambda _: None,
                        warn=lambda _: None)
    return ckpt, release


def gate(work: Path, name: str, candidate: Path, release: Path, data: Path,
         extra: list[str]) -> dict:
    out = work / "runs" / name
    started = time.perf_counter()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run([*GATE, str(candidate), "--baseline", str(release), "--data", str(data),
                          "--out-dir", str(work / "candidates" / name), "--junit",
                          str(out / "gate.xml"), "--json", str(out / "gate.json"),
                          "--plot", str(out / "speed.png"), *extra],
                         cwd=work, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    doc = json.loads((out / "gate.json").read_text()) if (out / "gate.json").exists() else {}
    checks = "; ".join(f"{c['name']}: {c['status']}" + _figures(c) for c in doc.get("checks", []))
    load = os.getloadavg()[0]
    print(f"{name}: exit {run.returncode}, {wall:.0f} s wall, {cpu:.0f} s CPU, load {load:.1f} | "
          f"{checks}", flush=True)
    if run.returncode not in (0, 1):
        print(run.stderr[-2000:])
    return {"name": name, "exit": run.returncode, "wall_s": wall, "cpu_s": cpu, "load": load,
            "checks": doc.get("checks")}


def _figures(check: dict) -> str:
    p = check["properties"]
    if check["group"] == "speed" and p.get("ratio_median") is not None:
        return (f" (x{p['ratio_median']:.2f}, IQR {p['ratio_q25']:.2f}-{p['ratio_q75']:.2f}, "
                f"{p['rounds']} rounds)")
    if check["group"] == "accuracy" and "drop_points" in p:
        return (f" ({p['candidate_top1_percent']:.1f}% vs {p['release_top1_percent']:.1f}%, "
                f"{p['images_lost']} lost / {p['images_gained']} gained, p={p['mcnemar_p']:.2g})")
    return ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--release-checkpoint", type=Path, required=True)
    parser.add_argument("--deeper", type=Path, required=True)
    parser.add_argument("--only", default="same,busy,worse,deeper",
                        help="comma-separated: same, busy, worse, deeper, resnet50")
    args = parser.parse_args()
    work = args.work.resolve()
    data, release, worse = prepare(work, args.release_checkpoint.resolve())
    wanted = args.only.split(",")
    results = []
    if "same" in wanted:
        results += [gate(work, f"same-{i}", args.release_checkpoint.resolve(), release, data, [])
                    for i in range(1, 4)]
    if "busy" in wanted:
        for i in range(1, 4):
            neighbour = subprocess.Popen(["timeout", "120", sys.executable, "-c",
                                          "while True: pass"])
            try:
                results.append(gate(work, f"busy-{i}", args.release_checkpoint.resolve(),
                                    release, data, []))
            finally:
                neighbour.terminate()
                neighbour.wait()
    if "worse" in wanted:
        results.append(gate(work, "worse", worse, release, data, []))
    if "resnet50" in wanted:
        r50, r50_release = resnet50(work)
        results.append(gate(work, "resnet50-same", r50, r50_release, data, []))
    if "deeper" in wanted:
        results.append(gate(work, "deeper", args.deeper.resolve(), release, data,
                            ["--max-slowdown", "30"]))
    (work / "runs" / "summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
