#!/usr/bin/env python3
"""Re-check an INT8 (or BF16) artifact on an emulated CPU: its own gate images (the
``gate-reference.npz`` the export stored) through ONNX Runtime and OpenVINO running inside QEMU
user mode as another CPU model (``-cpu Haswell``: AVX2, no AVX-512, no VNNI), judged by the
contract's floors recorded in the manifest, as ``load_artifact`` re-checks on an unlike machine.

For the CPUs one does not have at hand: integer kernels are chosen by the CPU's features, so
an AVX2-only CPU runs other kernels (ONNX Runtime's u8 x s8 ones sum two products in 16 bits)
than the AVX-512 VNNI or AMX machine that exported the artifact. Emulated speed means nothing:
only the numbers are compared. Needs ``qemu-x86_64`` (apt-get install qemu-user).

    python scripts/check_int8_emulated.py artifacts/resnet20-digits-onnx-int8
    python scripts/check_int8_emulated.py ART --cpu Haswell --runtime onnxruntime

Exit status 0 when every runtime passes, 1 when one fails, 2 for a usage error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

#: run inside the emulated CPU: numpy and the runtimes only (torch under emulation takes minutes)
INNER = """
import json, sys, numpy as np
model, images, out, runtimes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
x = np.load(images)
found, seen = {}, {}
for runtime in runtimes:
    if runtime == "onnxruntime":
        import onnxruntime as ort
        s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        found[runtime] = s.run(None, {s.get_inputs()[0].name: x})[0]
        seen[runtime] = "onnxruntime " + ort.__version__
    elif runtime == "openvino":
        import openvino as ov
        core = ov.Core()
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        found[runtime] = compiled(x)[0]
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        seen[runtime] = "openvino " + ov.__version__ + " sees " + ",".join(caps)
np.savez(out, **found)
print(json.dumps(seen))
"""


def _inner_run(qemu: str, cpu: str, model: Path, images: np.ndarray, runtimes: list[str]
               ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", images)
        done = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", INNER, str(model),
                               str(Path(tmp) / "x.npy"), str(Path(tmp) / "out.npz"),
                               ",".join(runtimes)], capture_output=True, text=True,
                              timeout=3600, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the emulated run failed (exit {done.returncode}): "
                             f"{done.stderr.strip().splitlines()[-1:]}")
        with np.load(Path(tmp) / "out.npz") as out:
            return {k: out[k] for k in out.files}, json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    import click

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--cpu", default="Haswell", show_default=True,
                  help="QEMU's CPU model (qemu-x86_64 -cpu help lists them).")
    @click.option("--runtime", "runtimes", multiple=True,
                  type=click.Choice(["onnxruntime", "openvino"]),
                  default=("onnxruntime", "openvino"), show_default=True)
    def run(artifact: Path, cpu: str, runtimes: tuple[str, ...]) -> None:
        from export.core.artifact import artifact_file, read_manifest
        from export.runtime.recheck import _judge

        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise click.UsageError("qemu-x86_64 is not installed (apt-get install qemu-user)")
        manifest = read_manifest(artifact)
        section = manifest["parity"].get("recheck")
        if not section:
            raise click.UsageError(f"{artifact} carries no gate reference (INT8 and BF16 "
                                   "artifacts do)")
        precision = next(iter(section["tolerances"]))
        with np.load(artifact_file(artifact, section["file"]), allow_pickle=False) as data:
            images, reference = data["images"].astype(np.float32), data["logits"]
        found, seen = _inner_run(qemu, cpu, artifact_file(artifact, manifest["artifact"]),
                                 images, list(runtimes))
        failed = False
        for runtime in runtimes:
            cosine, top1, failures = _judge(reference, found[runtime],
                                            section["tolerances"][precision])
            clear = "n/a" if top1 is None else f"{top1:.4f}"
            verdict = "FAIL: " + "; ".join(failures) if failures else "PASS"
            click.echo(f"{runtime} on an emulated {cpu} ({seen[runtime]}): {len(images)} gate "
                       f"images, min cosine {cosine:.4f}, clear top-1 {clear}: {verdict}")
            failed |= bool(failures)
        sys.exit(1 if failed else 0)

    run(argv, prog_name="check_int8_emulated.py")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
