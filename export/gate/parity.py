"""The parity gate: the eager FP32 model against the artifact on the same inputs (Polygraphy-like).

Three parts, one job each:

- :data:`TOLERANCES` - the one table of thresholds per precision, each with its reason.
- :func:`compare` - the comparator: reference logits vs candidate logits -> :class:`Comparison`
  (max abs / rel error, failing elements, cosine per sample, top-1 / top-5 agreement, NaN/Inf).
- :func:`run_gate` - feeds :class:`ParityInput` batches to a reference and a candidate runner and
  returns a :class:`Verdict` that passes only if every comparison passes.

Element rule (as Polygraphy): an element fails only if it is beyond BOTH tolerances,
``|c - r| > atol_eff`` and ``|c - r| > rtol * |r|``. ``atol_eff = atol * max(1, std(r))`` per
sample: reduced-precision error grows with the size of the activations, i.e. with the logit scale,
so a fixed atol would be loose for an untrained model (logits ~0.3) and fail every trained one
(logits ~10). Below a logit spread of 1 it is the plain atol.

Decisions are judged where they are decidable: a sample whose two best reference logits are
closer than the error the tolerance allows (``allowed(top1) + allowed(top2)``) is *ambiguous* - a
flip there is rounding noise, not a defect. Top-1 agreement must be 100% on the clear samples;
top-5 likewise compares the sets only where the 5th and 6th logits are clearly apart. Both are
also reported over all samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..runtime.base import Runner


@dataclass(frozen=True)
class Tolerance:
    atol: float  # absolute, per unit of the sample's logit std (at least 1)
    rtol: float  # relative to |reference element|
    min_cosine: float  # per-sample cosine similarity, the minimum over samples must reach it
    min_clear_top1: float  # top-1 agreement required on samples with a clear margin
    min_clear_top5: float  # top-5 set agreement required where the 5th/6th gap is clear
    reason: str
    #: False: atol/rtol only define what a "clear margin" is; elements are not judged one by one
    #: (INT8 moves every logit; the contract is about decisions and accuracy)
    elementwise: bool = True
    #: top-1 accuracy on the labelled test split may fall at most this many points (None: not
    #: judged); the test split is never the calibration data
    max_accuracy_drop: float | None = None
    #: random inputs lie outside the ranges INT8 was calibrated for: judge real images only
    judge_random: bool = True


#: The one table (docs/export.md repeats it with the measured figures behind each value).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(
        atol=1e-4, rtol=1e-3, min_cosine=0.99999, min_clear_top1=1.0, min_clear_top5=1.0,
        reason="the same FP32 math in another order (folded BatchNorm, other convolution "
               "algorithms, threads): float32 rounding (1.2e-7 per op) accumulates to ~6e-6 on "
               "ResNet-152 logits (measured, ONNX Runtime CPU vs eager); 1e-4 / 1e-3 leave >15x "
               "headroom for other CPUs and GPU kernels (FP32 engines are built with TF32 off)"),
    "fp16": Tolerance(
        atol=2e-2, rtol=2e-2, min_cosine=0.999, min_clear_top1=1.0, min_clear_top5=1.0,
        reason="FP16 weights and activations: 11-bit mantissa, 4.9e-4 relative rounding per op, "
               "~4e-3 on ResNet logits through ONNX Runtime's CPU provider (measured; it stores "
               "tensors in FP16 but computes in FP32 through inserted casts, so the verdict's "
               "'arithmetic' says so); TensorRT and CUDA FP16 kernels may also accumulate in "
               "FP16, hence 5x headroom; cosine 0.999 still catches any wrong weight or layer "
               "(a damaged artifact lands far outside)"),
    "bf16": Tolerance(
        atol=1e-1, rtol=1e-1, min_cosine=0.995, min_clear_top1=1.0, min_clear_top5=1.0,
        reason="BF16 arithmetic (an FP32 artifact executed at bf16 on OpenVINO's CPU plugin, "
               "or torch CPU autocast): 8-bit mantissa, 3.9e-3 relative rounding per op, 8x "
               "FP16's; measured max abs error on logits in docs/export.md; the cosine floor "
               "0.995 and clear-margin top-1 still catch a wrong weight or layer"),
    "int8": Tolerance(
        atol=0.15, rtol=0.15, min_cosine=0.97, min_clear_top1=0.99, min_clear_top5=0.95,
        elementwise=False, max_accuracy_drop=1.0, judge_random=False,
        reason="INT8 (QDQ, calibrated): every logit moves by up to a few percent of the logit "
               "range, so elements are not judged one by one; the contract is accuracy: top-1 "
               "on the held-out labelled test split within 1.0 point of eager FP32 (failing "
               "only where the exact McNemar test on the images they disagree on shows a real "
               "loss, p < 0.05: one image of a small split decides nothing), top-1 "
               "agreement >= 99% where the reference's margin exceeds 0.15 x max(1, std), and a "
               "cosine floor of 0.97 (measured 0.984-0.993 on trained ResNet-18/20 with 256 "
               "calibration images; one scale x100 drops it below 0.5)"),
}


@dataclass
class ParityInput:
    """One named batch fed to both runners."""

    name: str  # e.g. "real b=8", "random b=1"
    kind: str  # "real" or "random"
    batch: np.ndarray  # float32 NCHW, normalised


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


#: One-sided significance of the paired test that decides whether INT8 really lost images.
ACCURACY_ALPHA = 0.05


@dataclass
class Accuracy:
    """Top-1 accuracy of reference and candidate on labelled held-out images, and the paired
    test on the images where they disagree on correctness."""

    samples: int
    reference_top1: float
    candidate_top1: float
    drop_points: float  # reference - candidate, in percentage points
    agreement: float  # top-1 agreement with the reference over all samples
    min_cosine: float
    finite: bool
    passed: bool
    failures: list[str] = field(default_factory=list)
    lost: int = 0  # images the reference got right and the candidate wrong
    gained: int = 0  # images the candidate got right and the reference wrong
    p_value: float = 1.0  # exact McNemar, one-sided: P(lost >= observed | no real difference)
    limit_points: float | None = None
    #: the smallest drop this split can show (every discordant image lost), in points
    resolvable_points: float = 0.0

    @property
    def resolves_limit(self) -> bool:
        return self.limit_points is None or self.resolvable_points <= self.limit_points


def min_lost_images(alpha: float = ACCURACY_ALPHA) -> int:
    """Fewest lost images (none gained) that the exact test can tell from chance."""
    k = 1
    while 0.5 ** k >= alpha:
        k += 1
    return k


def mcnemar_p(lost: int, gained: int) -> float:
    """Exact one-sided McNemar test: how likely ``lost`` or more of the discordant images fall
    on the candidate's side if neither model were really better (a fair coin per image)."""
    from scipy.stats import binomtest

    if lost + gained == 0:
        return 1.0
    return float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue)


def judge_accuracy(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray,
                   tol: Tolerance, alpha: float = ACCURACY_ALPHA) -> Accuracy:
    """The accuracy part of a contract, judged on paired outcomes: it fails where top-1 falls by
    more than ``tol.max_accuracy_drop`` points AND the exact McNemar test says the candidate
    really loses images (one-sided p < ``alpha``), so a split too small to resolve the limit
    cannot fail an artifact on one unlucky image, and a loss the data can show still fails.
    Logits must be finite and every per-sample cosine above the floor."""
    ref = np.asarray(reference, np.float32)
    cand = np.asarray(candidate, np.float32)
    finite = bool(np.isfinite(cand).all())
    safe = np.where(np.isfinite(cand), cand, -np.inf)
    ref_right, cand_right = ref.argmax(1) == labels, safe.argmax(1) == labels
    lost, gained = int((ref_right & ~cand_right).sum()), int((cand_right & ~ref_right).sum())
    ref_top1, cand_top1 = float(ref_right.mean() * 100), float(cand_right.mean() * 100)
    cos = _cosine(ref, np.where(np.isfinite(cand), cand, 0.0))
    p = mcnemar_p(lost, gained)
    limit = tol.max_accuracy_drop
    failures = []
    if not finite:
        failures.append(f"{int((~np.isfinite(cand)).sum())} NaN/Inf logits")
    drop = ref_top1 - cand_top1
    if limit is not None and drop > limit and p < alpha:
        failures.append(f"top-1 accuracy {cand_top1:.2f}% is {drop:.2f} points below the "
                        f"reference's {ref_top1:.2f}% (allowed {limit:g}; {lost} images lost, "
                        f"{gained} gained, McNemar p = {p:.2g})")
    if cos.min() < tol.min_cosine:
        failures.append(f"cosine similarity {cos.min():.6f} < {tol.min_cosine}")
    return Accuracy(len(labels), ref_top1, cand_top1, drop,
                    float((ref.argmax(1) == safe.argmax(1)).mean()), float(cos.min()), finite,
                    not failures, failures, lost, gained, p, limit,
                    100.0 * min_lost_images(alpha) / max(1, len(labels)))


def accuracy_line(acc: Accuracy) -> str:
    """The accuracy check in one line, with what the split can and cannot resolve."""
    line = (f"accuracy on {acc.samples} held-out labelled images: reference "
            f"{acc.reference_top1:.2f}%, candidate {acc.candidate_top1:.2f}% "
            f"({-acc.drop_points:+.2f} points; {acc.lost} lost, {acc.gained} gained, McNemar "
            f"p = {acc.p_value:.2g}), agreement {acc.agreement:.1%}, min cos "
            f"{acc.min_cosine:.5f}: {'pass' if acc.passed else 'FAIL: ' + '; '.join(acc.failures)}")
    if not acc.resolves_limit and acc.limit_points:
        need = int(np.ceil(min_lost_images() * 100 / acc.limit_points))
        line += (f"\nnote: {acc.samples} images cannot resolve a {acc.limit_points:g}-point "
                 f"drop: the smallest drop they can show is {acc.resolvable_points:.2f} points "
                 f"({min_lost_images()} images); a test split of {need}+ images can")
    return line


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


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a64 * b64).sum(axis=1) / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, np.nan_to_num(cos, nan=-1.0))


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

    cos = _cosine(safe_ref, np.where(np.isfinite(cand), cand, 0.0))
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

    k = min(5, ref.shape[1])
    top5_ref, clear5 = _topk_sets_clear(safe_ref, allowed, k)
    top5_cand = np.argsort(-np.where(np.isfinite(cand), cand, -np.inf), axis=1,
                           kind="stable")[:, :k]
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(top5_ref, top5_cand)])
    clear_top5 = float((overlap[clear5] == 1.0).mean()) if clear5.any() else None
    if clear_top5 is not None and clear_top5 < tol.min_clear_top5:
        failures.append(f"top-{k} set differs on {int((overlap[clear5] < 1).sum())} of "
                        f"{int(clear5.sum())} samples with a clear top-{k}")

    return Comparison(
        name=name, kind=kind, batch_size=n, max_abs_error=float(diff.max()),
        max_rel_error=float(rel.max()), failing_elements=failing, elements=int(diff.size),
        min_cosine=float(cos.min()), top1_agreement=float(agree.mean()),
        top1_clear_agreement=clear_top1, clear_samples=int(clear1.sum()),
        elementwise=tol.elementwise,
        top5_overlap=float(overlap.mean()), top5_clear_agreement=clear_top5,
        finite=cand_finite, reference_finite=ref_finite, passed=not failures, failures=failures)


def random_inputs(shape: tuple[int, int, int], batch_sizes: Iterable[int], seed: int = 1234
                  ) -> list[ParityInput]:
    """Seeded N(0, 1) batches (inputs are normalised, so this is image-like in scale)."""
    out = []
    for b in batch_sizes:
        rng = np.random.default_rng(seed + b)
        out.append(ParityInput(f"random b={b}", "random",
                               rng.standard_normal((b, *shape), dtype=np.float32)))
    return out


def real_inputs(images: np.ndarray, batch_sizes: Iterable[int]) -> list[ParityInput]:
    """Real images in batches of the given sizes (cycled when there are fewer images)."""
    out = []
    for b in batch_sizes:
        idx = np.arange(b) % len(images)
        out.append(ParityInput(f"real b={b}", "real",
                               np.ascontiguousarray(images[idx], dtype=np.float32)))
    return out


@dataclass
class LabelledInput:
    """Held-out labelled images for a contract's accuracy check (never calibration data)."""

    images: np.ndarray  # float32 NCHW, normalised
    labels: np.ndarray
    batch_size: int  # fed in batches of this size (within the artifact's batch range)


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


TABLE_HEAD = (f"{'inputs':<15} {'max abs':>9} {'max rel':>9} {'fail':>6} {'min cos':>10} "
              f"{'top1':>7} {'top1*':>6} {'top5':>7} {'finite':>6}  result")


def table_header(precision: str, candidate: str, reference: str, arithmetic: str = "") -> str:
    """What is compared and the effective tolerance, before any row is judged."""
    tol = TOLERANCES[precision]
    lines = [f"parity: {candidate} vs {reference} ({precision}: atol {tol.atol:g} x max(1, "
             f"logit std), rtol {tol.rtol:g}, cos >= {tol.min_cosine})"]
    if arithmetic and arithmetic != precision:
        lines.append(f"arithmetic: {arithmetic}")
    lines += [TABLE_HEAD, "-" * len(TABLE_HEAD)]
    return "\n".join(lines)


def table_row(c: Comparison) -> str:
    clear = "-" if c.top1_clear_agreement is None else f"{c.top1_clear_agreement:.0%}"
    # figures in brackets are reported, not judged (the footer says so)
    fail = str(c.failing_elements) if c.elementwise else f"({c.failing_elements})"
    return (f"{c.name:<15} {c.max_abs_error:>9.2e} {c.max_rel_error:>9.2e} "
            f"{fail:>6} {c.min_cosine:>10.7f} {f'({c.top1_agreement:.0%})':>7} "
            f"{clear:>6} {f'({c.top5_overlap:.0%})':>7} {'yes' if c.finite else 'NO':>6}  "
            f"{'pass' if c.passed else 'FAIL: ' + '; '.join(c.failures)}")


def table_footer(verdict: Verdict) -> str:
    lines = ["top1* = top-1 agreement on samples whose reference margin is clear of the "
             "tolerance (judged); (...) = reported, not judged: a near tie may flip"
             + ("; logits beyond atol/rtol are not judged one by one at this precision"
                if not verdict.tolerance.elementwise else "")]
    acc = verdict.accuracy
    if acc is not None:
        lines.append(accuracy_line(acc))
    lines += [f"note: {note}" for note in verdict.notes]
    lines.append(f"verdict: {'PASS' if verdict.passed else 'FAIL'}")
    return "\n".join(lines)


def format_table(verdict: Verdict) -> str:
    """The terminal table: the header, one row per input batch, then the verdict line."""
    return "\n".join([table_header(verdict.precision, verdict.candidate, verdict.reference,
                                   verdict.arithmetic),
                      *(table_row(c) for c in verdict.comparisons), table_footer(verdict)])
