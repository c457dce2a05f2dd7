"""A precision-sensitive verdict travels with the CPU it was judged on, and is re-checked where it
does not hold.

INT8 and BF16 kernels differ by CPU: ONNX Runtime's u8 x s8 kernels saturate without VNNI, and
BF16 runs natively only on AVX512-BF16 / AMX. So every verdict in ``parity.runs`` records where
it was judged (:func:`judged_here`: CPU model, ISA class, runtime and its version), and an
artifact loaded at ``int8`` or ``bf16`` on a machine whose ISA class or runtime version differs
from every passing verdict of that runtime and precision is re-checked before its first answer:
the artifact's own gate images (``parity.recheck``: a small ``.npz`` of inputs and the eager
FP32 logits, listed in ``files`` with its sha256) through the runner, against the contract's
floors recorded beside them at export. A failure refuses the artifact in one line.
:data:`NO_RECHECK_ENV` opts out.

An artifact of an older release records neither: it counts as judged elsewhere, and is
re-checked on its gate's real images and eager logits rebuilt from the recorded source weights
and dataset (as ``verify`` does); where those are gone it is refused unless the user opts out.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import cpu_features
from ..core.artifact import artifact_file
from ..core.errors import UserError
from ..core.manifest import Manifest
from .base import Runner

#: set to 1 to run a precision-sensitive artifact without re-checking it on an unlike machine
NO_RECHECK_ENV = "RESNET_DEPLOY_NO_RECHECK"
#: the precisions whose kernels differ by CPU (an artifact's contract or an execution setting)
SENSITIVE = ("int8", "bf16")
REFERENCE_NAME = "gate-reference.npz"
REFERENCE_ROLE = "gate-reference"


def runtime_version(runtime: str) -> str | None:
    """The version of the package behind a registry runtime (``onnxruntime-cuda`` ->
    onnxruntime's), or None where it is not importable."""
    module = runtime.split("-")[0]
    try:
        return str(getattr(importlib.import_module(module), "__version__", None))
    except ImportError:
        return None


def judged_here(runtime: str) -> dict[str, Any]:
    """Where a verdict is being judged: recorded with it in the manifest."""
    return {"cpu": cpu_features.cpu_model(), "isa_class": cpu_features.isa_class(),
            "runtime": runtime, "runtime_version": runtime_version(runtime)}


def _like_here(run: Any, runtime: str, precision: str, here: dict[str, Any]) -> bool:
    where = run.get("judged_on") if isinstance(run, dict) else None
    return (isinstance(where, dict) and run.get("passed") is True
            and run.get("precision") == precision and where.get("runtime") == runtime
            and where.get("isa_class") == here["isa_class"]
            and where.get("runtime_version") == here["runtime_version"])


def _judged_list(runs: list[Any], precision: str) -> str:
    places = {f"{w.get('isa_class')} / {w.get('runtime')} {w.get('runtime_version')}"
              for r in runs if isinstance(r, dict) and r.get("precision") == precision
              and isinstance(w := r.get("judged_on"), dict)}
    return ", ".join(sorted(places)) or "an unrecorded CPU (an older release)"


@dataclass
class Recheck:
    """What a re-check found (kept on the runner as ``runner.recheck``)."""

    precision: str
    runtime: str
    here: dict[str, Any]
    judged_on: str
    images: int
    min_cosine: float
    clear_top1: float | None
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def _judge(reference: np.ndarray, candidate: np.ndarray, tol: dict[str, float]
           ) -> tuple[float, float | None, list[str]]:
    """The contract's floors recorded at export: finite logits, the per-sample cosine, top-1
    agreement where the reference's margin is clear of the tolerance (as the gate judges)."""
    failures = []
    if not np.isfinite(candidate).all():
        failures.append(f"{int((~np.isfinite(candidate)).sum())} NaN/Inf logits")
    ref, cand = reference.astype(np.float64), np.nan_to_num(candidate.astype(np.float64))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = float(((ref * cand).sum(1) / np.where(norms == 0, 1, norms)).min())
    if cosine < tol["min_cosine"]:
        failures.append(f"cosine similarity {cosine:.4f} < {tol['min_cosine']}")
    allowed = np.maximum(tol["atol"] * np.maximum(1.0, ref.std(1, keepdims=True)),
                         tol["rtol"] * np.abs(ref))
    order = np.argsort(-ref, axis=1)[:, :2]
    rows = np.arange(len(ref))
    gap = ref[rows, order[:, 0]] - ref[rows, order[:, 1]]
    clear = gap > allowed[rows, order[:, 0]] + allowed[rows, order[:, 1]]
    agree = ref.argmax(1) == cand.argmax(1)
    top1 = float(agree[clear].mean()) if clear.any() else None
    if top1 is not None and top1 < tol["min_clear_top1"]:
        failures.append(f"top-1 differs on {int((~agree[clear]).sum())} of {int(clear.sum())} "
                        "images with a clear margin")
    return cosine, top1, failures


def _stored(folder: Path, section: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The reference file's images (as float32) and eager logits."""
    with np.load(artifact_file(folder, section["file"]), allow_pickle=False) as data:
        return data["images"].astype(np.float32), data["logits"]


def _answers(runner: Runner, manifest: Manifest, images: np.ndarray) -> np.ndarray:
    """The runner's logits for ``images``, fed in batches within the artifact's range (a
    remainder that would fall below it is left out)."""
    rng = manifest["batch_range"]
    step = max(int(rng["min"]), min(int(rng["max"]), len(images)))
    with runner:
        return np.concatenate([runner.infer(images[i:i + step])
                               for i in range(0, len(images) - step + 1, step)])


def _rebuilt(folder: Path, manifest: Manifest, precision: str
             ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """An older artifact without a reference: its gate's real images and their eager logits
    rebuilt from the recorded dataset and source weights (sha256 checked, as ``verify`` does),
    with the floors of its recorded verdict; None where the weights or the data are gone."""
    from ..core.models import ModelSpec
    from ..core.shapes import BatchRange
    from ..core.weights import source_from_manifest
    from ..data import reference_images
    from .torch_runner import TorchRunner

    runs = [r for r in manifest["parity"].get("runs") or [] if isinstance(r, dict)]
    tol = next((r["tolerance"] for r in runs if r.get("precision") == precision
                and isinstance(r.get("tolerance"), dict)), None)
    dataset = ((manifest["parity"].get("inputs") or {}).get("real") or {}).get("dataset")
    spec, batch = ModelSpec.from_dict(manifest["model"]), BatchRange.from_dict(
        manifest["batch_range"])
    try:
        source = source_from_manifest(manifest, folder)
        images = reference_images(dataset or source.dataset, spec, limit=batch.max)
    except UserError:
        return None
    if tol is None or not len(images):
        return None
    images = images[np.arange(max(batch.min, len(images))) % len(images)]
    with TorchRunner(source.model, device="cpu") as eager:
        return images, eager.infer(images), tol


def recheck_where_judged(folder: Path, manifest: Manifest, runner: Runner, runtime: str,
                         precision: str) -> Recheck | None:
    """Re-check a precision-sensitive artifact on a machine unlike every one that judged it;
    None where no re-check is due. Refuses (:class:`UserError`, one line) where it fails or
    cannot run. The caller has verified the folder's files (the reference's sha256)."""
    if precision not in SENSITIVE or os.environ.get(NO_RECHECK_ENV, "") not in ("", "0"):
        return None
    here = judged_here(runtime)
    runs = manifest["parity"].get("runs") or []
    if any(_like_here(run, runtime, precision, here) for run in runs):
        return None
    judged = _judged_list(runs, precision)
    where = f"{here['isa_class']} / {runtime} {here['runtime_version']}"
    opt_out = f"set {NO_RECHECK_ENV}=1 to run it unchecked"
    section = manifest["parity"].get("recheck")
    section = section if isinstance(section, dict) else {}
    tolerances = section.get("tolerances")
    tol = tolerances.get(precision) if isinstance(tolerances, dict) else None
    try:
        if isinstance(tol, dict):
            images, reference = _stored(folder, section)
        elif (rebuilt := _rebuilt(folder, manifest, precision)) is not None:
            images, reference, tol = rebuilt
        else:
            raise UserError(f"refusing {folder}: its {precision} verdict was judged on "
                            f"{judged}, not on a machine like this one ({where}), and neither "
                            "a gate reference nor its source weights and data are here to "
                            f"re-check it; re-export it here, or {opt_out}")
        answers = _answers(runner, manifest, images)
        cosine, top1, failures = _judge(reference[:len(answers)], answers, tol)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise UserError(f"refusing {folder}: its gate reference does not read ({exc})") from None
    result = Recheck(precision, runtime, here, judged, len(answers), cosine, top1, failures)
    if failures:
        raise UserError(f"refusing {folder}: its {precision} verdict was judged on {judged}; "
                        f"re-checked here ({where}) on {len(answers)} gate images it FAILS: "
                        f"{'; '.join(failures)}; re-export it on this machine, or {opt_out}")
    print(f"note: {folder}: {precision} verdict judged on {judged}; re-checked here ({where}) "
          f"on {len(answers)} gate images: pass (min cosine {cosine:.4f})", file=sys.stderr)
    return result
