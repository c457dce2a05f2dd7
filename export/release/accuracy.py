"""Accuracy of the candidate against the release on the user's labelled folder, judged on paired
outcomes with the INT8 gate's statistics (:func:`export.gate.parity.judge_accuracy`): images lost
and gained, the exact one-sided McNemar test. The check fails on a drop beyond the limit only
where the test says the loss is real; where the folder is too small to show a drop of the limit
at all, and nothing failed, it says so ("not resolved") instead of passing.

Every image is read once per model, through the preprocessing each artifact's model description
asks for (:class:`export.predict.Predictor`, the same path as ``resnet-predict``); labels are the
sub-folder names, which must be the release's class names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadOption, UserError
from ..data import IMAGE_SUFFIXES
from ..gate.accuracy import Accuracy, judge_accuracy, min_lost_images
from ..gate.tolerances import Tolerance
from ..predict import FileResult, Predictor
from ..predict.predictor import find_images
from ..predict.scoring import folder_labels
from .checks import Check, Status

#: the pair is judged on top-1 only: two different models' logits are not compared element-wise
#: and their cosine says nothing (so its floor is -1)
_REASON = "candidate vs release on the user's labelled folder: top-1 and the paired test only"


def contract(max_drop: float) -> Tolerance:
    return Tolerance(atol=0.0, rtol=0.0, min_cosine=-1.0, min_clear_top1=0.0,
                     min_clear_top5=0.0, reason=_REASON, elementwise=False,
                     max_accuracy_drop=max_drop, judge_random=False)


def labelled_files(data: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Every image below ``data`` and its class from its sub-folder; a usage error when the
    folder is not labelled with these classes."""
    if not data.is_dir():
        raise BadOption(f"--data {data}: not a folder (give a folder with one sub-folder of "
                        "images per class)")
    found = find_images([data])
    problems = [reason for _, reason in found if reason is not None]
    if problems:
        raise BadOption(f"--data {problems[0]}")
    files = [path for path, _ in found]
    labels = folder_labels([FileResult(p) for p in files], class_names)
    if labels is None:
        stray = sorted({p.parent.name for p in files} - set(class_names))
        kinds = "/".join(s[1:].upper() for s in IMAGE_SUFFIXES)
        raise BadOption(f"--data {data}: every {kinds} image must sit in a sub-folder named "
                        f"after a class of the release ({', '.join(class_names[:10])}"
                        f"{', ...' if len(class_names) > 10 else ''}); found "
                        f"{', '.join(stray[:5]) or 'images at the top level'}")
    return files, np.asarray(labels)


def folder_logits(folder: Path, files: list[Path]) -> np.ndarray:
    """Logits of every file through the artifact's own preprocessing, a batch at a time."""
    with Predictor.load(folder) as predictor:
        size = predictor.chunk_size()
        out = []
        for start in range(0, len(files), size):
            batch = np.concatenate([predictor.read(p)[0] for p in files[start:start + size]])
            out.append(predictor.logits(batch, size))
        return np.concatenate(out)


def judge(acc: Accuracy, check: Check) -> None:
    """Status and message of the accuracy check from the paired figures."""
    figures = (f"candidate {acc.candidate_top1:.2f}% vs release {acc.reference_top1:.2f}% "
               f"top-1 on {acc.samples} images ({-acc.drop_points:+.2f} points; {acc.lost} "
               f"lost, {acc.gained} gained, McNemar p = {acc.p_value:.2g}; allowed drop "
               f"{acc.limit_points:g} points)")
    if not acc.passed:
        others = [f for f in acc.failures if not f.startswith("top-1 accuracy")]  # NaN logits
        loss = [] if len(others) == len(acc.failures) else \
            ["a drop beyond the limit that the paired test shows is real (p < 0.05)"]
        check.status, check.message = Status.FAILED, f"{figures}: {'; '.join(loss + others)}"
    elif not acc.resolves_limit:
        need = int(np.ceil(min_lost_images() * 100 / (acc.limit_points or 1)))
        check.status = Status.UNRESOLVED
        check.message = (f"{figures}: not resolved: {acc.samples} images cannot show a "
                         f"{acc.limit_points:g}-point drop (the smallest they can is "
                         f"{acc.resolvable_points:.2f} points); a folder of {need}+ images can")
    else:
        check.message = f"{figures}: within the limit"


def accuracy_check(check: Check, candidate: Path, release: Path, data: Path,
                   max_drop: float, class_names: list[str]) -> None:
    """Fill ``check`` with the paired comparison on ``data`` (raises UserError on bad input)."""
    files, labels = labelled_files(data, class_names)
    release_logits = folder_logits(release, files)
    candidate_logits = folder_logits(candidate, files)
    if candidate_logits.shape[1] != release_logits.shape[1]:
        raise UserError(f"the candidate has {candidate_logits.shape[1]} classes, the release "
                        f"{release_logits.shape[1]}: they cannot be compared")
    acc = judge_accuracy(release_logits, candidate_logits, labels, contract(max_drop))
    check.properties.update(_properties(acc, data))
    judge(acc, check)


def _properties(acc: Accuracy, data: Path) -> dict[str, Any]:
    return {"data": str(data), "images": acc.samples,
            "release_top1_percent": round(acc.reference_top1, 4),
            "candidate_top1_percent": round(acc.candidate_top1, 4),
            "drop_points": round(acc.drop_points, 4), "images_lost": acc.lost,
            "images_gained": acc.gained, "mcnemar_p": acc.p_value,
            "max_drop_points": acc.limit_points,
            "resolvable_drop_points": round(acc.resolvable_points, 4),
            "agreement": round(acc.agreement, 6)}


__all__ = ["accuracy_check", "contract", "folder_logits", "judge", "labelled_files"]
