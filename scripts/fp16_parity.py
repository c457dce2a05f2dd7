"""FP16 parity of ResNets: the converter of this tree against one from another git revision.

Each depth is built with fresh seeded weights (as ``resnet-export`` without ``--checkpoint``),
exported ONCE to FP32 ONNX, converted by both converters and judged by the parity gate's own
code (``export.gate.inputs.parity_inputs`` and ``export.gate.parity.run_gate``: the same real
and random
inputs at each batch size of the range, the same metrics) on ONNX Runtime CPU, which computes an
FP16 graph in FP32 (it casts around its FP32 kernels), so the figures measure the FP16 rounding
of weights and of the tensors between nodes, not FP16 arithmetic.

    PYTHONPATH=. python3 scripts/fp16_parity.py --depths 18,34,50 [--input-size 224] \
        [--batch-range 1:8:32] [--baseline <git revision>] [--json out.json]

``--baseline`` loads the converter module as it was at that revision (71ee936 is the last one
with the hand-written converter, before the switch to onnxruntime's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from export.convert import fp16
from export.convert.onnx_export import export_onnx, save_onnx
from export.core.models import default_spec
from export.core.shapes import BatchRange
from export.core.weights import fresh_source
from export.gate.inputs import parity_inputs
from export.gate.parity import run_gate
from export.runtime.ort_runner import OnnxRuntimeRunner
from export.runtime.torch_runner import TorchRunner


def baseline_module(revision: str, folder: Path) -> ModuleType:
    """The FP16 converter module at ``revision`` (``export/convert/fp16.py``, or
    ``export/fp16.py`` before the regrouping), imported beside the current one."""
    for where, package in (("export/convert/fp16.py", "export.convert"),  # noqa: B007 (read after)
                           ("export/fp16.py", "export")):
        found = subprocess.run(["git", "show", f"{revision}:{where}"], check=False,
                               capture_output=True,
                               text=True)
        if found.returncode == 0:
            break
    else:
        raise SystemExit(f"no FP16 converter at {revision}")
    path = folder / "fp16_baseline.py"
    path.write_text(found.stdout)
    spec = importlib.util.spec_from_file_location(f"{package}._fp16_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def measure(name: str, convert: Any, fp32_proto: Any, reference: TorchRunner, inputs: list,
            folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    proto, report = convert(fp32_proto)
    seconds = time.perf_counter() - started
    path = save_onnx(proto, folder / f"{name}.onnx")  # the full checker runs here
    verdict = run_gate(reference, OnnxRuntimeRunner(path, precision="fp16"), inputs, "fp16")
    s = verdict.summary()
    return {"converter": name, "passed": verdict.passed, "max_abs_error": s["max_abs_error"],
            "min_cosine": s["min_cosine"], "top1_agreement": s["top1_agreement"],
            "samples": sum(c.batch_size for c in verdict.comparisons),
            "nodes_fp32": len(report.nodes_fp32), "casts": report.casts_inserted,
            "values_flushed_to_zero": report.values_flushed_to_zero,
            "values_raised_to_min": getattr(report, "values_raised_to_min", None),
            "convert_s": round(seconds, 2), "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="18,34,50")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-range", default=None, help="min:opt:max [1:8:32]")
    parser.add_argument("--baseline", default=None, help="git revision of the old converter")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    converters: dict[str, Any] = {"onnxruntime": fp16.convert_to_fp16}
    keep = tempfile.TemporaryDirectory()
    if args.baseline:
        old = baseline_module(args.baseline, Path(keep.name)).convert_to_fp16
        converters = {"baseline": old, **converters}
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        spec = default_spec(f"resnet{depth}", 1000, 3, args.input_size)
        batch = BatchRange(*map(int, args.batch_range.split(":"))) if args.batch_range \
            else BatchRange.default_for(spec)
        source = fresh_source(spec)
        fp32_proto = export_onnx(source.model, spec)
        inputs, _ = parity_inputs(spec, batch, source.dataset)
        reference = TorchRunner(source.model, device="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            for name, convert in converters.items():
                row = {"model": spec.name, **measure(name, convert, fp32_proto, reference,
                                                     inputs, Path(tmp))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| model | converter | max abs error | min cosine | top-1 agreement | FP32 nodes | "
          "casts | verdict |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['converter']} | {r['max_abs_error']:.2e} | "
              f"{r['min_cosine']:.7f} | {r['top1_agreement']:.3f} | {r['nodes_fp32']} | "
              f"{r['casts']} | {'PASS' if r['passed'] else 'FAIL'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    sys.exit(0 if all(r["passed"] for r in rows) else 1)


if __name__ == "__main__":
    main()
