"""Judging an artifact: every runtime here that runs it, each against the eager FP32 model, by
the contract it is held to (:mod:`.tolerances`' table); one table per runtime."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import BackendUnavailable, ParityFailed, UserError, first_line
from ..core.manifest import Manifest
from ..core.models import ModelSpec
from ..core.shapes import BatchRange
from ..core.weights import SourceModel
from ..runtime.base import Runner
from ..runtime.loader import runner_for
from ..runtime.recheck import judged_here
from ..runtime.registry import EXECUTION_PRECISIONS, runtimes_for
from ..runtime.torch_runner import TorchRunner
from .inputs import accuracy_set, parity_inputs
from .parity import TOLERANCES, Verdict, run_gate
from .table import table_footer, table_header, table_row

Echo = Callable[[str], None]
#: the ONNX format an engine of each precision is built from
SOURCE_FORMAT = {"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8"}


@dataclass
class GateCandidate:
    """One runtime running the artifact, and the precision contract it is judged by."""

    runner: Runner
    contract: str
    runtime: str = ""  # the registry's name for it (recorded with the verdict)


def not_judged(manifest: Manifest) -> list[str]:
    """The runtimes that would judge this artifact but are absent here, each with why."""
    fmt = manifest["format"]
    built_from = (manifest.get("tensorrt") or {}).get("built_from") if fmt == "trt" else None
    flavour = (manifest.get("int8") or {}).get("flavour")
    return [f"{info.name} ({info.unavailable()})"
            for info in runtimes_for(SOURCE_FORMAT[manifest["precision"]] if built_from else fmt,
                                     flavour)
            if info.judges and info.unavailable() is not None]


def gate_candidates(folder: Path, manifest: Manifest) -> list[GateCandidate]:
    """The artifact in every runtime here that judges it (the registry's), each with the
    contract it is judged by.

    ONNX formats: every available runtime that runs the format and flavour (ONNX Runtime CPU, its
    CUDA provider where a GPU is visible, OpenVINO where installed), at the artifact's precision;
    where the registry lets a runtime run the artifact at another precision (an FP32 ONNX at bf16
    on OpenVINO) and that precision is native on this machine, also at that precision, judged by
    its own contract. An engine: the ONNX it was built from on the same runtimes, then the engine
    itself on TensorRT.
    """
    own, fmt = manifest["precision"], manifest["format"]
    flavour = (manifest.get("int8") or {}).get("flavour")
    build = manifest.get("tensorrt")
    built_from = build["built_from"] if fmt == "trt" and build else None
    found = []
    for info in runtimes_for(SOURCE_FORMAT[own] if built_from else fmt, flavour):
        if not info.judges or info.unavailable() is not None:
            continue
        found.append(GateCandidate(runner_for(folder, manifest, runtime=info.name,
                                              file=built_from), own, info.name))
        for extra in EXECUTION_PRECISIONS.get((info.name, own), ()):
            if extra == own or info.not_native(extra) is not None:
                continue  # not native here: never judged, never emulated
            try:
                found.append(GateCandidate(runner_for(folder, manifest, runtime=info.name,
                                                      precision=extra, file=built_from), extra,
                                           info.name))
            except BackendUnavailable:
                pass
    if built_from is not None:
        found.append(GateCandidate(runner_for(folder, manifest), own, "tensorrt"))
    return found


def judge_artifact(folder: Path, manifest: Manifest, source: SourceModel, echo: Echo
         ) -> tuple[dict[str, Any], list[Verdict]]:
    """Run the gate for every candidate runtime; print a table for each."""
    spec = ModelSpec.from_dict(manifest["model"])
    batch = BatchRange.from_dict(manifest["batch_range"])
    dataset = source.dataset
    recorded = (manifest.get("parity") or {}).get("inputs", {}).get("real", {})
    if recorded.get("dataset") is not None:
        dataset = recorded["dataset"]
    inputs, described = parity_inputs(spec, batch, dataset)
    notes = [described["real"]["note"]] if described["real"]["note"] else []
    labelled, limit = None, None
    if TOLERANCES[manifest["precision"]].max_accuracy_drop is not None:
        int8 = manifest.get("int8") or {}
        limit = int8.get("max_accuracy_drop")
        labelled, described["accuracy"] = accuracy_set(
            spec, dataset, batch.max, int8.get("calibration"))
    if not TOLERANCES[manifest["precision"]].judge_random:
        notes.append(f"random inputs are not judged at {manifest['precision']}: they lie "
                     "outside the ranges it was calibrated for")
    reference = TorchRunner(source.model, device="cpu")
    verdicts, places = [], []
    for found in gate_candidates(folder, manifest):
        places.append(judged_here(found.runtime))
        candidate = found.runner
        started = time.perf_counter()
        echo(table_header(found.contract, candidate.label, reference.label,
                          candidate.arithmetic))
        try:
            verdict = run_gate(reference, candidate, inputs, found.contract, notes,
                               on_comparison=lambda c: echo(table_row(c)),
                               labelled=labelled if found.contract == manifest["precision"]
                               else None, max_accuracy_drop=limit)
        except (UserError, BackendUnavailable, KeyboardInterrupt):
            raise
        except Exception as exc:  # an artifact its runtime cannot run fails the gate
            raise ParityFailed(f"{candidate.label} could not run the artifact: "
                               f"{first_line(exc)}") from None
        echo(table_footer(verdict) + f"  ({time.perf_counter() - started:.1f}s)")
        if found.contract != manifest["precision"] and not verdict.passed:
            echo(f"note: the {found.contract} contract failed on {candidate.label}; the "
                 f"artifact keeps its {manifest['precision']} verdict and will not be run at "
                 f"{found.contract}")
        verdicts.append(verdict)
    absent = not_judged(manifest)
    if absent:
        echo(f"not judged (absent here): {'; '.join(absent)}")
    contracts: dict[str, bool] = {}
    for verdict in verdicts:
        contracts[verdict.precision] = contracts.get(verdict.precision, True) and verdict.passed
    # the artifact passes on its own contract; others (bf16 execution) are recorded beside it
    parity = {"passed": contracts[manifest["precision"]], "contracts": contracts,
              "inputs": described,
              "runs": [{**v.to_dict(), "judged_on": where} for v, where in zip(verdicts, places)],
              "not_judged": absent}
    return parity, verdicts


