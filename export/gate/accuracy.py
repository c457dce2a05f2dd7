"""The accuracy part of a contract (INT8): top-1 on held-out labelled images, judged on paired
outcomes with the exact McNemar test, so one unlucky image of a small split fails nothing and a
loss the data can show still fails."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .tolerances import Tolerance


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity per row; two zero rows agree, a NaN row scores -1."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a64 * b64).sum(axis=1) / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, np.nan_to_num(cos, nan=-1.0))


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
    cos = cosine(ref, np.where(np.isfinite(cand), cand, 0.0))
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
