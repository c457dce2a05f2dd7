"""The comparator (Polygraphy-like): the eager FP32 model against the artifact on the same
inputs, judged by the precision's row of :data:`.tolerances.TOLERANCES`.

- :func:`compare` - reference logits vs candidate logits -> :class:`Comparison` (max abs / rel
  error, failing elements, cosine per sample, top-1 / top-5 agreement, NaN/Inf).
- :func:`run_gate` - feeds :class:`.inputs.ParityInput` batches (and, where the contract judges
  accuracy, the labelled held-out split: :mod:`.accuracy`) to a reference and a candidate runner
  and returns a :class:`Verdict` that passes only if every check passes.

Decisions are judged where they are decidable: a sample whose two best reference logits are
closer than the error the tolerance allows (``allowed(top1) + allowed(top2)``) is *ambiguous* - a
flip there is rounding noise, not a defect. Top-1 agreement must be 100% on the clear samples;
top-5 likewise compares the sets only where the 5th and 6th logits are clearly apart. Both are
also reported over all samples. The terminal table is :mod:`.table`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..runtime.base import Runner
from .accuracy import Accuracy, cosine, judge_accuracy
from .inputs import LabelledInput, ParityInput
from .tolerances import TOLERANCES, Tolerance

__all__ = ["TOLERANCES", "Comparison", "Tolerance", "Verdict", "compare", "run_gate"]


@dataclass
class Comparison:
    """Figures for one input batch (all floats plain Python for JSON)."""

    name: str
    kind: str
    batch_size: int
    max_abs_error: float
    max_rel_error: float  # over elements with |ref| > atol_eff (near-zero refs say nothing)
    failing_elements: int
    elements: int
    min_cosine: float
    top1_agreement: float
    top1_clear_agreement: float | None  # None: no sample with a clear margin
    clear_samples: int
    top5_overlap: float
    top5_clear_agreement: float | None
    finite: bool
    reference_finite: bool
    passed: bool
    failures: list[str] = field(default_factory=list)
    elementwise: bool = True  # whether failing_elements was judged (not for INT8)


@dataclass
class Verdict:
    """The gate's answer: passed only if every comparison (and the accuracy check, where the
    contract has one) passed."""

    precision: str
    tolerance: Tolerance
    reference: str  # runner label
    candidate: str
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)
    arithmetic: str = ""  # the precision the candidate's maths really ran in (runner.arithmetic)
    accuracy: Accuracy | None = None

    @property
    def passed(self) -> bool:
        return (bool(self.comparisons) and all(c.passed for c in self.comparisons)
                and (self.accuracy is None or self.accuracy.passed))

    def summary(self) -> dict[str, Any]:
        cs = self.comparisons
        return {
            "max_abs_error": max(c.max_abs_error for c in cs),
            "max_rel_error": max(c.max_rel_error for c in cs),
            "failing_elements": sum(c.failing_elements for c in cs),
            "min_cosine": min(c.min_cosine for c in cs),
            "top1_agreement": _mean_weighted(cs, "top1_agreement"),
            "top5_overlap": _mean_weighted(cs, "top5_overlap"),
            "all_finite": all(c.finite for c in cs),
        } if cs else {}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "precision": self.precision,
                "tolerance": asdict(self.tolerance), "reference": self.reference,
                "candidate": self.candidate, "arithmetic": self.arithmetic or self.precision,
                "summary": self.summary(),
                "accuracy": asdict(self.accuracy) if self.accuracy is not None else None,
                "comparisons": [asdict(c) for c in self.comparisons], "notes": self.notes}


def _mean_weighted(cs: list[Comparison], key: str) -> float:
    total = sum(c.batch_size for c in cs)
    return sum(getattr(c, key) * c.batch_size for c in cs) / total


def _allowed(ref: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Per-element error the tolerance allows: max(atol_eff, rtol*|ref|)."""
    scale = np.maximum(1.0, ref.std(axis=1, keepdims=True))
    return np.maximum(tol.atol * scale, tol.rtol * np.abs(ref))


def _topk_sets_clear(ref: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the reference's top-k per sample, and whether the k-th/(k+1)-th gap is clear."""
    order = np.argsort(-ref, axis=1, kind="stable")
    top = order[:, :k]
    if ref.shape[1] <= k:
        return top, np.ones(len(ref), dtype=bool)
    rows = np.arange(len(ref))
    kth, nxt = order[:, k - 1], order[:, k]
    gap = ref[rows, kth] - ref[rows, nxt]
    return top, gap > allowed[rows, kth] + allowed[rows, nxt]


def _top5(ref: np.ndarray, cand: np.ndarray, allowed: np.ndarray, tol: Tolerance,
          failures: list[str]) -> tuple[np.ndarray, float | None]:
    """Top-5 overlap per sample, and the agreement of the sets where the 5th and 6th reference
    logits are clearly apart (judged: a failure is added to ``failures``)."""
    k = min(5, ref.shape[1])
    top5_ref, clear5 = _topk_sets_clear(ref, allowed, k)
    top5_cand = np.argsort(-np.where(np.isfinite(cand), cand, -np.inf), axis=1,
                           kind="stable")[:, :k]
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(top5_ref, top5_cand)])
    clear_top5 = float((overlap[clear5] == 1.0).mean()) if clear5.any() else None
    if clear_top5 is not None and clear_top5 < tol.min_clear_top5:
        failures.append(f"top-{k} set differs on {int((overlap[clear5] < 1).sum())} of "
                        f"{int(clear5.sum())} samples with a clear top-{k}")
    return overlap, clear_top5


def compare(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance, name: str = "",
            kind: str = "") -> Comparison:
    """Judge one batch of candidate logits against the reference's."""
    ref = np.asarray(reference, dtype=np.float32)
    cand = np.asarray(candidate, dtype=np.float32)
    failures: list[str] = []
    if ref.shape != cand.shape:
        raise ValueError(f"{name}: candidate logits have shape {cand.shape}, reference {ref.shape}")
    n = ref.shape[0]
    ref_finite = bool(np.isfinite(ref).all())
    cand_finite = bool(np.isfinite(cand).all())
    if not ref_finite:
        failures.append("the reference itself produced NaN/Inf")
    if not cand_finite:
        bad = int((~np.isfinite(cand)).sum())
        failures.append(f"{bad} NaN/Inf logits")
    safe_ref = np.nan_to_num(ref, nan=0.0, posinf=0.0, neginf=0.0)
    safe_cand = np.nan_to_num(cand, nan=np.inf, posinf=np.inf, neginf=np.inf)
    with np.errstate(invalid="ignore"):
        diff = np.abs(safe_cand - safe_ref)
    diff = np.where(np.isfinite(diff), diff, np.inf)
    allowed = _allowed(safe_ref, tol)
    failing = int((diff > allowed).sum())
    if failing and tol.elementwise:
        failures.append(f"{failing} of {diff.size} logits beyond atol {tol.atol:g} and "
                        f"rtol {tol.rtol:g}")
    meaningful = np.abs(safe_ref) > tol.atol * np.maximum(1.0, safe_ref.std(axis=1,
                                                                             keepdims=True))
    rel = diff[meaningful] / np.abs(safe_ref[meaningful]) if meaningful.any() else np.zeros(1)

    cos = cosine(safe_ref, np.where(np.isfinite(cand), cand, 0.0))
    if cos.min() < tol.min_cosine:
        failures.append(f"cosine similarity {cos.min():.6f} < {tol.min_cosine}")

    top1_ref = safe_ref.argmax(axis=1)
    top1_cand = np.where(np.isfinite(cand), cand, -np.inf).argmax(axis=1)
    agree = top1_ref == top1_cand
    _, clear1 = _topk_sets_clear(safe_ref, allowed, 1)
    clear_top1 = float(agree[clear1].mean()) if clear1.any() else None
    if clear_top1 is not None and clear_top1 < tol.min_clear_top1:
        failures.append(f"top-1 differs on {int((~agree[clear1]).sum())} of {int(clear1.sum())} "
                        "samples with a clear margin")

    overlap, clear_top5 = _top5(safe_ref, cand, allowed, tol, failures)
    return Comparison(
        name=name, kind=kind, batch_size=n, max_abs_error=float(diff.max()),
        max_rel_error=float(rel.max()), failing_elements=failing, elements=int(diff.size),
        min_cosine=float(cos.min()), top1_agreement=float(agree.mean()),
        top1_clear_agreement=clear_top1, clear_samples=int(clear1.sum()),
        elementwise=tol.elementwise,
        top5_overlap=float(overlap.mean()), top5_clear_agreement=clear_top5,
        finite=cand_finite, reference_finite=ref_finite, passed=not failures, failures=failures)


def run_gate(reference: Runner, candidate: Runner, inputs: list[ParityInput], precision: str,
             notes: list[str] | None = None,
             on_comparison: Callable[[Comparison], None] | None = None,
             labelled: LabelledInput | None = None,
             max_accuracy_drop: float | None = None) -> Verdict:
    """Run both runners on every input and judge each pair with the precision's tolerance;
    ``on_comparison`` sees each row as it is judged (a long gate shows its progress). Where the
    contract judges accuracy, ``labelled`` is required and run through both;
    ``max_accuracy_drop`` replaces the contract's limit (points of top-1)."""
    tol = TOLERANCES[precision]
    if max_accuracy_drop is not None and tol.max_accuracy_drop is not None:
        tol = replace(tol, max_accuracy_drop=float(max_accuracy_drop))
    comparisons = []
    accuracy = None
    if tol.max_accuracy_drop is not None and labelled is None:
        raise ValueError(f"the {precision} contract judges accuracy: labelled images needed")
    with reference, candidate:
        for item in inputs:
            if item.kind == "random" and not tol.judge_random:
                continue
            ref = reference.infer(item.batch)
            cand = candidate.infer(item.batch)
            comparisons.append(compare(ref, cand, tol, item.name, item.kind))
            if on_comparison is not None:
                on_comparison(comparisons[-1])
        if tol.max_accuracy_drop is not None and labelled is not None:
            step = labelled.batch_size
            chunks = [labelled.images[i:i + step] for i in range(0, len(labelled.images), step)]
            ref = np.concatenate([reference.infer(c) for c in chunks])
            cand = np.concatenate([candidate.infer(c) for c in chunks])
            accuracy = judge_accuracy(ref, cand, labelled.labels, tol)
    return Verdict(precision, tol, reference.label, candidate.label, comparisons,
                   list(notes or []), candidate.arithmetic, accuracy)
